"""`run_files.recorded_file`: a path a record holds, refused where it is relative and cannot be
the file recorded (older extract and import records keep one as typed, not the folder it was
relative to). Real files in a temporary folder, read from two working folders."""

from __future__ import annotations

import hashlib

import pytest

from repackctl.errors import ConfigError
from repackctl.run_files import recorded_file

HINT = "run it again with the file's absolute path"


def test_a_relative_record_is_read_only_as_the_file_recorded(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "w.safetensors").write_bytes(b"recorded")
    (b / "w.safetensors").write_bytes(b"another")
    sha = hashlib.sha256(b"recorded").hexdigest()
    record = "features group x of entry y: extract --weights"

    monkeypatch.chdir(a)  # the folder it was typed in: the file recorded
    assert recorded_file("w.safetensors", record, HINT, sha) == a / "w.safetensors"
    assert recorded_file("w.safetensors", record, HINT) == a / "w.safetensors"  # no sha256 held
    absolute = str(b / "w.safetensors")  # an absolute record is the reader's to check
    assert recorded_file(absolute, record, HINT, sha) == b / "w.safetensors"

    monkeypatch.chdir(b)  # another folder, a file of that name: another file
    with pytest.raises(ConfigError) as e:
        recorded_file("w.safetensors", record, HINT, sha)
    said = str(e.value)
    assert "extract --weights is the relative path 'w.safetensors'" in said, said
    assert f"{b / 'w.safetensors'} is another file" in said and sha[:12] in said, said
    assert e.value.hint == HINT

    monkeypatch.chdir(tmp_path)  # no file of that name
    with pytest.raises(ConfigError) as e:
        recorded_file("w.safetensors", record, HINT, sha)
    assert f"this folder ({tmp_path}) holds no such file" in str(e.value), str(e.value)
