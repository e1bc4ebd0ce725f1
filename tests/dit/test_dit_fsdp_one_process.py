"""`--parallel fsdp` on one process says that nothing was sharded (audit s29, G3).

On one process FSDP has nothing to shard across: the run trained unsharded, as `--parallel ddp`
does, with the same weights, and said nothing (a user trying the paper's XL command on a
laptop believed the model sharded). It still trains (the result is the one ddp gives), with a
`Note:` in the output and log.txt, and header.json records what was used (``parallel_used``).

Real CLI runs on a real cache with packed latents.
"""

from __future__ import annotations

import json

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok

from repackctl.train.checkpoint import latest_checkpoint, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--device", "cpu", "--image-every", "0"]
DIT += ["--steps", "2"]


def test_fsdp_on_one_process_trains_as_ddp_and_says_so(tmp_path, tmp_path_factory) -> None:
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    runs = tmp_path / "runs"
    out = cli_ok(*DIT, "--name", "f", "--parallel", "fsdp")
    note = "Note: --parallel fsdp on one process: FSDP has nothing to shard"
    assert note in out, out  # HEAD: not a word
    assert note in " ".join((runs / "f" / "log.txt").read_text().split())
    header = json.loads((runs / "f" / "header.json").read_text())
    assert header["parallel"] == "fsdp" and header["fsdp_modules"] == []
    assert header["parallel_used"] == "none", header

    ddp = cli_ok(*DIT, "--name", "d", "--parallel", "ddp")
    assert "Note:" not in ddp, ddp
    assert json.loads((runs / "d" / "header.json").read_text())["parallel_used"] == "none"
    # the same weights: the note tells what happened, nothing was lost by training
    a, b = latest_checkpoint(runs / "f"), latest_checkpoint(runs / "d")
    for name in ("model", "ema"):
        wa, wb = load_weights(a, name), load_weights(b, name)
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa), name
