"""The demo's pictures and ``report.md``: labelled sample rows, recon grid with enlarged crops,
and the results table next to the demo's targets (issue 13), each number explained once.

Pure presentation: it reads the metrics dict and images :mod:`repackctl.demo` computed.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.metrics.recon import psnr_text, save_grid

#: The study the demo points to (repository path).
REPRODUCTION = "benchmarks/results/reproduce_small.md"
#: The demo's sample figures against the DiT's training steps (repository path).
DIT_STEPS = "benchmarks/results/demo/dit_steps.md"


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
    if value is None or math.isnan(value):
        return "n/a"
    ok = value >= goal if higher else value <= goal
    return "**met**" if ok else "not met"


def _fmt(value: float | None, spec: str) -> str:
    """``value`` as ``spec``; ``n/a`` for a figure that is missing (None) or not a number, and
    ``inf`` / ``-inf`` as such (never a misleading finite number)."""
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:{spec}}"


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``: inf for a positive ``a`` over 0, None (n/a) when either is missing or NaN,
    for 0 / 0 and inf / inf."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if b == 0:
        return math.inf if a > 0 else None
    r = a / b
    return None if math.isnan(r) else r


def demo_psnr(m: dict[str, Any], key: str) -> str:
    """The demo's PSNR ``key`` (``recon_psnr``, ``refined_psnr``, ``recon_psnr_pca``) as
    :func:`repackctl.metrics.recon.psnr_text` shows it, with the count of exact reconstructions ``<key>_exact`` (where
    the metrics lack it: all ``n_recon`` when the PSNR is None, else none)."""
    n, exact = m.get("n_recon", 0), m.get(f"{key}_exact")
    if exact is None:  # metrics of an earlier version: None still meant every one exact
        exact = n if m.get(key) is None else 0
    return psnr_text(m.get(key), int(exact), n)


def _psnr_value(m: dict[str, Any], key: str) -> float:
    """The PSNR to compare with a target: inf when every reconstruction was exact (None)."""
    value = m.get(key)
    return math.inf if value is None else value


def _hf_change(before: float, after: float) -> tuple[str, float | None]:
    """How the high-frequency error moved (``"12.3 % lower"``, ``"unchanged"``) and the drop in
    percent (None where there is no ratio: an error of 0 before)."""
    ratio = _ratio(after, before)
    drop = None if ratio is None else 100 * (1 - ratio)
    if after == before:
        return "unchanged", drop
    return ("n/a" if drop is None else _change(-drop)), drop


def results_table(m: dict[str, Any]) -> list[str]:
    """The results next to their targets (markdown lines)."""
    acc, real_acc = 100 * m["class_accuracy"], 100 * m["class_accuracy_real_val"]
    hf_text, hf_drop = _hf_change(m["recon_hf_error"], m["refined_hf_error"])
    colour_ratio = _ratio(m["colour_refined"], m["colour_real"])
    fd_ratio = _ratio(m["fd_refined"], m["fd_decoder"])
    psnr = _psnr_value(m, "recon_psnr")
    not_lower = _psnr_value(m, "refined_psnr") >= psnr
    energy = m["hf_energy"]
    arm = "fd_pca" in m  # `--pca-arm` ran: its plain samples beside the floors
    arm_fd = f", PCA arm (plain) {_fmt(m.get('fd_pca'), '.2f')}" if arm else ""
    arm_acc = f", PCA arm (plain) {100 * m['class_accuracy_pca']:.1f} %" if arm else ""
    return [
        "| measure | value | reference | target | |",
        "|---|---|---|---|---|",
        f"| class accuracy of the samples (refined / plain) | {acc:.1f} % / "
        f"{100 * m['class_accuracy_plain']:.1f} % | real val images {real_acc:.1f} %, decoded "
        f"val images {100 * m['class_accuracy_decoded_val']:.1f} %{arm_acc}, chance 10 % | "
        "≥ 90 % | "
        f"{_target(acc, 90, True)} |",
        f"| recon PSNR (val, decoder only) | {demo_psnr(m, 'recon_psnr')} | SSIM "
        f"{_fmt(m['recon_ssim'], '.3f')} | ≥ 22 dB | {_target(psnr, 22, True)} |",
        f"| colour-histogram distance, samples (refined / plain) | "
        f"{_fmt(m['colour_refined'], '.3f')} / {_fmt(m['colour_plain'], '.3f')} | real vs real "
        f"{_fmt(m['colour_real'], '.3f')}, decoder {_fmt(m['colour_decoder'], '.3f')} | ≤ 1.5 × "
        f"real ({_fmt(colour_ratio, '.2f')} ×) | {_target(colour_ratio, 1.5, False)} |",
        f"| FD (built-in encoder space), samples (refined / plain) | "
        f"{_fmt(m['fd_refined'], '.2f')} / {_fmt(m['fd_plain'], '.2f')} | decoder floor "
        f"{_fmt(m['fd_decoder'], '.2f')}, real vs real {_fmt(m['fd_real'], '.2f')}{arm_fd} | "
        f"≤ 2 × decoder floor ({_fmt(fd_ratio, '.2f')} ×) | {_target(fd_ratio, 2, False)} |",
        f"| high-frequency error, val recon → refined | {_fmt(m['recon_hf_error'], '.4f')} → "
        f"{_fmt(m['refined_hf_error'], '.4f')} ({hf_text}) | PSNR "
        f"{demo_psnr(m, 'recon_psnr')} → {demo_psnr(m, 'refined_psnr')}; no detail at all "
        f"{_fmt(energy['real'], '.4f')}; detail energy {_fmt(energy['recon'], '.4f')} → "
        f"{_fmt(energy['refined'], '.4f')} | ≥ 20 % lower, PSNR not lower | "
        f"{_target(hf_drop, 20, True) if not_lower else 'not met'} |",
    ]


def refiner_change_line(m: dict[str, Any]) -> str:
    """How much the refiner changed the samples: refined and plain figures are two
    measurements only where it changed them. A change too small for two decimals is given
    with its own digits and the count of pixels it touched, never as "0.00"."""
    change = m.get("refiner_sample_change")
    if change is None:
        return ""
    changed, total = m.get("refiner_changed_pixels"), m.get("refiner_pixels")
    counted = changed is not None and total
    if change == 0:
        of = f" (0 of {total} pixels changed)" if counted else ""
        return (
            f"The refiner left every pixel of the samples as it was{of}: each refined figure "
            "repeats the plain one (its weights barely moved in the steps it trained)."
        )
    pixels = (
        f"{changed} of {total} pixels changed, {100 * changed / total:.3g} %" if counted else ""
    )
    if change < 0.01:
        return (
            f"The refiner changed the samples' pixels by less than 0.01 / 255 on average "
            f"({change:.2g} / 255{'; ' + pixels if pixels else ''}): the refined figures all "
            "but repeat the plain ones (its weights barely moved in the steps it trained)."
        )
    pixels = f" ({pixels})" if pixels else ""
    return f"The refiner changed the samples' pixels by {change:.2f} / 255 on average{pixels}."


def pca_arm_lines(
    m: dict[str, Any], cost: str, command: str = "repackctl demo --pca-arm"
) -> list[str]:
    """The PCA arm beside the demo's RePack figures, or (not run) how to add it (``command``,
    with this demo's --out and --quick) and its cost."""
    if "fd_pca" not in m:
        return [
            "*PCA arm* (the paper's baseline: the same decoder recipe on a frozen PCA projection "
            "of the tokens, then the same DiT and sampling): off by default, because its own "
            f"pack and DiT stages add {cost} to a demo whose budget is 10 minutes. "
            f"`{command}` adds it to this report, reusing the stages above; the "
            "reproduction study runs it with three seeds."
        ]
    r_repack = _ratio(m["fd_plain"], m["fd_decoder"])
    r_pca = _ratio(m["fd_pca"], m["fd_decoder_pca"])
    return [
        "*PCA arm* (`--pca-arm`): the paper's baseline, a frozen PCA of the tokens to the same "
        "number of channels under the same decoder recipe, then the same DiT (+ REPA), steps "
        "and sampling. Both columns are plain samples (the refiner was trained on the RePack "
        "decoder), and each FD is also given as a multiple of its own decoder floor.",
        "",
        "| measure | RePack (the demo) | PCA arm |",
        "|---|---|---|",
        f"| class accuracy of the samples (plain) | {100 * m['class_accuracy_plain']:.1f} % | "
        f"{100 * m['class_accuracy_pca']:.1f} % |",
        f"| FD of the samples (plain) | {_fmt(m['fd_plain'], '.2f')} ({_fmt(r_repack, '.1f')} × "
        f"floor) | {_fmt(m['fd_pca'], '.2f')} ({_fmt(r_pca, '.1f')} × floor) |",
        f"| decoder floor FD | {_fmt(m['fd_decoder'], '.2f')} | "
        f"{_fmt(m['fd_decoder_pca'], '.2f')} |",
        f"| colour-histogram distance (plain; real vs real {_fmt(m['colour_real'], '.3f')}) | "
        f"{_fmt(m['colour_plain'], '.3f')} | {_fmt(m['colour_pca'], '.3f')} |",
        f"| recon PSNR (val, decoder only) | {demo_psnr(m, 'recon_psnr')} | "
        f"{demo_psnr(m, 'recon_psnr_pca')} |",
        "",
        "FD and class accuracy are read in the built-in encoder's space, which weighs shape "
        "far more than colour; the colour distance "
        f"({_fmt(_ratio(m['colour_plain'], m['colour_real']), '.2f')} × real for RePack, "
        f"{_fmt(_ratio(m['colour_pca'], m['colour_real']), '.2f')} × for the arm; target "
        "≤ 1.5 ×) and the "
        "recon PSNR measure appearance. Compare `samples-pca.png` with `samples.png`.",
    ]


def probe_note(m: dict[str, Any]) -> str:
    """What the probe table measures, with the paper's table to read it against."""
    repack = 100 * m["probe"]["rows"][-1]["top1"]  # rows: raw tokens, PCA-d, RePack-d
    decoded = 100 * m["class_accuracy_decoded_val"]
    where = (
        "so the class that the mean loses is still in the latent, as a spatial pattern"
        if decoded > repack
        else "so here the latent keeps little of the class at all"
    )
    return (
        "The probe fits a linear classifier to mean-pooled vectors: the raw tokens, their PCA "
        "to d channels, and the packed latent's d channels. The paper's table on ImageNet "
        "ranks them in that order (DINOv3 raw 768-d 82.56 %, PCA-32 56.13 %, RePack-32 "
        "42.48 %): PCA keeps the token directions of largest variance, while the pack is "
        "trained to keep what its decoder needs to redraw the pixels, and the mean of those "
        "channels over the positions need not carry the class. The decoded val images are "
        f"classified at {decoded:.1f} % against the RePack probe's {repack:.1f} % (table "
        f"above), {where}."
    )


def _change(percent: float) -> str:
    """``-12.3`` → ``"12.3 % lower"``, ``0.2`` → ``"0.2 % higher"``, ``0.01`` → ``"< 0.1 %
    higher"`` (a change that rounds to 0.0 is not said to be none)."""
    way = "lower" if percent < 0 else "higher"
    if 0 < abs(percent) < 0.05:
        return f"< 0.1 % {way}"
    return f"{abs(percent):.1f} % {way}"


def meaning(m: dict[str, Any], n_train: int, resolution: int, link: str) -> str:
    """One paragraph: what each number means."""
    n, n_ref, n_rec = m["n_samples"], m["n_reference"], m["n_recon"]
    return (
        f"**What the numbers mean.** *Class accuracy*: a linear classifier trained on the "
        f"built-in encoder's mean-pooled tokens of the {n_train} real training images labels "
        f"each of the {n} class-balanced samples; the figure is the share it labels as the class "
        f"the sample was drawn for (its score on the {n_ref} real val images is the ceiling, "
        f"and on the first {n_rec} val images through the packing autoencoder the ceiling of a "
        "perfect DiT). *Recon PSNR*: "
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
        "held-out reconstructions, before and after the refiner. An image with no detail at "
        "all scores the originals' own detail energy (mean |Laplacian|, *no detail at all*): an "
        "error above it means detail drawn where the original has none, so the error falls "
        "when the refiner puts detail where the original has it, and also when it removes "
        "misplaced detail (then the detail energy falls too). The "
        f"reproduction study ([{REPRODUCTION}]({link})) tests the method's claims at this scale."
    )


def link_to_study(out: Path, study: str = REPRODUCTION) -> str:
    """Relative link from ``out`` to the repository file ``study`` (by default the reproduction
    results) when run from the repository; else its repository path."""
    path = Path(__file__).resolve().parents[1] / study
    return os.path.relpath(path, out.resolve()) if path.is_file() else study


def dit_steps_line(out: Path) -> str:
    """Where the samples' figures are measured against the DiT's training steps, and how to
    measure them on this demo (the script reads the demo's plan from its ``plan.json``)."""
    flags = f"--demo {shlex.quote(str(out))}"
    return (
        "How the samples' accuracy and FD move with the DiT's training steps: "
        f"[{DIT_STEPS}]({link_to_study(out, DIT_STEPS)}); on this demo, "
        f"`.venv/bin/python benchmarks/demo_seeds.py {flags} --dit-steps N --seeds 0 1 2` "
        "trains its DiT again for N steps with three seeds."
    )


def settings_block(plan: Any) -> list[str]:
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()}
    return ["```json", json.dumps(plain, indent=1), "```"]
