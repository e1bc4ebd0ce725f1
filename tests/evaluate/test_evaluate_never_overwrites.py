"""`evaluate fid` never replaces a result that is not the one it is recomputing.

1. ``--out`` naming another samples folder's ``metrics.json`` (or any place inside another samples
   folder) is refused: the score of samples A would read as B's. ``--out`` inside a training run
   (its ``config.json``, its folder) is refused.
2. The ``metrics.json`` of the same samples scored against another reference, or with another
   scoring protocol (here the Fréchet-distance method), is kept; the same result recomputed may
   replace it.

Real PNG folders in tmp_path, the built-in encoder's FD through Typer's CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

FD = ["--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu", *FD_WEIGHTS]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _pngs(folder: Path, n: int, split: str = "train", seed: int = 1) -> Path:
    from repackctl.data.builtin import BuiltinSource

    folder.mkdir(parents=True, exist_ok=True)
    src = BuiltinSource(split=split, num=n, seed=seed)
    for i in range(n):
        Image.fromarray(src.load(i, 32)).save(folder / f"{i:06d}.png")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _fid(samples: Path, *args: str) -> list[str]:
    return ["evaluate", "fid", str(samples), "--stats-dir", str(samples.parent / "st"), *args]


# --------------------------------------------------------------------------- 1. another's folder
@pytest.mark.parametrize("out", ["metrics.json", "", "sub-scores.json"])
def test_out_in_another_samples_folder_is_refused(tmp_path, out):
    a, b = _pngs(tmp_path / "a", 6), _pngs(tmp_path / "b", 6, seed=2)
    cli_ok(*_fid(b, "--ref", "builtin", *FD))  # b/metrics.json: b's own score
    before = _files(tmp_path)
    res = cli_refused(2, *_fid(a, "--ref", "builtin", "--out", str(b / out), *FD))
    assert "other samples" in res and "--out" in res
    assert _files(tmp_path) == before  # b's score is still b's


def test_another_samples_metrics_file_copied_elsewhere_is_not_replaced(tmp_path):
    a, b = _pngs(tmp_path / "a", 6), _pngs(tmp_path / "b", 6, seed=2)
    cli_ok(*_fid(b, "--ref", "builtin", *FD))
    kept = tmp_path / "scores" / "metrics.json"
    kept.parent.mkdir()
    kept.write_bytes((b / "metrics.json").read_bytes())
    res = cli_refused(2, *_fid(a, "--ref", "builtin", "--out", str(kept), *FD))
    assert "scores of other samples" in res
    assert kept.read_bytes() == (b / "metrics.json").read_bytes()


@pytest.mark.parametrize("out", ["config.json", "", "checkpoints/step-00000001"])
def test_out_in_a_training_run_is_refused(tmp_path, out):
    a = _pngs(tmp_path / "a", 6)
    run = tmp_path / "runs" / "dit-tiny"
    (run / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run / "checkpoints" / "step-00000001" / "state.json").write_text('{"step": 1}\n')
    # a metrics-shaped config.json: only where it is tells it apart from a score
    (run / "config.json").write_text('{"metrics": {}, "protocol": {}, "written_at": "x"}\n')
    before = _files(tmp_path)
    res = cli_refused(2, *_fid(a, "--ref", "builtin", "--out", str(run / out), *FD))
    assert "training run or checkpoint" in res and "--out" in res
    assert _files(tmp_path) == before and not (tmp_path / "st").exists()


# --------------------------------------------------------------------------- 2. another protocol
def test_another_reference_does_not_replace_the_score(tmp_path):
    a = _pngs(tmp_path / "a", 6)
    other_ref = _pngs(tmp_path / "ref", 6, "val", seed=3)
    cli_ok(*_fid(a, "--ref", "builtin", *FD))
    first = (a / "metrics.json").read_bytes()
    res = cli_refused(2, *_fid(a, "--ref", str(other_ref), *FD))
    assert "another protocol" in res and "reference" in res and "--out" in res
    assert (a / "metrics.json").read_bytes() == first
    second = tmp_path / "vs-ref.json"
    cli_ok(*_fid(a, "--ref", str(other_ref), "--out", str(second), *FD))
    doc = json.loads(second.read_text())
    assert doc["metrics"]["reference"]["path"] == str(other_ref.resolve())


def test_another_scoring_method_does_not_replace_the_score(tmp_path):
    a = _pngs(tmp_path / "a", 6)
    cli_ok(*_fid(a, "--ref", "builtin", *FD))
    first = (a / "metrics.json").read_bytes()
    sqrtm = [*FD[:2], "--fd-method", "sqrtm", *FD[4:]]
    res = cli_refused(2, *_fid(a, "--ref", "builtin", *sqrtm))
    assert "fd_method" in res and "sqrtm" in res
    assert (a / "metrics.json").read_bytes() == first


def test_the_same_result_recomputed_replaces_the_score(tmp_path):
    a = _pngs(tmp_path / "a", 6)
    cli_ok(*_fid(a, "--ref", "builtin", *FD))
    first = json.loads((a / "metrics.json").read_text())
    cli_ok(*_fid(a, "--ref", "builtin", *FD))
    again = json.loads((a / "metrics.json").read_text())
    assert again["metrics"]["fd"] == pytest.approx(first["metrics"]["fd"])
    assert again["metrics"]["reference"] == first["metrics"]["reference"]
    # the same samples in a moved folder are the same samples (known by their sha256)
    moved = a.rename(tmp_path / "moved")
    cli_ok(*_fid(moved, "--ref", "builtin", *FD))
    after = json.loads((moved / "metrics.json").read_text())
    assert after["metrics"]["fd"] == pytest.approx(first["metrics"]["fd"])
