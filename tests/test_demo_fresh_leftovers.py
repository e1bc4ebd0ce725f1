"""`repackctl demo --fresh` judges what an interrupted ``--fresh`` left (``.removing-<name>``), the
cache's own ``.removing`` folder and a file at a name where the demo writes a folder by the same
rules as the folders it deletes: the user's files there make it refuse, naming them, and remove
nothing (they were deleted unchecked). The demo's own leftovers are still finished. Through the
command on a folder that only looks like a demo's; on a folder the real stages made
(``test_demo_fresh_safety.built``) through ``claim_folder``, as ``demo`` calls it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_demo_fresh_safety as safety
from support.cli import cli_refused
from support.snapshot import snapshot

from repackctl.errors import ConfigError
from repackctl.paths import SETTINGS_JSON
from repackctl.pipeline import MARKER, PLAN_FILE, claim_folder

built, demo = safety.built, safety.demo  # a folder made by the real stages; a copy per test
OWNED, PACK, DIT = safety.OWNED, safety.PACK, safety.DIT


def _refused(demo: Path, *mine: Path) -> None:
    """``--fresh`` refuses, naming each of ``mine``, and nothing in ``demo`` changes."""
    before = snapshot(demo)
    removed: list[str] = []
    with pytest.raises(ConfigError) as e:
        claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert f"{len(mine)} path(s)" in e.value.message, e.value.message
    assert all(str(p) in e.value.message for p in mine), e.value.message
    assert "nothing was removed" in e.value.message and "move them out of" in e.value.hint
    assert removed == [] and snapshot(demo) == before


def test_fresh_refuses_the_users_files_in_leftovers_and_a_file_at_a_folders_name(tmp_path):
    out = tmp_path / "fakedemo"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"made_by": "demo"}) + "\n")
    (out / PLAN_FILE).write_text("{}\n")
    (out / "pack").write_text("mine: a file where the demo writes its pack run")
    group = {"zarr_format": 3, "node_type": "group", "attributes": {}}
    (out / "cache" / ".removing" / "mine").mkdir(parents=True)
    (out / "cache" / "zarr.json").write_text(json.dumps(group))
    (out / "cache" / ".removing" / "mine" / "data.txt").write_text("mine")
    (out / ".removing-samples").mkdir()
    (out / ".removing-samples" / "keep.txt").write_text("mine")
    before = snapshot(out)
    said = cli_refused(2, "demo", "--quick", "--fresh", "--out", str(out))
    assert "3 path(s) that `repackctl demo` did not write" in said, said
    assert "nothing was removed" in said and "data.txt" in said and "keep.txt" in said, said
    assert f"{out.name}/pack" in said.replace(" ", ""), said
    assert snapshot(out) == before


def test_the_rest_of_an_interrupted_fresh_is_checked_then_finished(demo):
    """A ``--fresh`` killed while it deleted the samples and the cache left their rests, their
    settings files and some metadata already gone: the next one finishes them, unless a file of
    the user's is in them (the samples', a name no sample set writes; the cache's, a name the
    cache never writes)."""
    (demo / "samples").rename(demo / ".removing-samples")
    for p in (demo / ".removing-samples").rglob(SETTINGS_JSON):
        p.unlink()
    (demo / "cache").rename(demo / ".removing-cache")
    for p in sorted((demo / ".removing-cache").rglob("zarr.json"))[::2]:
        p.unlink()
    mine = [demo / ".removing-cache" / "notes.txt", demo / ".removing-samples" / "keep.txt"]
    for p in mine:
        p.write_text("mine")
    _refused(demo, *mine)
    for p in mine:
        p.unlink()
    removed: list[str] = []
    claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert [p.name for p in demo.iterdir()] == [MARKER]
    assert sum("left by an interrupted --fresh" in line for line in removed) == 2, removed


def test_the_caches_removing_folder_is_checked_as_the_rest_of_the_cache(demo):
    cache = demo / "cache"
    entry = next(p for p in sorted(cache.iterdir()) if p.is_dir())
    trash = cache / ".removing"
    shutil.copytree(entry / "images", trash / f"{entry.name}@images")  # a killed `cache rm`
    (trash / "mine").mkdir()
    (trash / "mine" / "data.txt").write_text("mine")
    _refused(demo, trash / "mine" / "data.txt")
    (trash / "stuck").symlink_to(entry)  # a link is never the cache's, even in .removing
    shutil.rmtree(trash / "mine")
    _refused(demo, trash / "stuck")
    (trash / "stuck").unlink()
    claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert [p.name for p in demo.iterdir()] == [MARKER] and not cache.exists()


def test_a_file_where_the_demo_writes_a_folder_is_not_the_demos(demo):
    shutil.rmtree(demo / PACK)
    (demo / PACK).write_text("mine")  # at a run's name
    (demo / f".removing-{DIT}").write_text("mine too")  # where --fresh moves the run it deletes
    _refused(demo, demo / PACK, demo / f".removing-{DIT}")
    (demo / PACK).unlink()
    (demo / f".removing-{DIT}").unlink()
    # the demo deletes its files in place: a `.removing-<file>` is never its own, and stays
    (demo / ".removing-report.md").mkdir()
    (demo / ".removing-report.md" / "draft.txt").write_text("mine")
    claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert sorted(p.name for p in demo.iterdir()) == sorted([MARKER, ".removing-report.md"])
    assert (demo / ".removing-report.md" / "draft.txt").read_text() == "mine"
