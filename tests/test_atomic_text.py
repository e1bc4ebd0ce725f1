"""Reports are written through a temporary file and a rename (``files.write_text_atomic``, used
for the demos' report.md): a write that fails half-way keeps the previous report whole, where
``Path.write_text`` truncates it first."""

from __future__ import annotations

import pytest

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
