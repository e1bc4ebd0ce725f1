"""Three defects of `evaluate` found by an audit, end to end on a real cache, pack run and DiT.

1. `evaluate probe -n N` with N at least the held-out entry's size scores the whole entry but
   trains on 4N of the training entry: it was written as ``probe-<entry>.json``, the whole
   split's name, replacing the table trained on every training image.
2. A samples folder given as a reference (`evaluate stats FOLDER`, `evaluate fid --ref FOLDER`)
   counted its ``grid.png``, the preview grid of several samples, as one more image.
3. ``--fd-encoder`` / ``--fd-weights`` where no chosen metric is ``fd`` (``evaluate fid
   --metrics fid``, ``evaluate stats --extractor inception``) were ignored without a word.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import build_val_stack, stack_env

from repackctl.errors import ConfigError
from repackctl.evaluate.generative import folder_sha256
from repackctl.metrics.frechet import read_stats_npz

SAMPLE = ["sample", "-r", "dit-tiny", "-n", "6", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """extract (16 built-in train images) → pack-tiny → dit-tiny, plus a built-in val entry of
    3 images (so that `probe -n 3` keeps all of it and trains on 12 of the 16)."""
    return build_val_stack(tmp_path_factory.mktemp("audit-stack"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _sampled(env: dict[str, str]) -> Path:
    cli_ok(*SAMPLE)
    (folder,) = Path(env["samples"]).iterdir()
    assert (folder / "grid.png").is_file()
    return folder


def test_a_probe_trained_on_a_subset_keeps_the_whole_splits_table(env):
    from repackctl.train.checkpoint import latest_checkpoint

    val = "builtin-n3--val--32px"
    probe = ["evaluate", "probe", "--run", "pack-tiny", "--entry", val, "--epochs", "2"]
    ckpt = latest_checkpoint(Path(env["runs"]) / "pack-tiny")
    whole = ckpt / f"probe-{val}-epochs2.json"
    cli_ok(*probe, "--device", "cpu")
    before = whole.read_bytes()
    assert json.loads(before)["n_train"] == 16
    cli_ok(*probe, "-n", "3", "--device", "cpu")  # all 3 held-out images, 12 training ones
    assert whole.read_bytes() == before  # the whole split's table is kept
    subset = json.loads((ckpt / f"probe-{val}-n3-epochs2.json").read_text())
    assert subset["n_eval"] == 3 and subset["n_train"] == 12
    assert subset["train_subset"]["rule"] != "all" and subset["eval_subset"]["rule"] == "all"


def test_a_samples_folder_as_reference_is_its_samples_not_its_grid(env, tmp_path):
    folder = _sampled(env)
    pngs = [folder / f"{i:06d}.png" for i in range(6)]
    external = tmp_path / "copied"  # the same PNGs and grid without the card
    external.mkdir()
    for p in [*pngs, folder / "grid.png"]:
        shutil.copy(p, external / p.name)
    stats = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
    for source, files in ((folder, pngs), (external, [external / p.name for p in pngs])):
        sdir = tmp_path / f"stats-{source.name}"
        out = cli_ok(*stats, str(source), "--stats-dir", str(sdir))
        (path,) = sdir.glob("*.npz")
        _, meta = read_stats_npz(path)
        assert meta["n"] == 6, out  # 6 samples, not 7 images
        assert meta["source_sha256"] == folder_sha256(files, source)


def test_fd_encoder_settings_are_refused_where_no_metric_uses_them(env, inception_file, tmp_path):
    folder = _sampled(env)
    inception = ["--inception-weights", str(inception_file), "--device", "cpu"]
    fid = ["evaluate", "fid", str(folder), "--ref", "builtin", "--metrics", "fid", *inception]
    for flag in (["--fd-weights", "random"], ["--fd-encoder", "dinov3"]):
        out = cli_refused(ConfigError.exit_code, *fid, "--fd-method", "cholesky", *flag)
        assert f"evaluate.{flag[0][2:].replace('-', '_')} ({flag[1]})" in out
        assert "ignored" in out and "--metrics" in out
        assert not (folder / "metrics.json").exists()
    sdir = tmp_path / "stats"
    stats = ["evaluate", "stats", "builtin", "--num", "2", "--resolution", "32", *inception]
    out = cli_refused(ConfigError.exit_code, *stats, "--stats-dir", str(sdir), "--fd-encoder",
                      "dinov3")  # fmt: skip
    assert "evaluate.fd_encoder (dinov3)" in out and "--extractor fd" in out
    assert not sdir.exists()  # refused before anything was computed
