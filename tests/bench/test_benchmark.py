"""`repackctl benchmark`: every sub-benchmark runs at the tiny size on the CPU and writes valid
JSON with its environment. No timing assertions: the figures are for people, not for CI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
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


def test_benchmark_train_times_the_mmdit_step_on_cached_text_features(tmp_path):
    out = tmp_path / "t2i.json"
    res = runner.invoke(app, ["benchmark", "train", *FAST, "--model", "mmdit-tiny",
                              "--out", str(out), "--workdir", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    params = doc["params"]
    # the step of `train t2i` (T2ITask + Trainer), fed precomputed caption features
    assert params["model"] == "mmdit-tiny" and params["cond"] == "text"
    assert params["task"] == "T2ITask" and params["repa"] is True
    assert (params["text_len"], params["text_dim"]) == (8, 32)
    rows = {row["case"]: row for row in doc["rows"]}
    train = rows["mmdit-tiny Trainer.step (batch 4)"]
    assert train["extra"]["step_tflop"] > 0 and 0 < train["extra"]["mfu"]
    assert train["per_s"] > 0 and train["unit"] == "sample"
    assert rows["bare step (task + AdamW, no engine)"]["median_s"] > 0

    from repackctl.bench.train import SHAPES, SyntheticCaptionedLatents

    data = SyntheticCaptionedLatents(SHAPES["tiny"], tokens=64, n=4)
    rngs = [np.random.default_rng(i) for i in range(4)]
    batch = data.read(np.arange(4), rngs, with_tokens=True)
    assert batch["text_tokens"].shape == (4, 8, 32) and batch["text_mask"].dtype == torch.bool
    assert batch["text_mask"][:, 0].all()  # every caption has at least one real token

    res = runner.invoke(app, ["benchmark", "train", *FAST, "--model", "mmdit-nope"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "mmdit-nope" in res.output


def test_each_benchmark_offers_only_the_options_it_uses(tmp_path):
    """`benchmark cache --encoder x --model y` ran and recorded neither: an option a benchmark
    does not read is no option of it; `all` takes every one."""
    for name, unused in (("cache", "--encoder"), ("sample", "--model"), ("kernels", "--workdir")):
        res = runner.invoke(app, ["benchmark", name, *FAST, unused, "x"])
        assert res.exit_code == 2 and "No such option" in res.output, (name, res.output)
        assert not list(tmp_path.glob("*.json"))
    for name, used in (("extract", "--encoder"), ("train", "--model"), ("all", "--workdir")):
        assert used in runner.invoke(app, ["benchmark", name, "--help"]).output, name
