"""`evaluate fid --metrics kid,prc|is --fd-method M` refuses ``--fd-method``: none of those
metrics is a Fréchet distance, so the flag changed nothing, yet the card said "cholesky Fréchet
distance", and the same scores recomputed without the flag were then refused as "another
protocol" (after scoring).

Real components: an external samples .npz in tmp_path, torch-fidelity's Inception with seeded
random weights (``inception_file``), the built-in encoder's FD on the CPU, Typer's CliRunner.

``--ref FILE|builtin --stats-dir D --cache C`` is refused the same way (the
reference is not read from C and its statistics go to D; a cache from the environment is every
command's and is taken), and an ``fd_method`` from the environment is named on the card and in
the scores only where a Fréchet distance was computed, so KID/IS-only scores recomputed without
it replace the file rather than being refused as another protocol.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _external(tmp_path, n: int):
    """``n`` external 32 px samples (seeded random pixels) in ``tmp_path/gen/images.npz``."""
    path = tmp_path / "gen" / "images.npz"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    np.savez(path, arr_0=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    return path


@pytest.fixture
def samples(tmp_path):
    """10 external 32 px samples (IS takes 10 splits: 10 images at least)."""
    return _external(tmp_path, 10)


@pytest.fixture
def pair(tmp_path):
    """2 external 32 px samples, the fewest KID and FID score (each image and its reference
    image go through Inception on the CPU: the cost of a KID/FID test is its image count)."""
    return _external(tmp_path, 2)


@pytest.mark.parametrize("metrics", ["kid,prc", "is"])
def test_an_fd_method_flag_without_a_frechet_metric_is_refused(
    samples, tmp_path, inception_file, metrics
):
    out_file = tmp_path / "m.json"
    fid = ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", metrics]
    fid += ["--inception-weights", str(inception_file), "--device", "cpu", "--out", str(out_file)]
    out = cli_refused(ConfigError.exit_code, *fid, "--fd-method", "cholesky")
    assert "--fd-method cholesky is given, but the metrics" in out, out
    assert "hold no Fréchet distance: it would be ignored" in out and "drop --fd-method" in out
    assert not out_file.exists()  # refused before anything was scored


def test_an_fd_method_that_is_used_or_from_the_environment_is_taken(
    samples, tmp_path, inception_file, monkeypatch
):
    out_file = tmp_path / "fd.json"
    fd = ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "fd", "--device"]
    cli_ok(*fd, "cpu", *FD_WEIGHTS, "--fd-method", "cholesky", "--out", str(out_file))
    assert json.loads(out_file.read_text())["metrics"]["fd_detail"]["fd_method"] == "cholesky"
    monkeypatch.setenv("REPACKCTL_EVALUATE__FD_METHOD", "cholesky")  # every evaluation's
    is_only = ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "is"]
    cli_ok(*is_only, "--inception-weights", str(inception_file), "--device", "cpu")


def test_a_cache_flag_with_a_ref_and_a_stats_dir_is_refused(samples, tmp_path, monkeypatch):
    sdir, other, out_file = tmp_path / "stats", tmp_path / "other-cache", tmp_path / "m.json"
    fid = ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "fd"]
    fid += ["--device", "cpu", *FD_WEIGHTS, "--out", str(out_file)]
    out = cli_refused(ConfigError.exit_code, *fid, "--stats-dir", str(sdir), "--cache", str(other))
    assert f"--cache {other} is given, but the reference --ref builtin is not read" in out, out
    assert f"--stats-dir {sdir}: it would be ignored; nothing was scored" in out
    assert "drop --cache" in out and "--ref-cache ENTRY" in out
    assert not out_file.exists() and not sdir.exists()  # refused before anything was scored
    assert not (tmp_path / "other-cache-reference-stats").exists()
    # without --stats-dir the flag decides where the reference statistics are kept: taken
    cli_ok(*fid, "--cache", str(other))
    assert len(list((tmp_path / "other-cache-reference-stats").glob("*.npz"))) == 1
    # a cache from the environment is every command's: not refused
    monkeypatch.setenv("REPACKCTL_CACHE", str(other))
    out_file.unlink()
    cli_ok(*fid, "--stats-dir", str(sdir))
    assert len(list(sdir.glob("*.npz"))) == 1 and out_file.is_file()


def _card(path):
    doc = json.loads(path.read_text())
    return doc["metrics"], doc["protocol"]


@pytest.mark.parametrize("metrics", ["kid", "is"])
def test_an_fd_method_from_the_environment_is_not_named_where_no_fd_was_computed(
    tmp_path, inception_file, monkeypatch, metrics
):
    out_file = tmp_path / "m.json"
    samples = _external(tmp_path, 10 if metrics == "is" else 2)  # IS: 10 splits
    fid = ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", metrics]
    fid += ["--inception-weights", str(inception_file), "--device", "cpu", "--out", str(out_file)]
    monkeypatch.setenv("REPACKCTL_EVALUATE__FD_METHOD", "cholesky")
    cli_ok(*fid)
    scores, card = _card(out_file)
    assert "Fréchet" not in card["evaluator"] and "cholesky" not in card["evaluator"], card
    assert "fd_method" not in scores and "cholesky" not in out_file.read_text()
    # the same scores without the setting: the same result recomputed, it replaces the file
    monkeypatch.delenv("REPACKCTL_EVALUATE__FD_METHOD")
    cli_ok(*fid)
    assert _card(out_file)[1]["evaluator"] == card["evaluator"]


def test_an_fd_method_from_the_environment_is_named_where_fid_was_computed(
    pair, tmp_path, inception_file, monkeypatch
):
    out_file = tmp_path / "m.json"
    fid = ["evaluate", "fid", str(pair), "--ref", "builtin", "--metrics", "fid,kid"]
    fid += ["--inception-weights", str(inception_file), "--device", "cpu", "--out", str(out_file)]
    monkeypatch.setenv("REPACKCTL_EVALUATE__FD_METHOD", "cholesky")
    cli_ok(*fid)
    scores, card = _card(out_file)
    assert "cholesky Fréchet distance" in card["evaluator"] and scores["fd_method"] == "cholesky"


def test_an_older_kid_card_naming_an_fd_method_is_replaced_by_the_same_scores(
    pair, tmp_path, inception_file
):
    out_file = tmp_path / "m.json"
    fid = ["evaluate", "fid", str(pair), "--ref", "builtin", "--metrics", "kid"]
    fid += ["--inception-weights", str(inception_file), "--device", "cpu", "--out", str(out_file)]
    cli_ok(*fid)
    doc = json.loads(out_file.read_text())
    new_evaluator = doc["protocol"]["evaluator"]
    # as an earlier version wrote it: the evaluator named the algorithm of no computed FD
    doc["protocol"]["evaluator"] = new_evaluator[:-1] + ", sqrtm Fréchet distance)"
    out_file.write_text(json.dumps(doc))
    cli_ok(*fid)
    assert _card(out_file)[1]["evaluator"] == new_evaluator
