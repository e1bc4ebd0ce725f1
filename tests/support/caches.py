"""A small real cache for the pack tests: built-in images through the `patchpix` encoder."""

from __future__ import annotations

import shutil
from pathlib import Path


def patchpix_cache(cache: Path, num: int = 16, resolution: int = 32) -> Path:
    """Extract ``num`` built-in train images at ``resolution`` px into ``cache`` (patchpix
    tokens, chunks and shards of 8); returns ``cache``."""
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    flags = {"cache": str(cache), "num_workers": 0, "extract.encoder": "patchpix"}
    flags |= {"extract.num": num, "extract.resolution": resolution}
    flags |= {"extract.chunk": 8, "extract.shard": 8}
    run_extract(resolve_settings(None, flags, environ={}).settings)
    return cache


def private_copy(base: Path, tmp_path: Path) -> Path:
    """A copy of the module's cache ``base`` at ``tmp_path / "cache"`` (a test may change it)."""
    dst = tmp_path / "cache"
    shutil.copytree(base, dst)
    return dst


def packed_cache(root: Path, num: int) -> Path:
    """``root`` holding ``num`` built-in images (patchpix, 32 px) and the latents of a 4-step
    pack run ``pk`` (d = 4, in ``root.parent / "runs"``): extract → pack train → pack encode,
    through the command line."""
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    common = ["--cache", str(root), "--runs", str(root.parent / "runs"), "--device", "cpu"]
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", str(num)]
    extract = ["extract", *src, "--chunk", "8", "--shard", "16", "--num-workers", "0"]
    pack = ["pack", "train", *src, "--steps", "4", "--batch-size", "8", "--ch", "16", "-c", "4"]
    for args in (
        [*extract, "--cache", str(root)],
        [*pack, "--name", "pk", "--image-every", "0", *common],
        ["pack", "encode", "--run", "pk", *common],
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    return root
