"""`repackctl benchmark cache|extract` record ``params.compile`` as what they ran: nothing is
compiled there (Zarr reads; the encoder eager), yet their results said ``"compile": true``
whenever --compile (the default) was asked, so a reader took the figures for compiled ones."""

from __future__ import annotations

import json

import pytest
from support.cli import cli_ok

# --compile is the default; given explicitly so the request is unambiguous
FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--compile",
        "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("name", ["cache", "extract"])
def test_compile_asked_of_a_benchmark_that_compiles_nothing_is_reported_off(tmp_path, name):
    out = tmp_path / f"{name}.json"
    cli_ok("benchmark", name, *FAST, "--out", str(out), "--workdir", str(tmp_path / "w"))
    params = json.loads(out.read_text())["params"]
    assert params["compile"] is False, params
