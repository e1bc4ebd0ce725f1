"""`train dit --kernels triton` where Triton cannot run (the CPU, without TRITON_INTERPRET=1).

It failed at the first step, after the run folder (config.json, header.json, tb/, log.txt) was
written; every rerun kept the stored backend and failed again. Now it is an `Error:` naming the
setting before anything is written, and the hinted `--kernels auto` trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache, use_stack
from support.cli import cli_ok, cli_refused

DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--steps", "1", "--repa-weight", "0"]
DIT += ["--image-every", "0", "--device", "cpu", "--name", "d"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_triton_kernels_on_the_cpu_are_refused_before_anything_is_written(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base"
    shared_packed_cache(tmp_path_factory, base / "cache", 16)
    work = use_stack(base, tmp_path, monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = cli_refused(2, *DIT, "--kernels", "triton")
    assert "dit.kernels = 'triton' (from flag)" in out and "--kernels auto" in out, out
    assert not (work / "runs" / "d").exists()
    cli_ok(*DIT, "--kernels", "auto")
    assert (work / "runs" / "d" / "checkpoints" / "step-0000001").is_dir()
