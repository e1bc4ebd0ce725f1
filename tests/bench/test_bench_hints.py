"""The hints of `repackctl benchmark` name what the benchmark takes.

- `benchmark train --model nope` hinted "pick --arch/--size/--patch": the benchmark has no
  --arch, and its --size is the problem size (tiny/small/paper). `train t2i` has no --arch
  either. The hint now names --model (and --arch/--size/--patch for `train dit` only).
- `benchmark extract --encoder-weights /missing` hinted "or nothing for the shipped weights":
  in the benchmark nothing means random weights. The hint now names --encoder-weights and says
  that leaving it out means random weights. Refused before anything is timed or written.
"""

from __future__ import annotations

from support.cli import cli_refused

FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--no-compile",
        "--device", "cpu"]  # fmt: skip


def test_an_unknown_model_hint_names_the_benchmarks_flag(tmp_path) -> None:
    out = cli_refused(3, "benchmark", "train", *FAST, "--model", "nope", "--workdir",
                      str(tmp_path / "w"), "--out", str(tmp_path / "r.json"))  # fmt: skip
    hint = out.split("Hint:", 1)[1]
    assert "unknown model 'nope'" in out and "--model" in hint, out
    assert not hint.lstrip().startswith("pick --arch"), out
    assert not (tmp_path / "r.json").exists()


def test_a_missing_weights_file_hint_says_nothing_means_random(tmp_path) -> None:
    out = cli_refused(5, "benchmark", "extract", *FAST, "--encoder-weights",
                      str(tmp_path / "missing.safetensors"), "--workdir", str(tmp_path / "w"),
                      "--out", str(tmp_path / "r.json"))  # fmt: skip
    hint = out.split("Hint:", 1)[1]
    assert "weights file not found" in out and "missing.safetensors" in out, out
    assert "shipped" not in hint and "--encoder-weights" in hint and "random" in hint, out
    assert "benchmark extract (tiny)" not in out  # nothing was timed
    assert not (tmp_path / "r.json").exists()


def test_benchmark_all_refuses_them_before_anything_runs(tmp_path) -> None:
    """`benchmark all` met the unknown --model only at its train benchmark, after kernels, cache
    and extract had run: their results were lost with the refusal."""
    for flag, value in (("--model", "nope"), ("--encoder-weights", str(tmp_path / "no.pt"))):
        out = cli_refused(3 if flag == "--model" else 5, "benchmark", "all", *FAST, flag, value,
                          "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r.json"))  # fmt: skip
        assert "benchmark kernels (tiny)" not in out, out  # no benchmark ran first
        assert not (tmp_path / "r.json").exists()
