"""`train t2i` does not flip by default: a caption that names a position ("on the left", as the
built-in captions do) is wrong for the mirrored image, and REPA's text-to-image recipe reads
each image as stored. `--flip` still turns it on, and a run keeps the value it started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_roots
from support.cli import cli_ok

from repackctl.data.captions import builtin_captions

CPU = ["--device", "cpu"]
TRAIN = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2", "--image-every", "0"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-flip") / "w")


def _flip(work: Path, run: str) -> bool:
    return json.loads((work / "runs" / run / "config.json").read_text())["extra"]["train"]["flip"]


def test_the_builtin_captions_name_sides_so_a_new_run_does_not_flip(stack, tmp_path, monkeypatch):
    said = [" ".join(builtin_captions(i)) for i in range(32)]
    assert any("left" in c for c in said) and any("right" in c for c in said)  # a flip would lie
    work = use_roots(stack, tmp_path, monkeypatch)
    assert _flip(work, "tA") is False  # the stack's run, started with the defaults
    cli_ok(*TRAIN, "--steps", "2", "--name", "on", "--flip", *CPU)
    assert _flip(work, "on") is True
    cli_ok(*TRAIN, "--steps", "4", "--name", "on", *CPU)  # resumed without the flag
    assert _flip(work, "on") is True
