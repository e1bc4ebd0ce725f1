"""One table of repackctl's temporary names (``repackctl.temp_names``) serves the sweeps that
remove a dead writer's temporaries and the checks that tell repackctl's files from a user's.

A temporary of ``atomic_path`` (``.<name>.<pid>.<8 hex>.tmp``) whose hex digits are all decimal
once fitted ``.<name>.<pid>.tmp`` first, which read them as the pid: a live writer's temporary
looked like a dead one's, and the next writer of the same statistics file deleted it.
"""

from __future__ import annotations

import os

from support.kill import dead_pid

from repackctl.files import remove_stale_temp_files, write_json_atomic
from repackctl.metrics.frechet import atomic_path, remove_stale_temporaries
from repackctl.temp_names import HOST, temp_parts, temp_targets, temp_writer, writer_tag


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


# --------------------------------------------------------------------------- the writer's machine
# A pid means something on its own machine only. On a shared filesystem (a multi-node job, or
# containers with their own pid namespaces), a sweep that judged another machine's temporary by
# its pid deleted a live writer's file, and that writer's rename then failed.
OTHER_HOST = "0123abcd" if HOST != "0123abcd" else "89abcdef"


def test_the_writers_name_their_machine_and_sweeps_judge_only_their_own(tmp_path) -> None:
    gone = dead_pid()
    ours_dead = [
        tmp_path / f".ref.npz.{gone}-{HOST}.0badf00d.tmp",
        tmp_path / f".000001.png.{gone}-{HOST}.tmp",
        tmp_path / f".tmp-a.json.{gone}-{HOST}",
        tmp_path / f".tmp-b.json.{gone}",  # an older version's name, without the machine
    ]
    others = [  # another machine's, with a pid that runs nowhere here
        tmp_path / f".ref.npz.{gone}-{OTHER_HOST}.0badf00d.tmp",
        tmp_path / f".000001.png.{gone}-{OTHER_HOST}.tmp",
        tmp_path / f".tmp-a.json.{gone}-{OTHER_HOST}",
    ]
    for p in ours_dead + others:
        p.write_bytes(b"x")
    assert temp_writer(others[0].name) == (gone, OTHER_HOST)
    assert temp_writer(ours_dead[3].name) == (gone, None)
    assert temp_parts(others[1].name) == ("000001.png", gone)
    assert "a.json" in temp_targets(others[2].name)  # still told apart from a user's file
    assert remove_stale_temporaries(tmp_path / "ref.npz") == [ours_dead[0]]
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(ours_dead[1:])
    assert all(p.exists() for p in others)
    # what the writers write now names this process on this machine
    write_json_atomic(tmp_path / "c.json", {})  # its own temporary is renamed away
    assert writer_tag() == f"{os.getpid()}-{HOST}"
    with atomic_path(tmp_path / "s.npz") as tmp:
        assert temp_writer(tmp.name) == (os.getpid(), HOST)
        tmp.write_bytes(b"x")


def test_an_import_removes_only_its_own_machines_dead_staging_folders(tmp_path) -> None:
    from repackctl.convert.official import _stale_staging

    gone = dead_pid()
    mine, older = tmp_path / f".tmp-import-off.{gone}-{HOST}", tmp_path / f".tmp-import-o.{gone}"
    other = tmp_path / f".tmp-import-off.{gone}-{OTHER_HOST}"  # another node's, maybe running
    live = tmp_path / f".tmp-import-x.{writer_tag()}"
    for p in (mine, older, other, live):
        (p / "off-pack").mkdir(parents=True)
    _stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name])
