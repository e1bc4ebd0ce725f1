"""A stage run again in the same process writes the same bytes as the first time.

The quick demo run twice in one process (``--fresh`` between) gave other sha256 for the pack,
DiT and refiner weights although every tensor was bit-identical: safetensors writes a file's
``__metadata__`` in a random order per save (safetensors/safetensors#584), in one process as in
another. The pack's id (and so the cache folder of its latents) is made from the sha256 of its
EMA weights, so it changed too. ``repackctl.files.save_safetensors`` writes a
canonical header; these tests fail with the plain ``save_file`` (each save picks one of two
orders of the two metadata keys: twelve saves agree by chance once in 2048 tries).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from repackctl.files import sha256_file
from repackctl.settings import resolve_settings
from repackctl.train.checkpoint import load_weights, read_state, save_checkpoint

SAVES = 12


def test_checkpoint_weights_are_the_same_bytes_at_every_save(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(3, 4, generator=gen), "b": torch.arange(5)}
    folders = [
        save_checkpoint(tmp_path / f"run-{i}", 7, {"model": sd, "ema": sd}, {}, {})
        for i in range(SAVES)
    ]
    for name in ("model.safetensors", "ema.safetensors"):
        digests = {sha256_file(f / name) for f in folders}
        assert len(digests) == 1, f"{name}: {len(digests)} different files from the same tensors"
        assert read_state(folders[0])["files"][name] in digests
    # the rewritten header is a valid safetensors file with the same tensors and metadata
    back = load_weights(folders[-1], "ema")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    with safe_open(str(folders[-1] / "ema.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}


def _pack_train(root: Path) -> None:
    """Extract 16 patchpix images (32 px) once, then a 4-step pack run saved at every step."""
    from repackctl.extract import run_extract
    from repackctl.pack.task import run_pack_train

    common = {"cache": str(root / "cache"), "runs": str(root / "runs"), "num_workers": 0}
    common |= {"device": "cpu"}
    if not (root / "cache").is_dir():
        ext = {"encoder": "patchpix", "resolution": 32, "num": 16, "chunk": 8, "shard": 8}
        flags = common | {f"extract.{k}": v for k, v in ext.items()}
        run_extract(resolve_settings(None, flags, environ={}).settings)
    pack = {"encoder": "patchpix", "resolution": 32, "num": 16, "steps": 4, "batch_size": 4}
    pack |= {"latent_channels": 4, "ch": 8, "run": "pack", "ckpt_every": 1, "keep_last": 0}
    pack |= {"image_every": 0}
    flags = common | {f"pack.{k}": v for k, v in pack.items()}
    run_pack_train(resolve_settings(None, flags, environ={}).settings)


def _weights(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): sha256_file(p)
        for p in sorted(run.glob("checkpoints/*/*.safetensors"))
    }


def test_pack_trained_again_in_one_process_is_the_same_pack(tmp_path):
    from repackctl.pack.load import load_pack

    run = tmp_path / "runs" / "pack"
    _pack_train(tmp_path)
    first, first_id = _weights(run), load_pack("pack", runs=str(tmp_path / "runs")).pack_id
    shutil.rmtree(run)  # what `repackctl demo --fresh` does to the demo's pack run
    _pack_train(tmp_path)
    again, again_id = _weights(run), load_pack("pack", runs=str(tmp_path / "runs")).pack_id
    assert len(first) >= 8  # model and EMA weights of four checkpoints
    assert again == first
    assert again_id == first_id  # the name of the latents' cache folder
