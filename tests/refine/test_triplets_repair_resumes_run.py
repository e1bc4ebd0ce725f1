"""The repair of damaged refiner triplets names the command that resumes the refused run.

`refine train` refused a damaged triplet chunk with "run `cache verify ENTRY --repair`, then
the same `repackctl refine train` again", and `cache verify --repair` ended with "now run the
same `repackctl refine train`": run as written (no --name), that started a new default refiner
run (300 steps, refine-<pack run>) instead of resuming the one that was refused (audit A, item
6). Both now name `refine train --name RUN`; the refusal's command, followed, resumes the run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import one_torch_thread
from support.caches import use_roots
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.errors import CacheError

TRAIN = ["refine", "train", "--base-channels", "8", "--ckpt-every", "2", "--device", "cpu"]


def test_damaged_triplets_name_the_resume_of_the_refused_run(
    tmp_path_factory, tmp_path, monkeypatch
):
    root = use_roots(Path(shared_stack(tmp_path_factory)["runs"]).parent, tmp_path, monkeypatch)
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    runs_before = {p.name for p in (root / "runs").iterdir()}  # the shared stack's (and others')
    with one_torch_thread():
        cli_ok(*TRAIN, "--pack-run", "pack-tiny", "--name", "r1", "--steps", "2")
        # r1's triplets, among any other tests of this worker made in the shared stack (this
        # copy is private: damaging theirs too harms nothing)
        for group in (p for p in (root / "cache").glob("*/triplets/*") if p.is_dir()):
            chunk = group / "recon" / "c" / "0" / "0" / "0" / "0" / "0"  # rows 0–7
            data = bytearray(chunk.read_bytes())
            data[len(data) // 2] ^= 0xFF
            chunk.write_bytes(data)

        out = cli_refused(CacheError.exit_code, *TRAIN, "--name", "r1", "--steps", "4")
        assert "the same `repackctl refine train`" not in out, out
        entry = re.search(r"`repackctl cache verify (\S+) --repair`", out).group(1)
        assert (
            f"`repackctl cache verify {entry} --repair`, then `repackctl refine train --name r1"
            in out
        ), out
        again = re.search(r"then `(repackctl refine train [^`]+)`", out).group(1)

        repaired = cli_ok("cache", "verify", entry, "--repair")
        assert "the same `repackctl refine train`" not in repaired, repaired
        assert "`repackctl refine train --name RUN --pack-run pack-tiny --entry" in repaired, (
            repaired
        )

        # the refusal's command, run as written, resumes r1 (no new default run)
        assert "--steps 4" in again, again  # the change the refused resume was given
        resumed = cli_ok(*shlex.split(again)[1:], "--device", "cpu")
    assert "resumed from" in resumed and "(step 2)" in resumed, resumed
    assert {p.name for p in (root / "runs").iterdir()} == runs_before | {"r1"}  # no new run
    assert (root / "runs" / "r1" / "checkpoints" / "step-0000004").is_dir()
