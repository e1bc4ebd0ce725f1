"""`--show-config` of a training command whose run exists shows the values the resume would
use (it showed a new run's defaults: lr 0.002 for a run that goes on at 3e-4), and a flag that
the resume would refuse is refused there too."""

from __future__ import annotations

from conftest import one_torch_thread, use_sandbox
from typer.testing import CliRunner

from repackctl.cli.app import app

runner = CliRunner()
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16"]


def _line(output: str, key: str) -> str:
    return next(ln for ln in output.splitlines() if ln.startswith(f"{key} "))


def test_show_config_of_an_existing_run_shows_what_it_resumes_with(tmp_path, monkeypatch):
    use_sandbox(monkeypatch, tmp_path)
    with one_torch_thread():
        assert runner.invoke(app, ["extract", *SRC]).exit_code == 0
        args = ["pack", "train", *SRC, "-c", "4", "--ch", "8", "--batch-size", "4"]
        res = runner.invoke(app, [*args, "--steps", "2", "--lr", "3e-4", "--name", "pk"])
        assert res.exit_code == 0, res.output
    shown = runner.invoke(app, ["pack", "train", *SRC, "--name", "pk", "--show-config"])
    assert shown.exit_code == 0, shown.output
    assert "runs/pk exists: the values it resumes with" in shown.output
    assert "0.0003" in _line(shown.output, "pack.lr") and "stored run config" in shown.output
    assert _line(shown.output, "pack.ch").split("=")[1].split("#")[0].strip() == "8"
    fresh = runner.invoke(app, ["pack", "train", *SRC, "--name", "other", "--show-config"])
    assert "exists" not in fresh.output and "0.002" in _line(fresh.output, "pack.lr")
    refused = runner.invoke(app, ["pack", "train", *SRC, "--name", "pk", "--lr", "1e-3",
                                  "--show-config"])  # fmt: skip
    assert refused.exit_code == 2 and "pack.lr: 0.0003 → 0.001" in refused.output
    # pack encode reads the run, it does not resume it: a plain listing
    enc = runner.invoke(app, ["pack", "encode", "--run", "pk", "--show-config"])
    assert enc.exit_code == 0 and "exists" not in enc.output
