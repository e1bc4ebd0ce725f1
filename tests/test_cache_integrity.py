"""Cache integrity: a kill at every creation step is followed by a clean rerun; checksums and
`cache verify --repair`; readers refuse missing chunks; two concurrent extracts share the work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--num", "24", "--resolution", "32"]
EXTRACT += ["--shard", "8", "--chunk", "4", "--batch-size", "4"]
PACK = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-c", "4", "--ch", "8"]
PACK += ["--batch-size", "8", "--log-every", "2", "--image-every", "0", "--steps", "2"]
PACK += ["--gan-start", "100", "--name", "enc"]


def _cli(tmp: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess:
    extra = {"REPACKCTL_TEST_CRASH_AFTER": crash} if crash else {}
    return subprocess.run(
        [sys.executable, "-m", "repackctl", *args],
        env=subprocess_env(tmp, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _arrays(cache: Path) -> dict[str, np.ndarray]:
    """Every array of every (complete) group of the single entry, by path."""
    (name,) = list_entries(str(cache))
    e = DatasetEntry.open(str(cache), name)
    out = {k: e.group[k][:] for k in ("images", "labels", "keys", "done")}
    for kind in ("features", "latents", "triplets"):
        for gname in e.complete_groups(kind):
            for aname, arr in e.group[kind][gname].arrays():
                out[f"{kind}/{gname}/{aname}"] = arr[:]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted extract + pack train + pack encode (the arrays every rerun must equal)."""
    tmp = tmp_path_factory.mktemp("ref")
    for args in (EXTRACT, PACK, ["pack", "encode", "--run", "enc"]):
        res = _cli(tmp, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    return tmp


def _no_traceback_listing(tmp: Path) -> None:
    for args in (["cache", "ls"], ["cache", "verify"]):
        res = _cli(tmp, *args)
        assert "Traceback" not in res.stdout + res.stderr, res.stderr
        assert "incomplete" in res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("step", ["entry", "images", "features", "tokens"])
def test_kill_while_extract_creates_then_rerun(tmp_path, reference, step):
    res = _cli(tmp_path, *EXTRACT, crash=step)
    assert res.returncode == 137, res.stdout + res.stderr
    _no_traceback_listing(tmp_path)
    res = _cli(tmp_path, *EXTRACT)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    ref = {k: v for k, v in _arrays(reference / "cache").items() if "latents/" not in k}
    _assert_same(_arrays(tmp_path / "cache"), ref)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["latents", "std"])
def test_kill_while_encode_creates_then_rerun(tmp_path, reference, step):
    shutil.copytree(reference / "runs", tmp_path / "runs")
    assert _cli(tmp_path, *EXTRACT).returncode == 0
    res = _cli(tmp_path, "pack", "encode", "--run", "enc", crash=step)
    assert res.returncode == 137, res.stdout + res.stderr
    _no_traceback_listing(tmp_path)
    res = _cli(tmp_path, "pack", "encode", "--run", "enc")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    _assert_same(_arrays(tmp_path / "cache"), _arrays(reference / "cache"))


_TRIPLETS = """
import sys
from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets
cache, runs = sys.argv[1:3]
pack = load_pack("enc", runs=runs)
entry = DatasetEntry.open(cache, list_entries(cache)[0])
build_triplets(entry, pack.features_id, pack, batch_size=4)
"""


@pytest.mark.slow
def test_kill_while_triplets_are_created_then_rerun(tmp_path, reference):
    shutil.copytree(reference / "runs", tmp_path / "runs")
    for sub in ("a", "b"):
        shutil.copytree(reference / "cache", tmp_path / sub)
    cmd = [sys.executable, "-c", _TRIPLETS, str(tmp_path / "a"), str(tmp_path / "runs")]
    env = subprocess_env(tmp_path)
    res = subprocess.run(cmd, env=env | {"REPACKCTL_TEST_CRASH_AFTER": "triplets"})
    assert res.returncode == 137
    (name,) = list_entries(str(tmp_path / "a"))
    assert DatasetEntry.open(str(tmp_path / "a"), name).incomplete_groups() == [
        "triplets/"
        + (DatasetEntry.open(str(tmp_path / "a"), name).group["triplets"].groups().__next__()[0])
    ]
    assert subprocess.run(cmd, env=env).returncode == 0
    cmd[3] = str(tmp_path / "b")
    assert subprocess.run(cmd, env=env).returncode == 0
    _assert_same(_arrays(tmp_path / "a"), _arrays(tmp_path / "b"))
    assert any(k.startswith("triplets/") for k in _arrays(tmp_path / "a"))
