"""`benchmark --threads` has an upper bound (``MAX_THREADS``, 1024): `--threads 100000` was
accepted and the benchmark died with a traceback (``can't start new thread``) and a segfault
(audit C, finding 5). A fixed bound, not the machine's CPU count: a config valid on one
machine is valid on another."""

from __future__ import annotations

from support.cli import cli_ok, cli_refused, runner

from repackctl.cli.app import app

MAX_THREADS = 1024  # repackctl.settings.benchmark.MAX_THREADS, as the help states it

SHOW = ["benchmark", "cache", "--size", "tiny", "--show-config"]


def test_threads_above_the_bound_are_refused_naming_the_source():
    out = cli_refused(2, *SHOW, "--threads", "100000")
    assert "benchmark.threads" in out and "(from flag)" in out and str(MAX_THREADS) in out, out
    res = runner.invoke(app, SHOW, env={"REPACKCTL_BENCHMARK__THREADS": str(MAX_THREADS + 1)})
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Error:" in out and "Traceback" not in out, out
    assert "benchmark.threads" in out and "env REPACKCTL_BENCHMARK__THREADS" in out, out
    assert f"benchmark.threads = {MAX_THREADS}" in cli_ok(*SHOW, "--threads", str(MAX_THREADS))
