"""`cache verify --repair` exits non-zero while a problem it does not fix is left (NaN/inf rows
outside the repaired shards), and its hint names the commands that do fix it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from support.caches import cli_extracted
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--num", "24", "--resolution", "32"]
EXTRACT += ["--shard", "8", "--chunk", "4", "--batch-size", "4"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """A healthy 24-sample cache of three 8-row shards."""
    return cli_extracted(tmp_path_factory, EXTRACT)


def _damaged(extracted: Path, tmp_path: Path, nan_rows: slice) -> tuple[DatasetEntry, str]:
    """A copy with image shard 0 lost and ``nan_rows`` of the tokens set to NaN (readable chunks
    with valid checksums: only the NaN scan sees them). Returns the entry and its features id."""
    shutil.copytree(extracted, tmp_path / "cache")
    root = str(tmp_path / "cache")
    (name,) = list_entries(root)
    entry = DatasetEntry.open(root, name)
    (fid,) = entry.feature_ids()
    tokens = entry.features(fid)["tokens"]
    rows = tokens[nan_rows]
    rows[:] = np.nan
    tokens[nan_rows] = rows
    (shard0,) = [
        p for p in (tmp_path / "cache" / name / "images" / "c" / "0").rglob("*") if p.is_file()
    ]
    shard0.unlink()
    return entry, fid


def _flat(res) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(res.output.split())


def _extract_again() -> None:
    with one_torch_thread():
        res = runner.invoke(app, EXTRACT)
    assert res.exit_code == 0, res.output


def test_nan_rows_outside_the_repaired_shard_keep_the_exit_non_zero(tmp_path, extracted):
    entry, fid = _damaged(extracted, tmp_path, slice(16, 18))
    res = runner.invoke(app, ["cache", "verify", entry.name, "--repair"])
    out = _flat(res)
    assert res.exit_code == 6 and "Traceback" not in out, res.output
    assert "repaired" in out and "8 rows marked pending" in out, out
    assert "not repaired: features/" in out and "2 samples with NaN/inf" in out, out
    rm = f"repackctl cache rm {entry.name} --features {fid} --yes"
    assert f"Hint: `--repair` leaves NaN/inf rows as they are: `{rm}`" in out, out
    assert "repackctl extract --encoder patchpix" in out, out
    assert "`repackctl cache verify --repair` marks" not in out, out  # it does not fix NaN rows
    # the hint's commands do fix it
    res = runner.invoke(app, ["cache", "rm", entry.name, "--features", fid, "--yes"])
    assert res.exit_code == 0, res.output
    _extract_again()
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    assert np.isfinite(entry.features(fid)["tokens"][:].astype(np.float32)).all()


def test_nan_rows_inside_the_repaired_shard_are_rewritten_by_the_rerun(tmp_path, extracted):
    entry, fid = _damaged(extracted, tmp_path, slice(2, 4))
    res = runner.invoke(app, ["cache", "verify", entry.name, "--repair"])
    assert res.exit_code == 0 and "8 rows marked pending" in _flat(res), res.output
    assert "not repaired" not in res.output, res.output
    _extract_again()
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    assert np.isfinite(entry.features(fid)["tokens"][:].astype(np.float32)).all()


def test_without_repair_the_hint_names_both_fixes(tmp_path, extracted):
    entry, fid = _damaged(extracted, tmp_path, slice(16, 18))
    res = runner.invoke(app, ["cache", "verify"])
    out = _flat(res)
    assert res.exit_code == 6 and "Traceback" not in out, res.output
    assert "images: missing chunk" in out and "2 samples with NaN/inf" in out, out
    assert f"repackctl cache rm {entry.name} --features {fid} --yes" in out, out
    assert "`repackctl cache verify --repair` marks damaged rows pending" in out, out


def test_an_entry_being_written_is_neither_checked_nor_repaired(tmp_path, extracted):
    """`cache verify` read an entry that an extract was filling and called its pending rows a
    problem (hint: `--repair`, which fixes no pending row), and `--repair` could mark rows
    pending under a writer. Now an entry that a writer holds is left alone, and a repair holds
    the entry against writers until it has finished."""
    from repackctl.cache.creation import entry_writer
    from repackctl.cache.verify import writers_kept_out
    from repackctl.errors import CacheError

    entry, _ = _damaged(extracted, tmp_path, slice(16, 18))
    done = entry.done[:].copy()
    with entry_writer(entry.group):
        for more in ([], ["--repair"]):
            res = runner.invoke(app, ["cache", "verify", entry.name, *more])
            out = _flat(res)
            assert res.exit_code == 6 and "Traceback" not in out, res.output
            assert "being written by another process" in out and "not checked" in out, out
            assert "missing chunk" not in out and "rows marked pending" not in out, out
            command = " ".join(["repackctl cache verify", entry.name, *more])
            again = f"run `{command}` again when it has finished"
            assert again in out, out
    assert (entry.done[:] == done).all()  # nothing marked pending
    root = str(tmp_path / "cache")
    with writers_kept_out(root, entry.name, hold=False) as busy:
        assert busy is None
        with entry_writer(entry.group):  # a plain check keeps no writer out
            pass
    with writers_kept_out(root, entry.name, hold=True) as busy:
        assert busy is None
        with pytest.raises(CacheError, match="being removed or repaired by another process"):
            with entry_writer(entry.group):
                raise AssertionError("a writer must not start during a repair")
    res = runner.invoke(app, ["cache", "verify", entry.name, "--repair"])
    assert res.exit_code == 6 and "8 rows marked pending" in _flat(res), res.output


def test_an_entry_a_training_reads_is_checked_but_not_repaired(tmp_path, extracted):
    """A repair marked rows pending under a training that was reading them: the training went
    on with its buffer, then stopped at its next read on a "missing chunk". Now a reading view
    (``GuardedArray``, which every training reads through) holds its group: `cache verify`
    still checks the entry, `--repair` leaves it alone, and no view opens during a repair."""
    from repackctl.cache.integrity import GuardedArray
    from repackctl.cache.verify import writers_kept_out
    from repackctl.errors import CacheError

    entry, _ = _damaged(extracted, tmp_path, slice(16, 18))
    done = entry.done[:].copy()
    view = GuardedArray(entry.labels, done == 1, f"{entry.name} labels", "hint")
    res = runner.invoke(app, ["cache", "verify", entry.name])
    assert "images: missing chunk" in _flat(res), res.output  # a plain check reads on
    res = runner.invoke(app, ["cache", "verify", entry.name, "--repair"])
    out = _flat(res)
    assert res.exit_code == 6 and "Traceback" not in out, res.output
    assert "being read by another process" in out and "neither checked nor repaired" in out
    again = f"run `repackctl cache verify {entry.name} --repair` again when it has finished"
    assert again in out, out
    assert (entry.done[:] == done).all()  # nothing marked pending
    del view  # the training ended
    root = str(tmp_path / "cache")
    with writers_kept_out(root, entry.name, hold=True) as busy:
        assert busy is None
        with pytest.raises(CacheError, match="being removed or repaired by another process"):
            GuardedArray(entry.images, done == 1, f"{entry.name} images", "hint")
    res = runner.invoke(app, ["cache", "verify", entry.name, "--repair"])
    assert res.exit_code == 6 and "8 rows marked pending" in _flat(res), res.output


def test_rows_with_several_damaged_arrays_are_counted_once(tmp_path, extracted):
    """Shard 0's images and its features' tokens both lost: 8 rows are marked pending, and the
    summary said 16 (one count per damaged array)."""
    shutil.copytree(extracted, tmp_path / "cache")
    (name,) = list_entries(str(tmp_path / "cache"))
    entry = DatasetEntry.open(str(tmp_path / "cache"), name)
    (fid,) = entry.feature_ids()
    for array in ("images", f"features/{fid}/tokens"):
        files = [p for p in (tmp_path / "cache" / name / array / "c" / "0").rglob("*")]
        for p in files:
            if p.is_file():
                p.unlink()
    res = runner.invoke(
        app, ["cache", "verify", name, "--repair", "--cache", str(tmp_path / "cache")]
    )
    out = _flat(res)
    assert res.exit_code == 0 and "8 rows marked pending" in out, res.output
    assert (entry.done[:8] == 0).all() and (entry.done[8:] != 0).all()
