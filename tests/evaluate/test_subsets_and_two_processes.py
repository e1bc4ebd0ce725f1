"""Two silent wrong answers of `evaluate`, end to end on real caches, runs and processes.

1. ``-n N`` / ``--num N`` subsets of a cache entry are class-balanced (a round robin in index
   order): image-folder entries are stored sorted by class, so the first N rows were the first
   classes only (a probe scored on one class, a "5 classes, chance 20 %" note beside it). The
   built-in dataset (labels ``index % 10``) keeps its first N rows.
2. ``evaluate fid RUN -n N`` under two processes (torchrun's environment, ``start_two``): a
   samples folder that one process (or a killed earlier call) started is finished, not refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from PIL import Image
from support.kill import kill_after_pngs
from support.launch import start_two
from support.stack import FD_WEIGHTS
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app

runner = CliRunner()
CLASSES = ("a", "b", "c")
SRC = ["--encoder", "patchpix", "--resolution", "32"]


def _class_folders(root: Path, per_class: dict[str, int]) -> Path:
    """``root/<split>/<class>/<i>.png``: tiny noise images, so the entries are class-sorted."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def _ok(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """An image-folder cache (3 classes; train 6, val 4 per class) + the built-in val entry (24),
    patchpix at 32 px, and a 2-step pack run ``pk`` trained on the folder's train entry."""
    root = tmp_path_factory.mktemp("subsets")
    data = _class_folders(root / "img", {"train": 6, "val": 4})
    where = ["--cache", str(root / "cache"), "--runs", str(root / "runs"), "--device", "cpu"]
    ext = ["extract", *SRC, "--chunk", "8", "--shard", "16", "--num-workers", "0"]
    ext += ["--cache", str(root / "cache")]
    for split in ("train", "val"):
        _ok(*ext, "--data", f"imagefolder:{data}", "--split", split)
    _ok(*ext, "--data", "builtin", "--split", "val", "-n", "24")
    _ok("pack", "train", *SRC, "--data", f"imagefolder:{data}", "-c", "4", "--ch", "8",
        "--batch-size", "8", "--steps", "2", "--image-every", "0", "--name", "pk", *where)  # fmt: skip
    entries = {e.split("--")[1]: e for e in list_entries(str(root / "cache")) if "folder-" in e}
    return {"root": str(root), "cache": str(root / "cache"), **entries}


def _where(folders: dict[str, str]) -> list[str]:
    root = Path(folders["root"])
    return ["--cache", folders["cache"], "--runs", str(root / "runs"), "--device", "cpu"]


def _report(folders: dict[str, str], name: str) -> dict:
    from repackctl.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(folders["root"]) / "runs" / "pk")
    return json.loads((ckpt / f"{name}.json").read_text())


def _recon_psnr(cache: str, entry: str, rows: list[int]) -> float:
    """Mean PSNR of run pk's posterior-mean reconstructions of ``rows`` of ``entry``."""
    from repackctl.files import to_uint8
    from repackctl.metrics.recon import psnr
    from repackctl.pack.load import load_pack

    handle = load_pack("pk", runs=str(Path(cache).parent / "runs"))
    e = DatasetEntry.open(cache, entry)
    tok = torch.from_numpy(e.features(handle.features_id)["tokens"][:][rows, 0].astype(np.float32))
    with torch.no_grad():
        rec = to_uint8(handle.model.decode(handle.model.encode(tok).mode()))
    return psnr(e.images[:][rows], rec).mean


def test_recon_and_probe_subsets_take_every_class(folders):
    val = folders["val"]
    out = _ok("evaluate", "recon", "--run", "pk", "-n", "3", *_where(folders))
    recon = _report(folders, f"recon-{val}-n3")
    # val rows are 0 0 0 0 1 1 1 1 2 2 2 2: one of each class (rows 0, 4, 8), not rows 0-2
    assert recon["subset"]["rule"] == "round-robin-per-class"
    assert recon["subset"]["per_class"] == {"0": 1, "1": 1, "2": 1}
    # (rel 1e-5: the decoder's batched convolutions round by batch shape)
    balanced = _recon_psnr(folders["cache"], val, [0, 4, 8])
    assert recon["psnr"] == pytest.approx(balanced, rel=1e-5)
    assert _recon_psnr(folders["cache"], val, [0, 1, 2]) != pytest.approx(balanced, rel=1e-3)
    assert "class-balanced over 3 classes" in " ".join(out.split())

    _ok("evaluate", "probe", "--run", "pk", "-n", "3", "--epochs", "2", *_where(folders))
    probe = _report(folders, f"probe-{val}-n3-epochs2")
    assert probe["n_eval"] == 3 and probe["n_train"] == 12 and probe["num_classes"] == 3
    assert probe["eval_subset"]["per_class"] == {"0": 1, "1": 1, "2": 1}
    assert probe["train_subset"]["per_class"] == {"0": 4, "1": 4, "2": 4}


def test_the_builtin_entry_keeps_its_first_n(folders):
    """Labels ``index % 10``: the round robin is the first N rows (`make demo` does not move)."""
    entry = "builtin-n24--val--32px"
    _ok("evaluate", "recon", "--run", "pk", "--entry", entry, "-n", "7", *_where(folders))
    recon = _report(folders, f"recon-{entry}-n7")
    assert recon["subset"]["per_class"] == {str(c): 1 for c in range(7)}
    first = _recon_psnr(folders["cache"], entry, list(range(7)))
    assert recon["psnr"] == pytest.approx(first, rel=1e-5)

    from repackctl.evaluate.selection import round_robin_indices

    labels = DatasetEntry.open(folders["cache"], entry).labels[:]
    assert np.array_equal(labels, np.arange(24) % 10)
    for n in (1, 7, 10, 13, 23):
        rows, _ = round_robin_indices(np.arange(24), labels, n)
        assert np.array_equal(rows, np.arange(n))


def test_reference_stats_of_num_n_cover_every_class(folders, tmp_path):
    from repackctl.evaluate.generative import cache_images_sha256, read_stats_bundle

    train = folders["train"]
    stats = ["evaluate", "stats", "--ref-cache", train, "--num", "6", "--extractor", "fd",
             "--stats-dir", str(tmp_path), "--cache", folders["cache"], "--device", "cpu",
             *FD_WEIGHTS]  # fmt: skip
    _ok(*stats)
    (path,) = tmp_path.glob("*.npz")
    meta = read_stats_bundle(path)["fd"].metadata
    # train rows are six of each class in turn: two of each (0 1, 6 7, 12 13), not rows 0-5
    assert meta["subset"]["per_class"] == {"0": 2, "1": 2, "2": 2}
    assert meta["subset_rule"] == "round-robin-per-class"  # in the key: old-rule files differ
    e = DatasetEntry.open(folders["cache"], train)
    rows = np.array([0, 1, 6, 7, 12, 13])
    assert meta["source_sha256"] == cache_images_sha256(e, e.images, e.done[:], rows)
    assert "reused" in " ".join(_ok(*stats).split())  # the same request reads the file


# --------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_finish_a_started_folder_and_score_like_one(
    tmp_path_factory, tmp_path, monkeypatch
):
    from support.stack import shared_stack  # extract → pack train → a tiny DiT run (shared)

    stack = shared_stack(tmp_path_factory)
    args = ["evaluate", "fid", str(Path(stack["runs"]) / "dit-tiny"), "-n", "4", "--device",
            "cpu", "--fd-method", "cholesky", "--stats-dir", str(tmp_path / "stats"),
            *FD_WEIGHTS]  # fmt: skip
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=stack["cache"], REPACKCTL_RUNS=stack["runs"])
    env |= {"REPACKCTL_SAMPLES": str(tmp_path / "two"), "REPACKCTL_SAMPLE__BATCH_SIZE": "1"}
    for name in ("REPACKCTL_CACHE", "REPACKCTL_RUNS", "REPACKCTL_SAMPLE__BATCH_SIZE"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "one"))
    with one_torch_thread():  # as the subprocesses run
        _ok(*args)
    (one,) = (tmp_path / "one").iterdir()
    fd_one = json.loads((one / "metrics.json").read_text())["metrics"]["fd"]

    # what one process leaves for the other under torchrun, or a killed call for its rerun:
    # the folder `sample` started with these settings, part of its images written
    folder = tmp_path / "two" / one.name
    kill_after_pngs(args, env, folder, pngs=1)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("0*.png")}
    assert 0 < len(before) < 4 and not (folder / "protocol.json").exists()

    code, _, err = start_two(["-m", "repackctl", *args], env).wait(240)
    assert code == 0, err[-3000:]
    assert "finishing the folder an earlier run had started" in err
    assert {p: folder.joinpath(p).stat().st_mtime_ns for p in before} == before  # kept
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert metrics["fd"] == pytest.approx(fd_one, rel=1e-6) and metrics["generated"]["n"] == 4

    # the same command again scores the finished folder (nothing sampled again)
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "two"))
    pngs = {p.name: p.stat().st_mtime_ns for p in folder.glob("0*.png")}
    with one_torch_thread():
        out = _ok(*args)
    assert "its newest samples folder is" in out and "sampled" not in out
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("0*.png")} == pngs
    again = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert again["fd"] == pytest.approx(metrics["fd"], rel=1e-12)
