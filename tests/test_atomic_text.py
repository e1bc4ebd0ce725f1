"""Reports are written through a temporary file and a rename (``files.write_text_atomic``, used
for the demos' report.md): a write that fails half-way keeps the previous report whole, where
``Path.write_text`` truncates it first."""

from __future__ import annotations

import pytest
from support.kill import dead_pid

from repackctl.files import write_text_atomic


def test_a_failed_write_keeps_the_previous_text_whole(tmp_path):
    path = tmp_path / "report.md"
    write_text_atomic(path, "# report\n\nold figures, ü\n")
    with pytest.raises(UnicodeEncodeError):  # fails after the first characters are written
        write_text_atomic(path, "# report\n\nnew figures \ud800\n")
    assert path.read_text(encoding="utf-8") == "# report\n\nold figures, ü\n"
    with pytest.raises(UnicodeEncodeError):
        path.write_text("# report\n\nnew figures \ud800\n", encoding="utf-8")
    assert path.read_text(encoding="utf-8") != "# report\n\nold figures, ü\n"  # what it replaced


def test_a_killed_writers_temporaries_are_removed_and_no_other_file(tmp_path):
    """A kill before the rename left ``.tmp-<name>.<pid>`` for good (recon/probe reports, the
    demo's plan.json, report.md, metrics.json): the next write into that folder removes those
    of dead writers. A failed write removes its own."""
    import os

    dead = dead_pid()
    path = tmp_path / "plan.json"
    stale = [tmp_path / f".tmp-plan.json.{dead}", tmp_path / f".tmp-report.md.{dead}"]
    kept = [
        tmp_path / f".tmp-plan.json.{dead}x",  # not our name
        tmp_path / f".tmp-other.json.{os.getpid()}",  # a live writer's
        tmp_path / f"tmp-plan.json.{dead}",  # not hidden: not ours
    ]
    for p in (*stale, *kept):
        p.write_text("half")
    write_text_atomic(path, "{}")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert path.read_text() == "{}"
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\ud800")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["plan.json", *(p.name for p in kept)]
    )
