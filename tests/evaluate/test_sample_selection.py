"""Which samples `repackctl evaluate fid` scores: a class-stratified `--samples N` subset, no
unfinished sample run, only the named checkpoint's samples, and reference statistics of a cache
entry keyed by its pixels.

Everything is made through the real commands at toy size: `extract` (patchpix, 32 px) → `pack
train` → `pack encode` → `train dit` (2 steps, a checkpoint after each) → `sample`. Scores are
FDs in the built-in encoder's space (``--fd-method cholesky``) against the built-in dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, subprocess_env
from PIL import Image
from support.caches import tiny_dit_stack
from support.kill import kill_after_pngs
from support.stack import FD_WEIGHTS, stack_env
from typer.testing import CliRunner

from repackctl.cache.store import list_entries
from repackctl.cli.app import app
from repackctl.errors import DataError
from repackctl.metrics.adm import write_samples_npz

runner = CliRunner()
SCORE = ["--ref", "builtin", "--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu"]
SCORE += FD_WEIGHTS


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """cache, runs: a tiny DiT run `dit` with checkpoints step-0000001 and step-0000002."""
    root = tiny_dit_stack(tmp_path_factory.mktemp("selection"))
    return {"cache": str(root / "cache"), "runs": str(root / "runs")}


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """The stack's cache and runs, a fresh samples root, one torch thread."""
    yield from stack_env(stack, tmp_path, monkeypatch)


def _ckpt(stack: dict[str, str], step: int) -> Path:
    return (Path(stack["runs"]) / "dit" / "checkpoints" / f"step-{step:07d}").resolve()


def _sample(*args: str) -> None:
    res = runner.invoke(app, ["sample", "-r", "dit", "--device", "cpu", *args])
    assert res.exit_code == 0, res.output


def _evaluate(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["evaluate", "fid", *args])
    return res.exit_code, res.output


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- defect 1
def test_a_sample_subset_takes_every_class_equally(env, tmp_path):
    classes = _doc(_ckpt(env, 2) / "state.json")["extra"]["num_classes"]
    assert classes >= 2
    folder = tmp_path / "balanced"
    _sample("-n", str(2 * classes), "--steps", "2", "--out", str(folder))
    with np.load(folder / "samples.npz") as z:
        images, labels = z["arr_0"], z["arr_1"]
    # the samples are stored in class order: the first `classes` of them miss half the classes
    assert len(np.unique(labels[:classes])) < classes
    code, out = _evaluate(str(folder), "--samples", str(classes), *SCORE,
                          "--out", str(tmp_path / "subset.json"))  # fmt: skip
    assert code == 0, out
    doc = _doc(tmp_path / "subset.json")
    card, subset = doc["protocol"], doc["protocol"]["sample_subset"]
    assert card["label_scheme"] == "balanced" and card["num_samples"] == classes
    assert subset["rule"] == "first-per-class" and subset["per_class"] == 1
    assert subset["num_classes"] == classes and subset["of"] == 2 * classes
    assert doc["metrics"]["generated"]["subset"] == subset
    assert doc["metrics"]["fd_detail"]["n_generated"] == classes

    # the score is exactly that of the first sample of each class, not of the first N samples
    def fd_of(idx: np.ndarray, name: str) -> float:
        path = write_samples_npz(tmp_path / f"{name}.npz", images[idx], labels[idx])
        code, out = _evaluate(str(path), *SCORE, "--out", str(tmp_path / f"{name}.json"))
        assert code == 0, out
        return _doc(tmp_path / f"{name}.json")["metrics"]["fd"]

    stratified = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)])
    fd = doc["metrics"]["fd"]
    assert fd == pytest.approx(fd_of(stratified, "stratified"), rel=1e-6, abs=1e-9)
    assert fd != pytest.approx(fd_of(np.arange(classes), "first"), rel=1e-3)


def test_a_subset_that_cannot_be_balanced_is_refused(env, tmp_path):
    classes = _doc(_ckpt(env, 2) / "state.json")["extra"]["num_classes"]
    folder = tmp_path / "balanced"
    _sample("-n", str(2 * classes), "--steps", "2", "--out", str(folder))
    odd = classes + 1
    code, out = _evaluate(str(folder), "--samples", str(odd), *SCORE)
    assert code == DataError.exit_code and "Traceback" not in out
    assert "Error:" in out and "Hint:" in out
    assert f"--samples {odd}" in out and f"{classes} classes" in out
    assert f"--samples {classes}" in out.split("Hint:")[1]
    assert not (folder / "metrics.json").exists()


def test_asking_for_more_samples_than_a_folder_holds_hints_its_own_checkpoint(env, tmp_path):
    """The hint was `repackctl sample --num N`: the newest run, default settings."""
    folder = tmp_path / "few"
    _sample("-n", "4", "--steps", "2", "--out", str(folder))
    code, out = _evaluate(str(folder), "--samples", "40", *SCORE)
    out = " ".join(out.split())
    assert code == DataError.exit_code and f"--samples 40 asks for 40 samples of {folder}" in out
    assert "but it holds 4 samples" in out, out
    hint = out.split("Hint:")[1]
    assert f"--run {_ckpt(env, 2).parent.parent} --checkpoint step-0000002 --num 40" in hint
    assert "protocol.json records" in hint and "pass --samples 4 or fewer" in hint


# --------------------------------------------------------------------------- defect 2
def _killed_sample_run(env: dict[str, str], out: Path, cmd: list[str]) -> None:
    """`repackctl sample` killed (SIGKILL) once two of its PNGs are written."""
    kill_after_pngs(
        cmd,
        subprocess_env(out.parent, REPACKCTL_CACHE=env["cache"], REPACKCTL_RUNS=env["runs"]),
        out,
    )
    assert len(list(out.glob("0*.png"))) >= 2, "the sample run wrote nothing before the kill"
    assert not (out / "protocol.json").exists(), "the sample run finished before the kill"


@pytest.mark.slow
def test_an_unfinished_sample_run_is_refused_until_finished(env, tmp_path):
    partial = Path(env["samples"]) / "partial"
    cmd = ["sample", "-r", "dit", "-n", "24", "--steps", "60", "--batch-size", "1",
           "--device", "cpu", "--out", str(partial)]  # fmt: skip
    _killed_sample_run(env, partial, cmd)
    for source in ([], [str(partial)]):  # picked as the newest folder, and named
        code, out = _evaluate(*source, *SCORE)
        assert code == DataError.exit_code and "Traceback" not in out, out
        assert "not finished" in out and "Hint:" in out
        assert "rerun the same `repackctl sample`" in " ".join(out.split())
    assert not (partial / "metrics.json").exists()

    # the same images without the sampler's settings file are external samples: scored as such
    external = tmp_path / "external"
    external.mkdir()
    for png in partial.glob("0*.png"):
        shutil.copy(png, external / png.name)
    code, out = _evaluate(str(external), *SCORE)
    assert code == 0, out
    assert _doc(external / "metrics.json")["protocol"]["sampler"] == "external"

    # the hint works: the same command finishes the run, which is then scored with its card
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    code, out = _evaluate(*SCORE)
    assert code == 0, out
    card = _doc(partial / "metrics.json")["protocol"]
    assert card["sampler"] == "euler-ode" and card["num_samples"] == 24


# --------------------------------------------------------------------------- defect 3
def test_a_checkpoint_is_scored_on_its_own_samples(env, tmp_path):
    root = Path(env["samples"])
    first, last = _ckpt(env, 1), _ckpt(env, 2)
    _sample("-n", "4", "--steps", "2", "--checkpoint", first.name)
    _sample("-n", "4", "--steps", "2")
    (mine,) = root.glob("dit--step-0000001--*")
    (other,) = root.glob("dit--step-0000002--*")
    later = time.time() + 5
    os.utime(other / "protocol.json", (later, later))  # the other checkpoint's samples are newest
    code, out = _evaluate(str(first), *SCORE, "--out", str(tmp_path / "first.json"))
    assert code == 0, out
    card = _doc(tmp_path / "first.json")["protocol"]
    assert Path(card["checkpoint"]).resolve() == first
    assert card["checkpoint_sha256"] == _doc(mine / "protocol.json")["checkpoint_sha256"]
    # the run folder still means its newest samples folder
    code, out = _evaluate(str(first.parent.parent), *SCORE, "--out", str(tmp_path / "run.json"))
    assert code == 0, out
    assert Path(_doc(tmp_path / "run.json")["protocol"]["checkpoint"]).resolve() == last

    # a samples root holding only the other checkpoint's samples: refused, or sampled with -n
    alone = tmp_path / "alone"
    shutil.copytree(other, alone / other.name)
    code, out = _evaluate(str(first), "--samples-root", str(alone), *SCORE)
    assert code == DataError.exit_code and "no samples folder made from it" in out
    assert "--checkpoint step-0000001" in out
    code, out = _evaluate(str(first), "--samples-root", str(alone), "--samples", "4", *SCORE,
                          "--out", str(tmp_path / "sampled.json"))  # fmt: skip
    assert code == 0, out
    assert "sampled 4 images" in out
    assert Path(_doc(tmp_path / "sampled.json")["protocol"]["checkpoint"]).resolve() == first


# --------------------------------------------------------------------------- defect 4
def _pngs(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_reference_statistics_of_a_cache_entry_follow_its_pixels(tmp_path):
    images = _pngs(tmp_path / "photos", seed=0)
    extract = ["extract", "-e", "patchpix", "--data", f"imagefolder:{images}", "--resolution",
               "32", "--chunk", "8", "--shard", "8"]  # fmt: skip
    assert runner.invoke(app, extract).exit_code == 0
    (entry,) = list_entries(str(tmp_path / "cache"))
    stats = ["evaluate", "stats", "--ref-cache", entry, "--extractor", "fd", "--device", "cpu",
             "--stats-dir", str(tmp_path / "stats"), *FD_WEIGHTS]  # fmt: skip
    with one_torch_thread():
        first = runner.invoke(app, stats)
        assert first.exit_code == 0 and "computed" in first.output, first.output
        again = runner.invoke(app, stats)
        assert again.exit_code == 0 and "reused (same content hash)" in again.output
        assert len(list((tmp_path / "stats").glob("*.npz"))) == 1
        # the entry removed and extracted again from other pixels (same names, same count)
        assert runner.invoke(app, ["cache", "rm", entry, "--yes"]).exit_code == 0
        _pngs(images, seed=1)
        assert runner.invoke(app, extract).exit_code == 0
        assert list_entries(str(tmp_path / "cache")) == [entry]
        changed = runner.invoke(app, stats)
        assert changed.exit_code == 0, changed.output
        assert "computed" in changed.output and "reused" not in changed.output
    files = sorted((tmp_path / "stats").glob("*.npz"))
    assert len(files) == 2
    hashes = set()
    for f in files:
        with np.load(f) as z:
            hashes.add(json.loads(str(z["metadata"]))["source_sha256"])
    assert len(hashes) == 2
