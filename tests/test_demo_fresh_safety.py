"""`repackctl demo --fresh` deletes only what the demo wrote: a file of the user's anywhere in the
demo's folders makes it refuse, naming the file and removing nothing. And the demos' metrics.json
names what was scored (samples.npz, checkpoint) with its sha256."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.files import sha256_file
from repackctl.pipeline import MARKER, claim_folder, unknown_paths
from repackctl.settings import resolve_settings

runner = CliRunner()
PACK, DIT = "pack-tiny", "dit-tiny"  # the run names of support.stack.make_dit_run
OWNED = ("cache", PACK, DIT, "samples", "report.md", "metrics.json")


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path below ``root``: file contents, link targets, folders."""
    snap: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = "link → " + os.readlink(p)
        elif p.is_file():
            snap[rel] = p.read_bytes()
        else:
            snap[rel] = "folder"
    return snap


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
    before = _snapshot(demo)
    removed: list[str] = []
    with pytest.raises(ConfigError) as e:
        claim_folder(demo, "demo", OWNED, fresh=True, log=removed.append)
    assert str(mine) in e.value.message and "nothing was removed" in e.value.message
    assert "move them out of" in e.value.hint
    assert removed == [] and _snapshot(demo) == before


def test_links_and_foreign_folders_at_owned_names_refuse_fresh(demo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (demo / "samples" / "link").symlink_to(elsewhere)  # a link: never followed nor removed
    (demo / "report.md").unlink()
    (demo / "report.md").mkdir()  # a folder where the demo writes a file
    (demo / "report.md" / "draft.txt").write_text("mine")
    before = _snapshot(demo)
    with pytest.raises(ConfigError) as e:
        claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert "2 path(s)" in e.value.message
    assert str(demo / "samples" / "link") in e.value.message
    assert str(demo / "report.md") in e.value.message
    assert _snapshot(demo) == before and (elsewhere / "keep.txt").read_text() == "mine"


def test_temporaries_a_killed_writer_leaves_are_the_pipelines_own(demo):
    (_sample_set(demo) / f".000001.png.{os.getpid()}.tmp").write_bytes(b"half")
    tmp_ckpt = demo / DIT / "checkpoints" / ".tmp-step-0000009-123"
    tmp_ckpt.mkdir()
    (tmp_ckpt / "model.safetensors").write_bytes(b"half")
    (demo / PACK / ".tmp-curves.png").write_bytes(b"half")
    assert [p for name in OWNED for p in unknown_paths(demo, name)] == []
    claim_folder(demo, "demo", OWNED, fresh=True, log=lambda _: None)
    assert [p.name for p in demo.iterdir()] == [MARKER]


def _assert_scored(record: dict, folder_prefix: str) -> None:
    """``record`` names a samples.npz and the checkpoint that made it, with their true sha256."""
    npz = Path(record["samples"])
    assert npz.name == "samples.npz" and npz.parent.name.startswith(folder_prefix)
    assert record["samples_sha256"] == sha256_file(npz)
    weights = Path(record["checkpoint"]) / f"{record['weights']}.safetensors"
    assert record["checkpoint_sha256"] == sha256_file(weights)


@pytest.mark.slow
def test_t2i_demo_fresh_keeps_a_users_file_and_metrics_name_what_was_scored(tmp_path):
    out = tmp_path / "demo-t2i"
    args = ["demo", "--t2i", "--quick", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    _assert_scored(m["scored"], "t2i--")
    assert m["scored"]["refiner"] is None
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # renamed into place

    # the audit's case: a note in the demo's samples folder
    (out / "samples" / "my_notes.txt").write_text("mine")
    before = _snapshot(out)
    res = runner.invoke(app, [*args, "--fresh"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "Error:" in res.output and "Hint:" in res.output and "my_notes.txt" in res.output
    assert "--fresh: removing" not in res.output
    assert _snapshot(out) == before

    # moved away, --fresh starts over and every stage runs again
    (out / "samples" / "my_notes.txt").rename(tmp_path / "my_notes.txt")
    res = runner.invoke(app, [*args, "--fresh"])
    assert res.exit_code == 0, res.output
    assert "--fresh: removing" in res.output and "] reused" not in res.output
    again = json.loads((out / "metrics.json").read_text())["scored"]
    _assert_scored(again, "t2i--")
    assert again["samples"] == m["scored"]["samples"]


@pytest.mark.slow
def test_class_demo_fresh_keeps_a_users_file_and_metrics_name_what_was_scored(tmp_path):
    from repackctl.demo import DEMO_FILES

    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    _assert_scored(m["scored_plain"], "dit--")
    _assert_scored(m["scored_refined"], "dit--")
    assert m["scored_plain"]["refiner"] is None
    refiner = m["scored_refined"]["refiner"]
    assert refiner["sha256"] == sha256_file(Path(refiner["checkpoint"]) / "ema.safetensors")
    assert "scored_pca" not in m  # no PCA arm was run

    (out / "dit" / "notes.txt").write_text("mine")
    before = _snapshot(out)
    res = runner.invoke(app, [*args, "--fresh"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "Error:" in res.output and "notes.txt" in res.output
    assert _snapshot(out) == before

    (out / "dit" / "notes.txt").unlink()
    claim_folder(out, "demo", DEMO_FILES, fresh=True, log=lambda _: None)
    assert [p.name for p in out.iterdir()] == [MARKER]
