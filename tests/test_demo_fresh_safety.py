"""`repackctl demo --fresh` deletes only what the demo wrote: a file of the user's anywhere in the
demo's folders makes it refuse, naming the file and removing nothing. (Through the command, on a
finished demo, with metrics.json naming what was scored: tests/test_demo.py, test_demo_t2i.py.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.snapshot import snapshot

from repackctl.errors import ConfigError
from repackctl.pipeline import MARKER, claim_folder, unknown_paths
from repackctl.settings import resolve_settings

PACK, DIT = "pack-tiny", "dit-tiny"  # the run names of support.stack.make_dit_run
OWNED = ("cache", PACK, DIT, "samples", "report.md", "metrics.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A folder claimed by `demo` holding what the stages write, made by the real stages: a cache
    (extract, then pack encode), a pack run (pack train), a DiT run (a checkpoint), a sample set
    (sample), and the report files."""
    from support.stack import make_dit_run

    from repackctl.extract import run_extract
    from repackctl.pack.encode import run_pack_encode
    from repackctl.pack.task import run_pack_train
    from repackctl.sample.run import run_sample

    out = tmp_path_factory.mktemp("fresh") / "demo"
    claim_folder(out, "demo", OWNED, fresh=False)
    base = {"cache": str(out / "cache"), "runs": str(out), "samples": str(out / "samples")}
    base |= {"device": "cpu", "num_workers": 0, "seed": 0}

    def settings(stage: str, **flags):
        return resolve_settings(None, base | {f"{stage}.{k}": v for k, v in flags.items()}).settings

    common = {"encoder": "patchpix", "resolution": 32, "num": 16}
    run_extract(settings("extract", chunk=8, shard=8, **common))
    run_pack_train(settings("pack", steps=2, batch_size=4, latent_channels=4, ch=8,
                            disc_channels=8, run=PACK, ckpt_every=2, **common))  # fmt: skip
    run_pack_encode(settings("pack", run=PACK))
    make_dit_run(str(out), DIT, seed=0)
    run_sample(settings("sample", run=DIT, num=2, steps=2))
    (out / "report.md").write_text("# report\n")
    (out / "metrics.json").write_text("{}\n")
    return out


@pytest.fixture
def demo(built, tmp_path) -> Path:
    """A copy of the built folder that a test may change."""
    shutil.copytree(built, tmp_path / "demo", symlinks=True)
    return tmp_path / "demo"


def test_everything_the_stages_write_is_removed_by_fresh(demo):
    assert [p for name in OWNED for p in unknown_paths(demo, name)] == []
    (demo / "notes.txt").write_text("mine")  # beside the owned entries: kept, as before
    removed: list[str] = []
    claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "notes.txt"]
    assert len(removed) == len(OWNED)


def _sample_set(demo: Path) -> Path:
    return next((demo / "samples").iterdir())


def _checkpoint(demo: Path, run: str) -> Path:
    return next((demo / run / "checkpoints").iterdir())


# a user's file in each kind of owned folder, at the top and deeper down
PLACES = {
    "samples folder": lambda d: d / "samples" / "my_notes.txt",
    "a sample set": lambda d: _sample_set(d) / "notes.md",
    "a sample set's PNG name outside a set": lambda d: d / "samples" / "mine" / "000000.png",
    "a run": lambda d: d / DIT / "notes.txt",
    "a checkpoint": lambda d: _checkpoint(d, PACK) / "readme.txt",
    "the cache root": lambda d: d / "cache" / "notes.txt",
    "a cache entry": lambda d: next(p for p in (d / "cache").iterdir() if p.is_dir()) / "x.txt",
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_user_file_in_an_owned_folder_refuses_fresh_and_nothing_is_removed(demo, place):
    mine = PLACES[place](demo)
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("mine")
    before = snapshot(demo)
    removed: list[str] = []
    with pytest.raises(ConfigError) as e:
        claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert str(mine) in e.value.message and "nothing was removed" in e.value.message
    assert "move them out of" in e.value.hint
    assert removed == [] and snapshot(demo) == before


def test_links_and_foreign_folders_at_owned_names_refuse_fresh(demo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (demo / "samples" / "link").symlink_to(elsewhere)  # a link: never followed nor removed
    (demo / "report.md").unlink()
    (demo / "report.md").mkdir()  # a folder where the demo writes a file
    (demo / "report.md" / "draft.txt").write_text("mine")
    before = snapshot(demo)
    with pytest.raises(ConfigError) as e:
        claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert "2 path(s)" in e.value.message
    assert str(demo / "samples" / "link") in e.value.message
    assert str(demo / "report.md") in e.value.message
    assert snapshot(demo) == before and (elsewhere / "keep.txt").read_text() == "mine"


def test_temporaries_a_killed_writer_leaves_are_the_pipelines_own(demo):
    (_sample_set(demo) / f".000001.png.{os.getpid()}.tmp").write_bytes(b"half")
    tmp_ckpt = demo / DIT / "checkpoints" / ".tmp-step-0000009-123"
    tmp_ckpt.mkdir()
    (tmp_ckpt / "model.safetensors").write_bytes(b"half")
    (demo / PACK / ".tmp-curves.png").write_bytes(b"half")
    assert [p for name in OWNED for p in unknown_paths(demo, name)] == []
    claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert [p.name for p in demo.iterdir()] == [MARKER]


@pytest.mark.slow
def test_a_fresh_killed_while_it_deletes_is_finished_by_the_next(demo):
    """`--fresh` deleted each run in place: killed midway, the run lost its config.json and was
    no longer a run, so every later `--fresh` refused it as a folder the demo did not write. It
    now moves each owned folder to `.removing-<name>` first; the next `--fresh` deletes that."""
    import subprocess
    import sys

    from conftest import subprocess_env

    code = (
        "import sys; from pathlib import Path; from repackctl.pipeline import claim_folder; "
        f"claim_folder(Path(sys.argv[1]), 'demo', {OWNED!r}, fresh=True)"
    )
    env = subprocess_env(demo.parent, REPACKCTL_TEST_CRASH_AFTER=f"fresh-{DIT}")
    res = subprocess.run([sys.executable, "-c", code, str(demo)], env=env, capture_output=True)
    assert res.returncode == 137, res.stderr
    (trash,) = [p for p in demo.iterdir() if p.name.startswith(".removing-")]
    assert trash.name == f".removing-{DIT}" and not (demo / "cache").exists()
    (trash / "config.json").unlink(missing_ok=True)  # as a deletion cut short leaves it
    for p in trash.rglob("state.json"):
        p.unlink()
    removed: list[str] = []
    claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert [p.name for p in demo.iterdir()] == [MARKER]
    assert any("left by an interrupted --fresh" in line for line in removed), removed


@pytest.mark.slow
def test_a_second_demo_in_a_folder_in_use_is_refused_at_once(tmp_path):
    """A second `repackctl demo` into the folder of a running one went through the stages the
    first had finished, started a refiner beside the first's (both writing refine.log), and
    stopped only at the run the first was training. It is refused before it writes anything."""
    import subprocess
    import sys

    from conftest import subprocess_env
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    out = tmp_path / "demo"
    code = (
        "import sys, time; from pathlib import Path; from repackctl.pipeline import claim_folder; "
        f"claim_folder(Path(sys.argv[1]), 'demo', {OWNED!r}, fresh=False); print('held', "
        "flush=True); time.sleep(60)"
    )
    env = subprocess_env(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(out)
        for more in ([], ["--fresh"]):
            res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), *more])
            said = " ".join(res.output.split())
            assert res.exit_code == ConfigError.exit_code and "Traceback" not in said, said
            assert "is in use by another `repackctl demo`" in said and "Hint:" in said, said
            assert snapshot(out) == before  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()
    claim_folder(out, "demo", OWNED, fresh=False)  # the holder is gone: the folder is free
