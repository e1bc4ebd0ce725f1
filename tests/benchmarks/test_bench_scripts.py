"""The benchmark scripts refuse bad flags as the CLI does: one `Error:` line and a `Hint:`, a
non-zero exit, no traceback, before anything is timed or written (a negative step count once
printed negative times, `--steps 0` a ZeroDivisionError)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from repackctl.errors import ConfigError, script_main

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _main(script: str):
    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    ("script", "argv", "said"),
    [
        ("bench_train_step", ["--steps", "0"], "--steps 0 is below 1"),
        ("bench_train_step", ["--steps", "-1"], "--steps -1 is below 1"),
        ("bench_train_step", ["--batch", "0"], "--batch 0 is below 1"),
        ("bench_train_step", ["--latent", "32x8"], "--latent '32x8'"),
        ("bench_kernels", ["--repeats", "0"], "--repeats 0: nothing would be timed"),
        ("bench_kernels", ["--warmup", "-1"], "--warmup -1 is negative"),
        ("bench_cache", ["--repeats", "0"], "--repeats 0: nothing would be timed"),
    ],
)
def test_bad_flags_are_an_error_and_a_hint(script, argv, said, capsys) -> None:
    assert _main(script)(argv) == 2
    err = capsys.readouterr().err
    assert f"Error: {said}" in err and "Hint:" in err and "Traceback" not in err


@pytest.mark.parametrize("script", ["bench_kernels", "bench_cache"])
def test_a_file_of_the_users_at_out_is_refused_before_anything_runs(script, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    assert _main(script)(["--out", str(notes), "--size", "tiny"]) == 2
    captured = capsys.readouterr()
    assert "is not a `benchmark" in captured.err and captured.out == ""  # nothing was timed
    assert notes.read_text() == '{"mine": 1}'


def test_script_main_raises_with_repackctl_debug(monkeypatch) -> None:
    @script_main
    def main() -> None:
        raise ConfigError("bad", "fix it")

    assert main() == 2
    monkeypatch.setenv("REPACKCTL_DEBUG", "1")
    with pytest.raises(ConfigError):
        main()
