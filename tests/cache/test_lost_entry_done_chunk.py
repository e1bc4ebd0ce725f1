"""A lost chunk of an entry's own `done` (audit A, finding 5).

Its rows read as pending, but the extract resumes from its features' `done`, which records them
written: `cache verify` and `cache ls` said "resume with the same extract", which wrote nothing,
and `--repair` found nothing to repair (a missing `done` chunk was no damage), for ever. Now
the lost chunk is reported, `--repair` writes it again from the features' record when the
images it would vouch for are intact (else marks the rows pending, for the extract to write),
and the extract refuses to "resume" it, naming the repair.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n16--train--32px"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16", "--num-workers", "0"]
base_cache, cache = patchpix_fixtures("lost-entry-done")


def _arrays(root: Path) -> dict[str, np.ndarray]:
    e = DatasetEntry.open(str(root), ENTRY)
    (fid,) = e.feature_ids()
    return {"done": e.done[:], "images": e.images[:], "features": e.features(fid).done[:]}


def test_a_lost_done_chunk_is_restored_from_the_features(cache: Path) -> None:
    roots = ["--cache", str(cache)]
    before = _arrays(cache)
    (cache / ENTRY / "done" / "c" / "0").unlink()  # rows 0–7
    out = cli_refused(6, "cache", "verify", ENTRY, *roots)
    assert "done: missing chunk c/0 (rows 0–7) (`--repair` restores the rows" in out, out
    assert "resume with the same extract" not in out, out
    listed = cli_ok("cache", "ls", *roots)
    assert f"finish with `repackctl cache verify {ENTRY} --repair`" in listed, listed
    out = cli_refused(6, "extract", *SRC, *roots, "--device", "cpu")  # wrote nothing before
    assert "8 samples of builtin-n16--train--32px (rows 0–7) are pending" in out, out
    assert f"run `repackctl cache verify {ENTRY} --repair`" in out, out
    out = cli_ok("cache", "verify", ENTRY, "--repair", *roots)
    assert "written again from what its features record; nothing to rerun" in out, out
    assert "rows marked pending" not in out and "now run" not in out, out
    after = _arrays(cache)
    for name, arr in before.items():
        assert np.array_equal(after[name], arr), name  # restored; nothing else changed
    cli_ok("cache", "verify", ENTRY, *roots)
    out = cli_ok("extract", *SRC, *roots, "--device", "cpu")
    assert "written now │ 0" in out, out


def test_rows_whose_images_are_lost_too_are_marked_pending(cache: Path) -> None:
    roots = ["--cache", str(cache)]
    before = _arrays(cache)
    (cache / ENTRY / "done" / "c" / "0").unlink()
    shutil.rmtree(cache / ENTRY / "images" / "c" / "0")  # rows 0–7: nothing vouches for them
    out = cli_ok("cache", "verify", ENTRY, "--repair", *roots)
    assert "8 rows marked pending" in out, out
    out = cli_ok("extract", *SRC, *roots, "--device", "cpu")
    assert "written now │ 8" in out, out
    cli_ok("cache", "verify", ENTRY, *roots)
    after = _arrays(cache)
    for name, arr in before.items():
        assert np.array_equal(after[name], arr), name  # written again as they were
