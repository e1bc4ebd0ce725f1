"""The demo's pictures and ``report.md``: labelled sample rows, recon grid with enlarged crops,
and the results table next to the demo's targets (issue 13), each number explained once.

Pure presentation: it reads the metrics dict and images :mod:`repackctl.demo` computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.metrics.recon import save_grid

#: The study the demo points to (repository path).
REPRODUCTION = "benchmarks/results/reproduce_small.md"


def class_rows_grid(
    images: np.ndarray, labels: np.ndarray, names: list[str], path: Path, cols: int = 10
) -> Path:
    """One labelled row per class present (at most ``cols`` images each), as a PNG."""
    rows, row_labels = [], []
    for c in np.unique(labels):
        rows.append(images[labels == c][:cols])
        row_labels.append(names[int(c)] if int(c) < len(names) else f"class {int(c)}")
    return save_grid(rows, path, labels=row_labels)


def _enlarged_crop(image: np.ndarray, side: int, zoom: int) -> np.ndarray:
    """The centre ``side``×``side`` window of a uint8 (H, W, 3) image, enlarged ``zoom``× by
    pixel repetition (no interpolation, so the decoder's blur is what one sees)."""
    h, w = image.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return crop.repeat(zoom, axis=0).repeat(zoom, axis=1)


def recon_grid(
    real: np.ndarray,
    recon: np.ndarray,
    refined: np.ndarray,
    path: Path,
    images: int = 6,
    crops: int = 3,
) -> Path:
    """Rows original / recon / refined: ``images`` whole images, then the centre quarter of the
    first ``crops`` of them enlarged to full size."""
    k, m = min(images, len(real)), min(crops, len(real))
    side = real.shape[1] // 4 * 2  # centre half of the side: 32 px of a 64-px image
    zoom = max(real.shape[1] // side, 1)
    rows = []
    for row in (real, recon, refined):
        enlarged = [_enlarged_crop(img, side, zoom) for img in row[:m]]
        rows.append(np.concatenate([row[:k], np.stack(enlarged)]))
    return save_grid(rows, path, labels=["original", "recon", "refined"])


def _target(value: float | None, goal: float, higher: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= goal if higher else value <= goal
    return "**met**" if ok else "not met"


def results_table(m: dict[str, Any]) -> list[str]:
    """The results next to their targets (markdown lines)."""
    acc, real_acc = 100 * m["class_accuracy"], 100 * m["class_accuracy_real_val"]
    hf_drop = 100 * (1 - m["refined_hf_error"] / m["recon_hf_error"])
    colour_ratio = m["colour_refined"] / m["colour_real"]
    fd_ratio = m["fd_refined"] / m["fd_decoder"]
    psnr = m["recon_psnr"] or float("inf")
    return [
        "| measure | value | reference | target | |",
        "|---|---|---|---|---|",
        f"| class accuracy of the samples (refined / plain) | {acc:.1f} % / "
        f"{100 * m['class_accuracy_plain']:.1f} % | real val images {real_acc:.1f} %, decoded "
        f"val images {100 * m['class_accuracy_decoded_val']:.1f} %, chance 10 % | ≥ 90 % | "
        f"{_target(acc, 90, True)} |",
        f"| recon PSNR (val, decoder only) | {psnr:.2f} dB | SSIM {m['recon_ssim']:.3f} | "
        f"≥ 22 dB | {_target(psnr, 22, True)} |",
        f"| colour-histogram distance, samples (refined / plain) | {m['colour_refined']:.3f} / "
        f"{m['colour_plain']:.3f} | real vs real {m['colour_real']:.3f}, decoder "
        f"{m['colour_decoder']:.3f} | ≤ 1.5 × real ({colour_ratio:.2f} ×) | "
        f"{_target(colour_ratio, 1.5, False)} |",
        f"| FD (built-in encoder space), samples (refined / plain) | {m['fd_refined']:.2f} / {m['fd_plain']:.2f} | "
        f"decoder floor {m['fd_decoder']:.2f}, real vs real {m['fd_real']:.2f} | ≤ 2 × decoder "
        f"floor ({fd_ratio:.2f} ×) | {_target(fd_ratio, 2, False)} |",
        f"| high-frequency error, val recon → refined | {m['recon_hf_error']:.4f} → "
        f"{m['refined_hf_error']:.4f} ({_change(-hf_drop)}) | PSNR "
        f"{psnr:.2f} → {m['refined_psnr'] or float('inf'):.2f} dB | ≥ 20 % lower, PSNR not "
        f"lower | {_target(hf_drop, 20, True) if m['refined_psnr'] >= psnr else 'not met'} |",
    ]


def _change(percent: float) -> str:
    """``-12.3`` → ``"12.3 % lower"``, ``0.2`` → ``"0.2 % higher"``."""
    return f"{abs(percent):.1f} % {'lower' if percent < 0 else 'higher'}"


def meaning(m: dict[str, Any], n_train: int, resolution: int, link: str) -> str:
    """One paragraph: what each number means."""
    n, n_ref, n_rec = m["n_samples"], m["n_reference"], m["n_recon"]
    return (
        f"**What the numbers mean.** *Class accuracy*: a linear classifier trained on the "
        f"built-in encoder's mean-pooled tokens of the {n_train} real training images labels "
        f"each of the {n} class-balanced samples; the figure is the share it labels as the class "
        f"the sample was drawn for (its score on real val images is the ceiling, and on val "
        "images through the packing autoencoder the ceiling of a perfect DiT). *Recon PSNR*: "
        f"the first {n_rec} val images through encoder → packed latent (posterior mean) → "
        f"decoder, mean over images of per-image PSNR at {resolution} px. *Colour-histogram distance*: per "
        "class, the L1 distance between the normalised 8×8×8-bin RGB histograms of all pixels "
        f"of the class's images and of the class's real val images ({n_ref} in all), averaged "
        "over classes (0 = same colours, 2 = disjoint); its yardstick is the same distance for "
        "real training images with the samples' class counts. *FD*: Fréchet distance between "
        "Gaussians of the built-in encoder's mean-pooled patch tokens of a set and of the "
        f"{n_ref} real val images; with only {n} images per set in 96 dimensions it is biased "
        "upwards, so compare it only with the two floors computed with the same n — *real vs "
        "real* (real training images) and the *decoder floor* (those training images through "
        "the packing autoencoder: the best a perfect DiT could reach). *High-frequency error*: "
        "mean |Laplacian(x) − Laplacian(original)| (3×3 kernel, images in [0, 1]) over the "
        "held-out reconstructions, before and after the refiner; it falls only when the refiner "
        "puts detail where the original has it (hallucinated texture raises it). The "
        f"reproduction study ([{REPRODUCTION}]({link})) tests the method's claims at this scale."
    )


def link_to_study(out: Path) -> str:
    """Relative link from ``out`` to the reproduction results when run from the repository."""
    study = Path(__file__).resolve().parents[1] / REPRODUCTION
    return os.path.relpath(study, out.resolve()) if study.is_file() else REPRODUCTION


def settings_block(plan: Any) -> list[str]:
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()}
    return ["```json", json.dumps(plain, indent=1), "```"]
