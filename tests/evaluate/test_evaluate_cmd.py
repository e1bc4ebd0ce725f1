"""`repackctl evaluate fid | stats` end to end, offline.

The Inception path runs on a randomly initialised torch-fidelity Inception saved to a file and
passed with ``--inception-weights`` (the real loading path; see tests/metrics/test_metrics.py). FDs use
``--fd-method cholesky``: ADM's sqrtm on 2048-d features takes ~13 s per call on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.stack import FD_WEIGHTS
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import DataError, WeightsError
from repackctl.files import sha256_file
from repackctl.metrics.frechet import sha256_path

runner = CliRunner()
# the built-in encoder's shipped weights are made by scripts/make_builtin_encoder.py; until they
# exist in this checkout, the FD tests use its seeded random weights through the same path


def _builtin_pngs(folder: Path, n: int, split: str, res: int = 32) -> Path:
    from repackctl.data.builtin import BuiltinSource

    folder.mkdir(parents=True, exist_ok=True)
    src = BuiltinSource(split=split, num=n, seed=1)
    for i in range(n):
        Image.fromarray(src.load(i, res)).save(folder / f"{i:06d}.png")
    return folder


def _samples_with_protocol(tmp_path: Path, n: int = 12) -> tuple[Path, Path]:
    """A samples folder as `repackctl sample` writes it: PNGs + protocol.json naming a checkpoint."""
    ckpt = tmp_path / "runs" / "dit" / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    (ckpt / "ema.safetensors").write_bytes(b"ema weights")
    (ckpt / "state.json").write_text("{}")
    samples = _builtin_pngs(tmp_path / "samples" / "dit--step-0000010--euler-8--cfg1.5--seed0", n,
                            "train")  # fmt: skip
    protocol = dict(
        sampler="euler-ode", steps=8, nfe=16, cfg_scale=1.5, cfg_interval=[0.0, 1.0],
        cfg_legacy_channels=0, shift=1.0, label_scheme="balanced", seed=0, precision="fp32",
        checkpoint=str(ckpt), checkpoint_sha256=sha256_path(ckpt),
    )  # fmt: skip
    (samples / "protocol.json").write_text(json.dumps(protocol))
    return samples, ckpt


@pytest.mark.slow
def test_fid_end_to_end_on_a_random_inception_file(tmp_path, inception_file):
    from repackctl.evaluate.generative import folder_sha256
    from repackctl.metrics.protocol import ProtocolCard, verify_card_files

    samples, ckpt = _samples_with_protocol(tmp_path, n=5)
    ref = tmp_path / "ref" / "cls"
    _builtin_pngs(ref, 4, "val")  # PRC needs k + 1 = 4; Inception is ~0.5 s/img on 2 cores
    res = runner.invoke(
        app,
        ["evaluate", "fid", str(samples), "--ref", str(ref.parent), "--metrics",
         "fid,sfid,kid,prc", "--inception-weights", str(inception_file), "--fd-method",
         "cholesky", "--device", "cpu", "--batch-size", "9"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "using all 5 samples" in res.output and "FID" in res.output
    doc = json.loads((samples / "metrics.json").read_text())
    m, card = doc["metrics"], doc["protocol"]
    for key in (
        "fid",
        "sfid",
        "kid_mean",
        "precision",
        "recall",
    ):  # IS: tests/metrics/test_metrics.py
        assert math.isfinite(m[key]), key
    assert m["n_generated"] == 5 and m["n_reference"] == 4
    assert {f.name for f in dataclasses.fields(ProtocolCard)} <= set(card)
    assert all(card[k] not in (None, "") for k in card if k != "git_revision")
    assert card["sampler"] == "euler-ode" and card["steps"] == 8 and card["num_samples"] == 5
    # every hash on the card is the hash of the file it names
    verify_card_files(card, checkpoint=ckpt, feature_extractor=inception_file)
    assert card["feature_extractor_sha256"] == sha256_file(inception_file)
    files = sorted((ref.parent / "cls").glob("*.png"))
    assert card["reference_sha256"] == folder_sha256(files, ref.parent)
    assert m["generated"]["sha256"] == folder_sha256(sorted(samples.glob("*.png")), samples)


def test_missing_inception_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    samples = _builtin_pngs(tmp_path / "s", 4, "train")
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--ref", str(samples),
                              "--metrics", "fid", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == WeightsError.exit_code
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    assert "--inception-weights" in res.output and "weights-inception-2015-12-05" in res.output
    assert not (samples / "metrics.json").exists()


def test_samples_count_is_checked_and_exactly_n_are_used(tmp_path):
    samples = _builtin_pngs(tmp_path / "s", 10, "train")
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--samples", "50", "--ref",
                              "builtin", "--device", "cpu", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == DataError.exit_code and "Traceback" not in res.output
    assert (
        "--samples 50" in res.output
        and "holds 10 samples" in " ".join(res.output.split())
        and "Hint:" in res.output
    )
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "-n", "8", "--ref", "builtin",
                              "--device", "cpu", "--fd-method", "cholesky", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "using exactly 8 of the 10 samples" in res.output
    subset = samples / "metrics-n8.json"  # a subset's scores never take the whole set's file
    doc = json.loads(subset.read_text())
    assert doc["protocol"]["num_samples"] == 8 and doc["metrics"]["fd_detail"]["n_generated"] == 8
    assert not (samples / "metrics.json").exists()
    before = subset.read_bytes()
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--ref", "builtin", "--device",
                              "cpu", "--fd-method", "cholesky", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((samples / "metrics.json").read_text())
    assert doc["metrics"]["fd_detail"]["n_generated"] == 10 and subset.read_bytes() == before


def test_encoder_fd_is_the_default_for_builtin_data_without_inception(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-inception-here"))
    root = tmp_path / "samples"
    older = _builtin_pngs(root / "older", 6, "train")
    newest = _builtin_pngs(root / "newest", 12, "train")
    (newest / "protocol.json").write_text(json.dumps({"dataset": "builtin"}))
    res = runner.invoke(app, ["evaluate", "fid", "--samples-root", str(root), "--device", "cpu",
                              "--fd-method", "cholesky", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "newest samples folder" in res.output and "builtin" in res.output
    assert not (older / "metrics.json").exists()
    doc = json.loads((newest / "metrics.json").read_text())
    assert doc["metrics"]["metrics"] == ["fd"] and doc["metrics"]["fd"] > 0
    assert doc["metrics"]["fd_detail"]["encoder"]["id"] == "builtin"
    assert "fid" not in doc["metrics"]
    # same samples against themselves: the distance is ~0, so the number means something
    res = runner.invoke(app, ["evaluate", "fid", str(newest), "--ref", str(newest), "--out",
                              str(tmp_path / "self.json"), "--metrics", "fd", "--device", "cpu",
                              "--fd-method", "cholesky", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    same = json.loads((tmp_path / "self.json").read_text())["metrics"]["fd"]
    assert abs(same) < 1e-6 * max(1.0, doc["metrics"]["fd"])


def test_stats_are_cached_by_content_hash(tmp_path):
    from repackctl.evaluate.generative import read_stats_bundle

    folder = _builtin_pngs(tmp_path / "ref", 8, "val")
    args = ["evaluate", "stats", str(folder), "--extractor", "fd", "--resolution", "32",
            "--device", "cpu", "--stats-dir", str(tmp_path / "stats"), *FD_WEIGHTS]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "computed" in first.output
    files = list((tmp_path / "stats").glob("*.npz"))
    assert len(files) == 1
    before = files[0].stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused (same content hash)" in second.output
    assert files[0].stat().st_mtime_ns == before
    stats = read_stats_bundle(files[0])["fd"]
    assert stats.n == 8 and stats.metadata["source_kind"] == "image-folder"
    # other content → another file
    arr = np.asarray(Image.open(folder / "000000.png")).copy()
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(folder / "000000.png")
    third = runner.invoke(app, args)
    assert third.exit_code == 0 and "computed" in third.output
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 2


def test_bad_reference_path_is_an_error_with_a_hint(tmp_path):
    samples = _builtin_pngs(tmp_path / "s", 4, "train")
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--ref",
                              str(tmp_path / "missing.npz"), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == DataError.exit_code
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    assert "VIRTUAL_imagenet256_labeled.npz" in res.output
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--ref", str(junk)])
    assert res.exit_code == DataError.exit_code and "Traceback" not in res.output


def test_a_dit_checkpoint_is_sampled_first_then_scored(tmp_path_factory, tmp_path):
    from support.stack import shared_stack  # extract → pack train → a tiny DiT run (shared)

    stack = shared_stack(tmp_path_factory)
    run = Path(stack["runs"]) / "dit-tiny"
    res = runner.invoke(app, ["evaluate", "fid", str(run), "--samples", "4", "--cache",
                              stack["cache"], "--runs", stack["runs"], "--samples-root",
                              str(tmp_path / "samples"), "--device", "cpu", "--fd-method",
                              "cholesky", *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "sampled 4 images" in res.output and "using exactly 4 of the 4" in res.output
    (folder,) = [p for p in (tmp_path / "samples").iterdir() if p.is_dir()]
    doc = json.loads((folder / "metrics.json").read_text())
    card = doc["protocol"]
    assert card["num_samples"] == 4 and card["sampler"] != "external"
    assert card["checkpoint"].endswith("step-0000005")
    # the reference defaults to the cache entry the DiT was trained on: built-in data → FD
    assert card["reference_file"].startswith("cache:builtin")
    assert doc["metrics"]["metrics"] == ["fd"] and math.isfinite(doc["metrics"]["fd"])


def test_a_reference_from_another_protocol_is_refused_unless_forced(tmp_path):
    """Statistics made at 32 px do not score 64-px samples silently (issue: FD 148.44 vs 148.15)."""
    ref32 = _builtin_pngs(tmp_path / "ref", 8, "val", res=32)
    stats = ["evaluate", "stats", str(ref32), "--extractor", "fd", "--resolution", "32",
             "--device", "cpu", "--stats-dir", str(tmp_path / "stats"), *FD_WEIGHTS]  # fmt: skip
    assert runner.invoke(app, stats).exit_code == 0
    (stats_file,) = (tmp_path / "stats").glob("*.npz")
    samples64 = _builtin_pngs(tmp_path / "s64", 8, "train", res=64)
    args = ["evaluate", "fid", str(samples64), "--ref", str(stats_file), "--metrics", "fd",
            "--device", "cpu", "--fd-method", "cholesky", *FD_WEIGHTS]  # fmt: skip
    refused = runner.invoke(app, args)
    assert refused.exit_code != 0 and "another protocol" in refused.output
    assert "resolution: reference 32, samples 64" in refused.output
    assert "--force-reference" in refused.output and "Traceback" not in refused.output
    forced = runner.invoke(app, [*args, "--force-reference"])
    assert forced.exit_code == 0, forced.output
    assert "Warning: reference protocol differs (resolution" in forced.output  # not a "note:"
    assert "note: Warning" not in forced.output and "warning:" not in forced.output
    card = json.loads((samples64 / "metrics.json").read_text())["protocol"]
    assert "resolution: reference 32, samples 64" in card["reference_protocol_differences"]


def test_a_run_folder_resolves_to_its_newest_samples_folder(tmp_path):
    run = tmp_path / "runs" / "dit"
    (run / "checkpoints").mkdir(parents=True)
    (run / "curves.png").write_bytes(b"not a sample")
    root = tmp_path / "samples"
    res = runner.invoke(app, ["evaluate", "fid", str(run), "--samples-root", str(root),
                              "--metrics", "fd", "--device", "cpu", *FD_WEIGHTS])  # fmt: skip
    assert (
        res.exit_code != 0
        and "no samples folder" in res.output
        and "repackctl sample" in res.output
    )
    _builtin_pngs(root / "dit--step-0000010--euler-8--cfg1.5--seed0", 6, "train")
    newest = _builtin_pngs(root / "dit--step-0000020--euler-8--cfg1.5--seed0", 6, "train")
    (newest / "protocol.json").write_text(json.dumps({"dataset": "builtin"}))
    res = runner.invoke(app, ["evaluate", "fid", str(run), "--samples-root", str(root),
                              "--metrics", "fd", "--device", "cpu", "--fd-method", "cholesky",
                              *FD_WEIGHTS])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "its newest samples folder" in res.output and (newest / "metrics.json").is_file()


def test_missing_inception_hint_gives_the_command_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "none"))
    samples = _builtin_pngs(tmp_path / "s", 4, "train")
    res = runner.invoke(app, ["evaluate", "fid", str(samples), "--ref", str(samples),
                              "--metrics", "fid", "--device", "cpu"])  # fmt: skip
    assert res.exit_code != 0 and "--metrics fd" in res.output
