"""Refined folders are tied to the samples they refine, and a refiner of another pack model is
refused before its triplets land in the cache.

A real toy stack, all through the CLI in-process: `extract` (patchpix, 32 px, 16 images) →
`pack train` (2 steps) → `pack encode` → `train dit` (tiny, depth 2, 2 steps) →
`refine train` (2 steps). Each test works on a private copy of the cache and runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, use_sandbox
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.train.checkpoint import list_checkpoints

runner = CliRunner()
PACK = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
PACK += ["--batch-size", "8", "--ch", "8", "-c", "4", "--disc-channels", "8", "--image-every", "0"]
DIT = ["train", "dit", "--pack-run", "pack", "--size", "tiny", "--depth", "2", "--steps", "2"]
DIT += ["--global-batch", "8", "--ckpt-every", "2", "--image-every", "0", "--name", "dit"]
REFINE = ["refine", "train", "--pack-run", "pack", "--name", "refine", "--batch-size", "4"]
REFINE += ["--base-channels", "8", "--disc-channels", "8", "--ckpt-every", "2"]
SAMPLE = ["sample", "--run", "dit", "-n", "4", "--steps", "2"]


def _cli(root: Path, *args: str) -> tuple[int, str]:
    """Run ``repackctl ARGS`` on the cache and runs under ``root``; (exit code, output)."""
    if args[:2] == ("refine", "apply"):
        flags = ["--runs", str(root / "runs"), "--device", "cpu"]
    elif args[0] == "extract":
        flags = ["--cache", str(root / "cache"), "--num-workers", "0"]
    else:
        flags = ["--cache", str(root / "cache"), "--runs", str(root / "runs"), "--device", "cpu"]
    res = runner.invoke(app, [*args, *flags])
    return res.exit_code, res.output


def _ok(root: Path, *args: str) -> str:
    code, out = _cli(root, *args)
    assert code == 0, out
    return out


def _refused(code: int, out: str, *words: str) -> None:
    assert code != 0, out
    assert "Traceback" not in out and "Error:" in out and "Hint:" in out, out
    for word in words:
        assert word in out, out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``cache`` and ``runs`` of the toy stack (pack run ``pack``, DiT ``dit``, refiner
    ``refine``)."""
    root = tmp_path_factory.mktemp("stale")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, root)
        ext = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
        _ok(root, *ext, "--chunk", "8", "--shard", "8")
        _ok(root, *PACK, "--name", "pack", "--steps", "2", "--ckpt-every", "2")
        _ok(root, "pack", "encode", "--run", "pack")
        _ok(root, *DIT)
        _ok(root, *REFINE, "--steps", "2")
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A private copy of the stack's cache and runs; samples go under it too."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    with one_torch_thread():
        yield tmp_path


def _mtimes(folder: Path, pattern: str = "*") -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))}


def _npz(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "samples.npz", allow_pickle=False) as z:
        return z["arr_0"], z["arr_1"]


def test_refine_train_records_the_latent_it_trained_on(base):
    from repackctl.train.checkpoint import read_state

    latest = list_checkpoints(base / "runs" / "refine")[-1]
    assert read_state(latest)["extra"]["latent_shape"] == [4, 4, 4]  # -c 4, 32 px / patch 8


def test_apply_to_samples_made_again_with_other_labels_never_answers_the_old_ones(work):
    x, out = work / "x", work / "x--refine"
    apply = ("refine", "apply", str(x), "--refiner", "refine")
    _ok(work, *SAMPLE, "--labels", "0", "--out", str(x))
    _ok(work, *apply)
    assert (_npz(out)[1] == 0).all()
    # the same samples assembled again (`sample` run again) are the same source: kept as they are
    _ok(work, *SAMPLE, "--labels", "0", "--out", str(x))
    pngs = _mtimes(out, "0*.png")
    _ok(work, *apply)
    assert _mtimes(out, "0*.png") == pngs  # none refined again
    kept, first = _mtimes(out), (out / "samples.npz").read_bytes()
    # new samples in the same folder: refused by name, nothing in the refined folder changed
    shutil.rmtree(x)
    _ok(work, *SAMPLE, "--labels", "5", "--out", str(x))
    code, text = _cli(work, *apply)
    _refused(code, text, str(out), "changed", "move")
    assert _mtimes(out) == kept and (out / "samples.npz").read_bytes() == first
    # moved away as the hint says: the new samples are refined, exactly as `sample --refiner`
    out.rename(work / "old-refined")
    _ok(work, *apply)
    images, labels = _npz(out)
    card = json.loads((out / "protocol.json").read_text())
    assert (labels == 5).all() and set(card["labels"]) == {5} and card["refined_from_sha256"]
    fused = work / "fused"
    _ok(work, *SAMPLE, "--labels", "5", "--refiner", "refine", "--out", str(fused))
    assert np.array_equal(images, _npz(fused)[0])


def test_apply_next_to_a_sample_refiner_folder_of_other_settings_is_refused(work):
    samples = work / "samples"
    _ok(work, *SAMPLE)
    (plain,) = list(samples.iterdir())
    refined = samples / f"{plain.name}--refine"
    # a `sample --refiner` folder of other settings where `refine apply` writes (`--shift` has
    # its own folder name, so it is put there with --out)
    _ok(work, *SAMPLE, "--shift", "3", "--refiner", "refine", "--out", str(refined))
    kept = _mtimes(refined)
    code, text = _cli(work, "refine", "apply", str(plain), "--refiner", "refine")
    _refused(code, text, str(refined), "shift", "move")
    assert _mtimes(refined) == kept
    assert json.loads((refined / "protocol.json").read_text())["shift"] == 3


def test_apply_next_to_a_sample_refiner_folder_of_the_same_samples_is_done(work):
    _ok(work, *SAMPLE)
    _ok(work, *SAMPLE, "--refiner", "refine")
    samples = work / "samples"
    (plain,) = [p for p in samples.iterdir() if not p.name.endswith("--refine")]
    refined = samples / f"{plain.name}--refine"
    kept = _mtimes(refined)
    _ok(work, "refine", "apply", str(plain), "--refiner", "refine")
    assert _mtimes(refined) == kept
    assert sorted(p.name for p in samples.iterdir()) == sorted([plain.name, refined.name])


def _triplet_groups(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.glob("*/triplets/*/"))


def test_refine_train_after_its_pack_was_retrained_writes_nothing(work):
    # a pack run of this copy of the cache (a pack run resumes on the cache it was trained on)
    pack2 = [*PACK, "--name", "pack2", "--ckpt-every", "2"]
    refine2 = [*REFINE[:2], "--pack-run", "pack2", "--name", "r2", *REFINE[6:]]
    _ok(work, *pack2, "--steps", "2")
    _ok(work, *refine2, "--steps", "2")
    cache, run = work / "cache", work / "runs" / "r2"
    groups = _triplet_groups(cache)
    assert len(groups) == 2 and any("--pack2-0000002-" in g for g in groups)
    _ok(work, "refine", "train", "--name", "r2", "--steps", "3")  # same pack model: resumes
    assert [p.name for p in list_checkpoints(run)][-1] == "step-0000003"
    assert _triplet_groups(cache) == groups
    _ok(work, *pack2, "--steps", "4")  # the pack run trains on
    ckpts = [p.name for p in list_checkpoints(run)]
    code, text = _cli(work, "refine", "train", "--name", "r2", "--steps", "4")
    _refused(code, text, "trained on pack model", "--name")
    assert "--pack2-0000002-" in text and "--pack2-0000004-" in text
    assert _triplet_groups(cache) == groups  # no triplets of the new pack model
    assert [p.name for p in list_checkpoints(run)] == ckpts
