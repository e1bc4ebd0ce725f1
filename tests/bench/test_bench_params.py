"""Benchmark JSON records what was measured: every cache-read row reads the same bytes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from repackctl.cli.app import app

runner = CliRunner()
FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--no-compile",
        "--device", "cpu"]  # fmt: skip


def test_every_cache_read_row_reads_both_flips_of_every_sample(tmp_path):
    out = tmp_path / "cache.json"
    args = ["benchmark", "cache", *FAST, "--out", str(out), "--workdir", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    p = doc["params"]
    assert p["sample_shape"][0] == 2  # both flips in a sample
    want = p["batch"] * p["batches"] * p["sample_bytes"]
    rows = {row["case"]: row["extra"]["bytes_per_call"] for row in doc["rows"]}
    assert "safetensors shards (LightningDiT)" in rows and len(rows) == 6, rows
    assert all(got == want for got in rows.values()), (want, rows)
