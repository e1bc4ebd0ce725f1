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
    .venv/bin/python scripts/colour_readout.py runs/demo/cache --run pack-pca   # the PCA arm's

``--run`` names the pack run whose latents are read (default ``pack``, the demo's own; with
``--pca-arm`` the cache also holds ``pack-pca``'s). A cache without one training entry, or
without that run's latents, is an ``Error:`` naming what it holds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import ConfigError, name_items, script_main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script below
from make_builtin_encoder import ridge_fit, ridge_predict  # noqa: E402 (the encoders' own read-out)

CELL = 8  # the built-in encoder's patch: one token (and one latent cell) per 8x8 pixels


def ridge_r2(x: np.ndarray, y: np.ndarray, n_fit: int, lam: float = 1e-3) -> float:
    """R^2 on rows ``n_fit:`` of a ridge fit (standardised inputs, bias) on rows ``:n_fit``."""
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-6
    x, y = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    err = ridge_predict(ridge_fit(x[:n_fit], y[:n_fit], lam=lam), x[n_fit:]) - y[n_fit:]
    return float(1 - (err**2).sum() / ((y[n_fit:] - y[n_fit:].mean(0)) ** 2).sum())


def _one(what: str, found: list[str], cache: str, hint: str) -> str:
    if len(found) != 1:
        held = name_items(found) if found else "none"
        raise ConfigError(f"{cache} holds {len(found)} {what} ({held}), not one", hint)
    return found[0]


def readout(cache: str, run: str = "pack") -> dict[str, float]:
    """R^2 of the patch colour from tokens, their PCA-8 and the packed latent of ``cache``
    (the latents of the pack run ``run``)."""
    entries = [n for n in list_entries(cache) if "--train--" in n]
    name = _one("training entries", entries, cache, "give a demo's cache: runs/demo/cache")
    entry = DatasetEntry.open(cache, name)
    images = np.asarray(entry.images[:]).astype(np.float64) / 255.0  # (N, 64, 64, 3)
    n, grid = len(images), images.shape[1] // CELL  # 8 x 8 cells at the demo's 64 px
    colour = images.reshape(n, grid, CELL, grid, CELL, 3).mean((2, 4)).reshape(n * grid**2, 3)
    fid = _one("token groups", [k for k, _ in entry.group["features"].groups()], cache,
               "give a demo's cache (one encoder's tokens)")  # fmt: skip
    tokens = np.asarray(entry.group["features"][fid]["tokens"][:, 0], np.float64)  # unflipped
    tokens = tokens.reshape(n * grid**2, -1)
    ours = [i for i in entry.latent_ids() if re.search(rf"--{re.escape(run)}-\d{{7}}-", i)]
    pid = _one(f"latents of pack run {run!r}", ours, cache,
               f"pack latents: {name_items(entry.latent_ids()) or 'none'}; pass --run")  # fmt: skip
    latent = np.asarray(entry.latents(pid)["mean"][:, 0], np.float64)  # (N, C, 8, 8)
    latent = latent.transpose(0, 2, 3, 1).reshape(n * grid**2, -1)
    n_fit = int(0.75 * n) * grid**2
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


@script_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", nargs="+", help="demo cache folders, e.g. runs/demo/cache")
    ap.add_argument("--run", default="pack", help="the pack run whose latents are read")
    args = ap.parse_args(argv)
    for cache in args.caches:
        scores = readout(cache, args.run)
        print(cache + ": " + ", ".join(f"{k} R^2 {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    sys.exit(main())
