"""The extract command that `cache verify --repair` names rewrites the repaired rows of the
entry it repaired: an ImageNet entry is named with `--data imagenet:ROOT` (not
`imagefolder:ROOT`, which extracts the same files into another entry, leaving the repaired one
pending), and an entry made with another `--seed` is named with it (without it the command is
refused: the entry was made from another source)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
from conftest import one_torch_thread
from PIL import Image
from support.cli import cli_ok

from repackctl.cache.store import DatasetEntry, list_entries

SMALL = ["--encoder", "patchpix", "--resolution", "32", "--chunk", "4", "--shard", "8"]


def _damage_tokens(cache: Path) -> str:
    """Flip a byte of the first stored tokens shard of the only entry; returns its name."""
    (name,) = list_entries(str(cache))
    shard = sorted(p for p in (cache / name / "features").rglob("tokens/c/**/*") if p.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    return name


def _repair_then_named_command(cache: Path, monkeypatch) -> str:
    """`cache verify --repair`, then the extract it names, run as printed; returns the entry."""
    name = _damage_tokens(cache)
    out = cli_ok("cache", "verify", "--repair")
    assert "rows marked pending" in out, out
    (cmd,) = re.findall(r"`(repackctl extract [^`]+)`", out)
    with one_torch_thread():
        cli_ok(*shlex.split(cmd)[1:], "--num-workers", "0")
    return name


def _verified(cache: Path, name: str) -> None:
    assert list_entries(str(cache)) == [name]  # no second entry of the same images
    out = cli_ok("cache", "verify")
    assert f"{name}: ok" in out, out
    feats = DatasetEntry.open(str(cache), name)
    (fid,) = feats.feature_ids()
    assert (feats.features(fid).done[:] == 1).all()


def test_an_imagenet_entry_is_rewritten_in_place(tmp_path, monkeypatch):
    # a root longer than a line: the printed command is not folded (output to a file or pipe
    # is 80 columns wide; a fold put a space into the path and broke the command)
    root = tmp_path / ("imagenet-" + "x" * 90)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    cache = tmp_path / "cache"
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    with one_torch_thread():
        cli_ok("extract", "--data", f"imagenet:{root}", *SMALL, "--num-workers", "0")
    name = _repair_then_named_command(cache, monkeypatch)
    assert name.startswith("imagenet--train--")
    _verified(cache, name)


def test_an_entry_of_another_seed_is_rewritten_with_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    with one_torch_thread():
        cli_ok("extract", "-n", "16", "--seed", "3", *SMALL, "--num-workers", "0")
    name = _repair_then_named_command(cache, monkeypatch)
    _verified(cache, name)
