"""`evaluate fid --metrics kid,prc|is --fd-method M` refuses ``--fd-method``: none of those
metrics is a Fréchet distance, so the flag changed nothing, yet the card said "cholesky Fréchet
distance", and the same scores recomputed without the flag were then refused as "another
protocol" (after scoring).

Real components: an external samples .npz in tmp_path, torch-fidelity's Inception with seeded
random weights (``inception_file``), the built-in encoder's FD on the CPU, Typer's CliRunner.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

from repackctl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture
def samples(tmp_path):
    """10 external 32 px samples (IS takes 10 splits: 10 images at least)."""
    path = tmp_path / "gen" / "images.npz"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    np.savez(path, arr_0=rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8))
    return path


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
