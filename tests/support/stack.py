"""The shared stage stack of the sampling, refine, evaluate and checkpoint tests: extract
(patchpix, 32 px) → pack train (2 steps) → a DiT checkpoint in the `train dit` contract (random
tiny weights; sampling does not care whether the DiT was trained)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from repackctl.encoders.builtin import SHIPPED_WEIGHTS
from repackctl.settings import resolve_settings

LATENT = (4, 4, 4)  # d, h, w of the fixture pack model (patchpix at 32 px: 4×4 tokens)
#: ``--fd-weights random`` where the built-in encoder's shipped weights are not in the checkout
FD_WEIGHTS = [] if SHIPPED_WEIGHTS.is_file() else ["--fd-weights", "random"]
#: ``evaluate fid`` flags that score samples against the built-in data in the FD space, on the CPU
FD_SCORE = ["--ref", "builtin", "--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu"]
FD_SCORE += FD_WEIGHTS


def build_stack(root: Path) -> dict[str, str]:
    """extract (patchpix, 32 px, 16 images) → pack train (2 steps) → a DiT run; returns paths."""
    from repackctl.extract import run_extract
    from repackctl.pack.task import run_pack_train

    cache, runs = str(root / "cache"), str(root / "runs")
    common = {"cache": cache, "runs": runs, "device": "cpu", "num_workers": 0}
    ext = {"encoder": "patchpix", "resolution": 32, "num": 16, "chunk": 8, "shard": 8}
    run_extract(
        resolve_settings(None, common | {f"extract.{k}": v for k, v in ext.items()}).settings
    )
    pack = {"encoder": "patchpix", "resolution": 32, "num": 16, "steps": 2, "batch_size": 4}
    pack |= {"latent_channels": 4, "ch": 8, "disc_channels": 8, "run": "pack-tiny", "ckpt_every": 2}
    run_pack_train(
        resolve_settings(None, common | {f"pack.{k}": v for k, v in pack.items()}).settings
    )
    make_dit_run(runs, "dit-tiny", seed=0)
    return {"cache": cache, "runs": runs, "samples": str(root / "samples")}


def build_val_stack(root: Path) -> dict[str, str]:
    """:func:`build_stack`, plus a built-in val entry of 3 images (``builtin-n3--val--32px``):
    a held-out split smaller than ``-n`` subsets of the 16 training images."""
    from repackctl.extract import run_extract

    paths = build_stack(root)
    ext = {"encoder": "patchpix", "resolution": 32, "num": 3, "split": "val"}
    common = {"cache": paths["cache"], "device": "cpu", "num_workers": 0}
    run_extract(
        resolve_settings(None, common | {f"extract.{k}": v for k, v in ext.items()}).settings
    )
    return paths


def make_dit_run(runs: str, name: str, seed: int, scale: float = 0.05, **extra_fields) -> Path:
    """A DiT checkpoint in the `train dit` contract, with perturbed (non-zero output) weights."""
    from repackctl.models.variants import tiny
    from repackctl.pack.load import load_pack
    from repackctl.train.checkpoint import save_checkpoint

    pack = load_pack("pack-tiny", runs=runs)
    torch.manual_seed(seed)
    model = tiny(in_channels=LATENT[0], input_size=LATENT[1], num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    sd = model.state_dict()
    extra = {
        "stage": "dit",
        "model_id": "tiny",
        "model_config": model.config.to_dict(),
        "latent_stats": {"mean": [0.1, -0.2, 0.0, 0.3], "std": [1.0, 0.5, 2.0, 1.5]},
        "latent_shape": list(LATENT),
        "pack": {"run": "pack-tiny", "checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
        "cache": pack.extra["cache"],
        "num_classes": 10,
        "class_names": None,
        "transport": {},
        "repa": {},
    } | extra_fields
    return save_checkpoint(Path(runs) / name, 5, {"model": sd, "ema": sd}, {}, {"extra": extra})


def guide_run(stack: dict[str, str]) -> str:
    """A second DiT run of the stack's pack model (other weights): the guide of the
    autoguidance tests (the sampled model itself is refused as its own guide)."""
    if not (Path(stack["runs"]) / "dit-guide").is_dir():
        make_dit_run(stack["runs"], "dit-guide", seed=1)
    return "dit-guide"


def save_refiner_run(
    runs: str, name: str, resolution: int, channels: int = LATENT[0], **recorded
) -> Path:
    """A refiner checkpoint in the `refine train` contract, trained on the stack's pack model
    (``recorded``: more of its metadata, e.g. the ``latent_shape`` `refine train` records)."""
    from repackctl.pack.load import load_pack
    from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig
    from repackctl.train.checkpoint import save_checkpoint

    pack = load_pack("pack-tiny", runs=runs)
    config = RefinerConfig(
        latent_channels=channels, resolution=resolution, base_channels=8, attn_resolutions=(8,)
    )
    torch.manual_seed(1)
    model = LatentGuidedRefiner(config)
    with torch.no_grad():  # the output layer starts at zero: make the output depend on the input
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    extra = {
        "stage": "refine",
        "latent_convention": "raw",
        "refiner_config": config.to_dict(),
        "pack": {"run": "pack-tiny", "checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
    } | recorded
    sd = model.state_dict()
    return save_checkpoint(Path(runs) / name, 2, {"model": sd, "ema": sd}, {}, {"extra": extra})


def stack_with_refiner(tmp_path_factory, name: str) -> dict[str, str]:
    """The session's stack (:func:`shared_stack`) with a refiner run ``name`` for its 32 px
    samples, saved once (modules that share the stack each name their own)."""
    paths = shared_stack(tmp_path_factory)
    if not (Path(paths["runs"]) / name).is_dir():
        save_refiner_run(paths["runs"], name, resolution=32)
    return paths


def shared_stack(tmp_path_factory) -> dict[str, str]:
    """One stack per test session (this module and test_refine_stage.py share it)."""
    root = tmp_path_factory.getbasetemp() / "stage3-stack"
    marker = root / "ready.json"
    if not marker.is_file():
        paths = build_stack(root)
        marker.write_text(json.dumps(paths))
    return json.loads(marker.read_text())


def _settings(stack: dict[str, str], **sample):
    flags = {"cache": stack["cache"], "runs": stack["runs"], "samples": stack["samples"]}
    flags |= {"device": "cpu", "seed": 3}
    flags |= {f"sample.{k}": v for k, v in sample.items()}
    return resolve_settings(None, flags).settings


def _images(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz", allow_pickle=False) as z:
        return z["arr_0"]


def stack_env(stack: dict[str, str], tmp_path: Path, monkeypatch) -> Iterator[dict[str, str]]:
    """For an ``env`` fixture: the stack's cache and runs, a fresh samples root under
    ``tmp_path`` (REPACKCTL_CACHE / _RUNS / _SAMPLES), one torch thread; yields the paths."""
    from conftest import one_torch_thread

    samples = str(tmp_path / "samples")
    monkeypatch.setenv("REPACKCTL_CACHE", stack["cache"])
    monkeypatch.setenv("REPACKCTL_RUNS", stack["runs"])
    monkeypatch.setenv("REPACKCTL_SAMPLES", samples)
    with one_torch_thread():
        yield {**stack, "samples": samples}


def refiner_env(name: str):
    """An ``env`` fixture for a module: :func:`stack_env` over the stack with the refiner run
    ``name`` (:func:`stack_with_refiner`; each module names its own)."""

    @pytest.fixture
    def env(tmp_path_factory, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
        yield from stack_env(stack_with_refiner(tmp_path_factory, name), tmp_path, monkeypatch)

    return env


def tiny_refine_task(stack: dict[str, str], flip: bool = True, build: bool = False):
    """The refiner task over the stack's pack-tiny triplets, as ``refine train`` builds it, and
    its cache entry (``build``: make the triplets first)."""
    from repackctl.cache.store import DatasetEntry
    from repackctl.pack.discriminator import DiscriminatorConfig
    from repackctl.pack.load import load_pack
    from repackctl.refine.network import RefinerConfig
    from repackctl.refine.task import RefineLossWeights, RefineTask
    from repackctl.refine.triplets import build_triplets, open_triplets

    pack = load_pack("pack-tiny", runs=stack["runs"])
    entry = DatasetEntry.open(stack["cache"], pack.extra["cache"]["entry"])
    if build:
        build_triplets(entry, pack.extra["cache"]["features"], pack)
    task = RefineTask(
        entry,
        open_triplets(entry, pack.pack_id, 0.0),
        RefinerConfig(latent_channels=4, resolution=32, base_channels=8, attn_resolutions=(8, 4)),
        DiscriminatorConfig(base_channels=8),
        RefineLossWeights(),
        None,
        {"run": "pack-tiny", "checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
        flip=flip,
    )
    return task, entry
