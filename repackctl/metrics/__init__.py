"""Scores users quote, each explaining itself: FID/sFID/IS/KID/PR, FD in encoder space,
reconstruction (PSNR, SSIM), linear probes, ADM sample files, and the protocol card.

Modules (one concern each): ``frechet`` (Fréchet distance, streaming stats, stats files, hashes),
``inception`` (torch-fidelity Inception features), ``generative`` (FID, sFID, IS, KID, PR),
``encoder_fd`` (FD on a frozen encoder's pooled patch tokens), ``recon`` (PSNR, SSIM, grids),
``detail`` (high-frequency error: Laplacian differences), ``colour`` (per-class colour-histogram
distance), ``judge`` (an independent CNN classifier trained on real images: FD in its features and
class accuracy of samples), ``probe`` (linear probe and its table), ``adm`` (ADM ``samples.npz`` / reference batches),
``protocol`` (the protocol card and ``metrics.json``).

Names are imported lazily, so ``import repackctl.metrics`` stays cheap (no torch, no scipy).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "frechet_distance": "frechet",
    "FeatureStats": "frechet",
    "StatsFile": "frechet",
    "save_stats": "frechet",
    "load_stats": "frechet",
    "sha256_file": "frechet",
    "sha256_array": "frechet",
    "sha256_path": "frechet",
    "InceptionExtractor": "inception",
    "resolve_inception_weights": "inception",
    "hub_weights_path": "inception",
    "compute_generative_metrics": "generative",
    "compute_inception_stats": "generative",
    "compute_encoder_fd": "encoder_fd",
    "encoder_feature_stats": "encoder_fd",
    "psnr": "recon",
    "ssim": "recon",
    "save_grid": "recon",
    "hf_error": "detail",
    "laplacian": "detail",
    "class_colour_distance": "colour",
    "colour_histogram": "colour",
    "cached_judge": "judge",
    "judge_fd": "judge",
    "judge_accuracy": "judge",
    "linear_probe": "probe",
    "format_probe_table": "probe",
    "write_samples_npz": "adm",
    "read_samples_npz": "adm",
    "iter_npz_images": "adm",
    "read_reference_batch": "adm",
    "ProtocolCard": "protocol",
    "write_metrics_json": "protocol",
    "read_metrics_json": "protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
