"""A samples folder's samples.npz given by its path as a reference (`evaluate fid --ref
FOLDER/samples.npz`, `evaluate stats FOLDER/samples.npz`) is checked as the folder is when
given (`--ref FOLDER`): refused when `repackctl sample` did not finish the folder, when the file
holds another count than its card records, or is not the file the card records. Its path
skipped those checks: a partial or replaced sample set was summarised as the folder's.

The shared toy stack (extract → pack train → a DiT run), real `repackctl` CLI calls, the
built-in encoder's FD on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, FD_WEIGHTS, shared_stack, stack_env

from repackctl.errors import DataError

STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--device", "cpu"]


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    yield from stack_env(shared_stack(tmp_path_factory), tmp_path, monkeypatch)


def _refused(tmp_path: Path, scored: Path, npz: Path) -> str:
    """`evaluate fid` and `evaluate stats` with ``npz`` as the reference, both refused with
    nothing written; the `evaluate fid` output."""
    metrics, sdir = tmp_path / "m.json", tmp_path / "stats"
    fid = ["evaluate", "fid", str(scored), *FD_SCORE[2:], "--ref", str(npz)]
    out = cli_refused(DataError.exit_code, *fid, "--out", str(metrics), "--stats-dir", str(sdir))
    stats = cli_refused(DataError.exit_code, *STATS, str(npz), "--stats-dir", str(sdir))
    assert stats.split("Hint:")[0] == out.split("Hint:")[0], (stats, out)
    assert not metrics.exists() and not sdir.exists()
    return out


def test_a_samples_npz_reference_is_checked_as_its_folder(env, tmp_path):
    done = tmp_path / "done"
    cli_ok(*SAMPLE, "--out", str(done))
    scored = tmp_path / "scored"
    cli_ok(*SAMPLE, "--seed", "4", "--out", str(scored))

    unfinished = tmp_path / "unfinished"  # killed after samples.npz, before the card
    shutil.copytree(done, unfinished)
    (unfinished / "protocol.json").unlink()
    out = _refused(tmp_path, scored, unfinished / "samples.npz")
    assert f"the reference folder {unfinished} was not finished by `repackctl sample`" in out

    replaced = tmp_path / "replaced"  # another sample set of the same count
    shutil.copytree(done, replaced)
    shutil.copy(scored / "samples.npz", replaced / "samples.npz")
    out = _refused(tmp_path, scored, replaced / "samples.npz")
    assert "is not the samples.npz that `repackctl sample` recorded" in out, out

    cut = tmp_path / "cut"  # a card of an older version (no files): the count is checked
    shutil.copytree(done, cut)
    card = json.loads((cut / "protocol.json").read_text())
    del card["files"]
    (cut / "protocol.json").write_text(json.dumps(card))
    with np.load(done / "samples.npz") as z:
        np.savez(cut / "samples.npz", z["arr_0"][:3], z["arr_1"][:3])
    out = _refused(tmp_path, scored, cut / "samples.npz")
    assert "holds 3 samples but its protocol.json records 4" in out, out

    out = cli_ok("evaluate", "fid", str(scored), *FD_SCORE[2:], "--ref", str(done / "samples.npz"))
    assert "fd" in out.lower()
    cli_ok(*STATS, str(done / "samples.npz"), "--stats-dir", str(tmp_path / "stats"))
    other = tmp_path / "other.npz"  # the same file outside a samples folder: external images
    shutil.copy(cut / "samples.npz", other)
    cli_ok(*STATS, str(other), "--stats-dir", str(tmp_path / "stats2"))
