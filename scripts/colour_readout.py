"""Where does a demo lose colour? Linear read-out of each 8x8 patch's mean colour, per cell.

For the training entry of a demo cache (``runs/demo/cache``), ridge regression from three
representations of the same 8x8 grid cell to the mean RGB of its 8x8 pixel patch, fitted on the
first 75 % of the images and scored (R^2) on the rest:

- the encoder's patch tokens (96 channels);
- their PCA to 8 channels (the PCA arm's latent size);
- the packed latent (posterior mean, 8 channels), which the decoder and the DiT see.

A high token R^2 with a low latent R^2 says the pack, not the encoder, drops the colour. The
last figure, the *chroma* (colour minus its grey level) read from the tokens' top 8 principal
directions, says how far colour hides in low-variance token directions (what ``pack.whiten``
is for).

    .venv/bin/python scripts/colour_readout.py runs/demo/cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from repackctl.cache.store import DatasetEntry, list_entries

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script below
from make_builtin_encoder import ridge_fit, ridge_predict  # noqa: E402 (the encoders' own read-out)

GRID, CELL = 8, 8  # 64 px images, patch 8


def ridge_r2(x: np.ndarray, y: np.ndarray, n_fit: int, lam: float = 1e-3) -> float:
    """R^2 on rows ``n_fit:`` of a ridge fit (standardised inputs, bias) on rows ``:n_fit``."""
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-6
    x, y = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    err = ridge_predict(ridge_fit(x[:n_fit], y[:n_fit], lam=lam), x[n_fit:]) - y[n_fit:]
    return float(1 - (err**2).sum() / ((y[n_fit:] - y[n_fit:].mean(0)) ** 2).sum())


def readout(cache: str) -> dict[str, float]:
    """R^2 of the patch colour from tokens, their PCA-8 and the packed latent of ``cache``."""
    name = next(n for n in list_entries(cache) if "--train--" in n)
    entry = DatasetEntry.open(cache, name)
    images = np.asarray(entry.images[:]).astype(np.float64) / 255.0  # (N, 64, 64, 3)
    n = len(images)
    colour = images.reshape(n, GRID, CELL, GRID, CELL, 3).mean((2, 4)).reshape(n * GRID**2, 3)
    (fid,) = [k for k, _ in entry.group["features"].groups()]
    tokens = np.asarray(entry.group["features"][fid]["tokens"][:, 0], np.float64)  # unflipped
    tokens = tokens.reshape(n * GRID**2, -1)
    (pid,) = entry.latent_ids()
    latent = np.asarray(entry.latents(pid)["mean"][:, 0], np.float64)  # (N, C, 8, 8)
    latent = latent.transpose(0, 2, 3, 1).reshape(n * GRID**2, -1)
    n_fit = int(0.75 * n) * GRID**2
    chroma = colour - colour.mean(1, keepdims=True)  # (N·64, 3) colour minus its grey level
    centred = tokens - tokens[:n_fit].mean(0)
    _, _, vt = np.linalg.svd(centred[:n_fit], full_matrices=False)
    return {
        "tokens": ridge_r2(tokens, colour, n_fit),
        "tokens PCA-8": ridge_r2(centred @ vt[:8].T, colour, n_fit),
        "packed latent": ridge_r2(latent, colour, n_fit),
        "chroma from tokens": ridge_r2(tokens, chroma, n_fit),
        "chroma from tokens PCA-8": ridge_r2(centred @ vt[:8].T, chroma, n_fit),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", nargs="+", help="demo cache folders, e.g. runs/demo/cache")
    for cache in ap.parse_args().caches:
        scores = readout(cache)
        print(cache + ": " + ", ".join(f"{k} R^2 {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
