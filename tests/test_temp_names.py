"""One table of repackctl's temporary names (``repackctl.temp_names``) serves the sweeps that
remove a dead writer's temporaries and the checks that tell repackctl's files from a user's.

A temporary of ``atomic_path`` (``.<name>.<pid>.<8 hex>.tmp``) whose hex digits are all decimal
once fitted ``.<name>.<pid>.tmp`` first, which read them as the pid: a live writer's temporary
looked like a dead one's, and the next writer of the same statistics file deleted it.
"""

from __future__ import annotations

import os

from support.kill import dead_pid

from repackctl.metrics.frechet import remove_stale_temporaries
from repackctl.temp_names import temp_parts, temp_targets


def test_a_live_writers_all_digit_temporary_is_kept_and_a_dead_ones_removed(tmp_path) -> None:
    live = tmp_path / f".ref.npz.{os.getpid()}.12345678.tmp"
    dead = tmp_path / f".ref.npz.{dead_pid()}.0badf00d.tmp"
    other = tmp_path / f".other.npz.{dead_pid()}.0badf00d.tmp"  # another target's
    for p in (live, dead, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "ref.npz") == [dead]
    assert live.exists() and other.exists()


def test_every_writers_temporary_names_its_file_and_pid() -> None:
    pid = 4242
    assert temp_parts(f".ref.npz.{pid}.12345678.tmp") == ("ref.npz", pid)  # atomic_path
    assert temp_parts(f".ref.npz.{pid}.0badf00d.tmp") == ("ref.npz", pid)
    assert temp_parts(f".000033.png.{pid}.tmp") == ("000033.png", pid)  # write_png_atomic
    assert temp_parts(f".tmp-config.json.{pid}") == ("config.json", pid)  # write_text_atomic
    for pidless in (".tmp-curves.png", ".prompts.txt.tmp", "ref.npz", ".tmp-", "a.tmp"):
        assert temp_parts(pidless) is None, pidless
    assert "curves.png" in temp_targets(".tmp-curves.png")
    assert "prompts.txt" in temp_targets(".prompts.txt.tmp")
    assert "config.json" in temp_targets(f".tmp-config.json.{pid}")
    assert temp_targets("config.json") == []
