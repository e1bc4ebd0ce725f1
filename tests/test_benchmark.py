"""`repackctl benchmark`: every sub-benchmark runs at the tiny size on the CPU and writes valid
JSON with its environment. No timing assertions: the figures are for people, not for CI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError

runner = CliRunner()
FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--no-compile",
        "--device", "cpu"]  # fmt: skip


def test_benchmark_all_tiny_writes_valid_json(tmp_path):
    out = tmp_path / "all.json"
    res = runner.invoke(app, ["benchmark", "all", *FAST, "--out", str(out),
                              "--workdir", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Compare ratios within this run" in res.output
    doc = json.loads(out.read_text())  # strict JSON: no NaN/inf
    results = {r["name"]: r for r in doc["results"]}
    assert set(results) == {"kernels", "cache", "extract", "train", "sample"}
    for name, r in results.items():
        assert r["size"] == "tiny"
        env = r["env"]
        for key in ("torch", "device", "cpu", "torch_threads", "git_revision", "python"):
            assert key in env, (name, key)
        assert env["device"] == "cpu" and env["gpu"] is None
        measured = [row for row in r["rows"] if row["median_s"] is not None]
        assert measured, name
        assert all(row["median_s"] > 0 for row in measured)
        # every group with a baseline gives the baseline ratio 1
        for row in r["rows"]:
            if row["baseline"] and row["median_s"] is not None:
                assert row["ratio"] == pytest.approx(1.0), (name, row["case"])
        assert r["params"]["repeats"] == 1 and r["params"]["warmup"] == 0

    kernels = {(row["group"], row["case"]): row for row in results["kernels"]["rows"]}
    assert {"attention", "rmsnorm", "rope", "modulate", "norm+modulate"} <= {g for g, _ in kernels}
    assert kernels[("fused-gpu", "Triton / CUDA kernels")]["note"].startswith("skipped: needs CUDA")
    assert any(c.startswith("sdpa:math") for _, c in kernels)
    compiled = [row for (g, c), row in kernels.items() if c.startswith("torch.compile")]
    assert compiled and all("disabled" in row["note"] for row in compiled)

    cache_cases = {row["case"] for row in results["cache"]["rows"]}
    assert {"npy memmap", "zarr chunk buffer (ours, training path)",
            "safetensors shards (LightningDiT)"} <= cache_cases  # fmt: skip
    train = next(row for row in results["train"]["rows"] if row["group"] == "train")
    assert train["extra"]["step_tflop"] > 0 and 0 < train["extra"]["mfu"]
    assert {row["group"] for row in results["sample"]["rows"]} == {"sampler", "cfg"}
    assert not list(tmp_path.glob("repackctl-bench-*"))  # scratch data removed


def test_single_benchmark_cli_and_library_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["benchmark", "cache", *FAST])
    assert res.exit_code == 0, res.output
    written = list((tmp_path / "benchmarks" / "results").glob("cache-*.json"))
    assert len(written) == 1  # the default path: benchmarks/results/<name>-<timestamp>.json
    doc = json.loads(written[0].read_text())
    assert doc["name"] == "cache" and doc["params"]["sample_shape"] == [2, 4, 8, 8]

    from repackctl.bench import BenchContext, run_benchmark

    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_benchmark("disk", BenchContext())
    with pytest.raises(ConfigError, match="unknown size"):
        BenchContext(size="huge")
    res = runner.invoke(app, ["benchmark", "cache", "--size", "huge"])
    assert res.exit_code != 0 and "Traceback" not in res.output
