"""A `cache rm` killed while it deletes is finished by the same `cache rm`.

It deleted the entry's folder in place: killed midway, the folder was left without its
`zarr.json`, so it was no longer an entry. `cache ls` did not show it, `cache rm` said "not
found", and `extract` refused to make the entry anew over "a folder that is not part of the
cache". Now the group is moved into `<root>/.removing/` first and deleted there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.caches import cli_extracted
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--num", "16", "--resolution", "32"]
EXTRACT += ["--shard", "8", "--chunk", "4", "--batch-size", "4"]
NAME = "builtin-n16--train--32px"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    return cli_extracted(tmp_path_factory, EXTRACT)


def _killed_rm(tmp_path: Path, *args: str) -> None:
    """`cache rm NAME … --yes` in a process killed between the move and the deletion, with
    the moved folder then cut short as a kill during the deletion leaves it."""
    cmd = [sys.executable, "-m", "repackctl", "cache", "rm", NAME, *args, "--yes"]
    env = subprocess_env(tmp_path, REPACKCTL_TEST_CRASH_AFTER="cache-rm")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 137, res.stdout + res.stderr
    (rest,) = (tmp_path / "cache" / ".removing").iterdir()
    (rest / "zarr.json").unlink()


def _rm_again(*args: str) -> str:
    res = runner.invoke(app, ["cache", "rm", NAME, *args, "--yes"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "the rest that an interrupted `cache rm` left" in out, out
    return out


@pytest.mark.slow
def test_a_killed_rm_of_an_entry_is_finished_and_extract_makes_it_anew(tmp_path, extracted):
    shutil.copytree(extracted, tmp_path / "cache")
    _killed_rm(tmp_path)
    assert list_entries(str(tmp_path / "cache"), "all") == []  # never an entry, half or whole
    _rm_again()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["zarr.json"]
    with one_torch_thread():
        res = runner.invoke(app, EXTRACT)
    assert res.exit_code == 0, res.output
    assert list_entries(str(tmp_path / "cache")) == [NAME]


@pytest.mark.slow
def test_a_killed_rm_of_a_features_group_is_finished(tmp_path, extracted):
    shutil.copytree(extracted, tmp_path / "cache")
    (fid,) = DatasetEntry.open(str(tmp_path / "cache"), NAME).feature_ids()
    _killed_rm(tmp_path, "--features", fid)
    assert DatasetEntry.open(str(tmp_path / "cache"), NAME).feature_ids() == []
    _rm_again("--features", fid)
    assert not (tmp_path / "cache" / ".removing").exists()
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code == 0 and "ok" in res.output, res.output


def test_a_rest_holding_a_file_of_the_users_is_never_deleted(tmp_path, extracted):
    """`.removing/<entry>` is deleted by the rerun of a killed `cache rm` and before an entry of
    that name is made anew: it was deleted whole, unchecked, so a folder of the user's there was
    lost. Now a rest holding a name the cache never writes is refused, and nothing is deleted."""
    shutil.copytree(extracted, tmp_path / "cache")
    _killed_rm(tmp_path)
    (rest,) = (tmp_path / "cache" / ".removing").iterdir()
    note = rest / "features" / "notes.txt"
    note.parent.mkdir(exist_ok=True)
    note.write_text("mine")
    res = runner.invoke(app, ["cache", "rm", NAME, "--yes"])
    out = " ".join(res.output.split())
    assert res.exit_code != 0 and "notes.txt, which the cache did not write" in out, out
    assert "Traceback" not in res.output and "Hint:" in res.output
    with one_torch_thread():
        res = runner.invoke(app, EXTRACT)
    out = " ".join(res.output.split())
    assert res.exit_code != 0 and "notes.txt, which the cache did not write" in out, out
    assert note.read_text() == "mine"
    assert (rest / "images").is_dir()  # not half deleted either
    note.unlink()
    _rm_again()  # the rest is the cache's own again: finished
    assert not (tmp_path / "cache" / ".removing").exists()
