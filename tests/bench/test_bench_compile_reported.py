"""`repackctl benchmark sample|train` report what they really ran: ``params.compile`` is true only
when something was compiled, whatever ``--compile`` asked (nothing is compiled on a CPU)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app

runner = CliRunner()
# --compile is the default; given explicitly so the request is unambiguous
FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--compile",
        "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("name", ["sample", "train"])
def test_compile_requested_on_cpu_is_reported_as_not_done(tmp_path, name):
    out = tmp_path / f"{name}.json"
    scratch = ["--workdir", str(tmp_path)] if name == "train" else []  # sample writes none
    res = runner.invoke(app, ["benchmark", name, *FAST, "--out", str(out), *scratch])
    assert res.exit_code == 0, res.output
    params = json.loads(out.read_text())["params"]
    assert params["compile"] is False, params
