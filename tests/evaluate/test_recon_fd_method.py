"""`evaluate recon --fd-method`, as `evaluate fid` has it.

The rFID of `evaluate recon --inception-weights W` was always ADM's sqrtm (about 8 s per call
on a 2048-d singular covariance on a 2-core CPU); `--fd-method cholesky` is exact and much
faster with fewer samples than dimensions. The method is recorded in the report, and a rerun
with another method is another protocol: refused, the report that holds the rFID kept (as a
rerun with other Inception weights is). Without ``--inception-weights`` there is no rFID, so the
flag would be ignored: refused.

Real components: a cache, a pack run and a val entry made by the stack helpers, torch-fidelity's
Inception with seeded random weights, through Typer's CliRunner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import build_val_stack, stack_env
from typer.main import get_command

from repackctl.cli.app import app
from repackctl.errors import ConfigError

VAL = "builtin-n3--val--32px"
BASE = ["evaluate", "recon", "--run", "pack-tiny", "--device", "cpu"]
RECON = [*BASE, "-n", "3"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """extract (16 built-in train images) → pack-tiny → dit-tiny, plus a val entry of 3."""
    return build_val_stack(tmp_path_factory.mktemp("audit4-recon"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _report(env: dict[str, str]) -> Path:
    from repackctl.train.checkpoint import latest_checkpoint

    return latest_checkpoint(Path(env["runs"]) / "pack-tiny") / f"recon-{VAL}.json"


def _option(command: str) -> dict | None:
    """What ``--fd-method`` of ``evaluate COMMAND`` says in ``--help`` (None: no such option)."""
    evaluate = get_command(app).commands["evaluate"]
    for param in evaluate.commands[command].params:
        if "--fd-method" in param.opts:
            return {"help": param.help, "default": param.show_default}
    return None


def test_recon_takes_fid_s_fd_method_and_records_it(env, inception_file):
    assert _option("fid") is not None
    assert _option("recon") == _option("fid")  # the same option: help text, default sqrtm
    report = _report(env)
    weights = ["--inception-weights", str(inception_file)]
    out = cli_ok(*RECON, *weights, "--fd-method", "cholesky")
    doc = json.loads(report.read_text())
    assert doc["fd_method"] == "cholesky" and math.isfinite(doc["rfid"])
    assert f"{doc['rfid']:.2f} (cholesky)" in out  # the table says which rFID it is
    kept = report.read_bytes()
    # the default (sqrtm) is another protocol: refused before any work, the report kept
    out = cli_refused(ConfigError.exit_code, *RECON, *weights)
    assert "made with the cholesky Fréchet distance (this run: --fd-method sqrtm)" in out, out
    assert "pass --fd-method cholesky to recompute it" in out
    # without weights it would lose the rFID; the hint names the method that made it
    out = cli_refused(ConfigError.exit_code, *RECON)
    assert f"pass --inception-weights {inception_file} --fd-method cholesky" in out, out
    assert report.read_bytes() == kept
    # the same method again is the same result recomputed
    cli_ok(*RECON, *weights, "--fd-method", "cholesky", "--grid-images", "2")
    again = json.loads(report.read_text())
    assert again["rfid"] == pytest.approx(doc["rfid"]) and again["fd_method"] == "cholesky"
    # a report written before reports recorded the method holds a sqrtm rFID (all were)
    del again["fd_method"]
    report.write_text(json.dumps(again))
    out = cli_refused(ConfigError.exit_code, *RECON, *weights, "--fd-method", "cholesky")
    assert "made with the sqrtm Fréchet distance" in out, out


def test_an_fd_method_without_an_rfid_is_refused(env, monkeypatch):
    report = _report(env).with_name(f"recon-{VAL}-n2.json")
    recon = [*BASE, "-n", "2"]
    out = cli_refused(ConfigError.exit_code, *recon, "--fd-method", "cholesky")
    assert "--fd-method cholesky is given, but without --inception-weights" in out, out
    assert "ignored" in out and "drop --fd-method" in out
    assert not report.exists()
    # a method from the environment is every evaluate command's: not refused
    monkeypatch.setenv("REPACKCTL_EVALUATE__FD_METHOD", "cholesky")
    cli_ok(*recon)
    doc = json.loads(report.read_text())
    assert doc["rfid"] is None and doc["fd_method"] is None
