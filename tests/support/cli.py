"""Run `repackctl` in-process (Typer's runner), or as a real process, and check the outcome the
way users see it."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from repackctl.cli.app import app

runner = CliRunner()


def cli_ok(*args: str) -> str:
    """Run ``repackctl ARGS``; it must succeed without a traceback. Its output, rewrapped to
    single spaces (Rich wraps long lines)."""
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output, res.output
    return " ".join(res.output.split())


def cli_refused(code: int, *args: str) -> str:
    """Run ``repackctl ARGS``; it must exit with ``code`` and one ``Error:`` with a ``Hint:``, no
    traceback. Its output, rewrapped to single spaces."""
    res = runner.invoke(app, list(args))
    out = " ".join(res.output.split())
    assert res.exit_code == code, res.output
    assert "Traceback" not in out and "Error:" in out and "Hint:" in out, out
    return out


def proc_ok(args: list[str], env: dict[str, str]) -> str:
    """Run ``python -m repackctl ARGS`` as a real process with ``env``; it must succeed without a
    traceback. Its stdout and stderr, rewrapped to single spaces."""
    cmd = [sys.executable, "-m", "repackctl", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    return " ".join((res.stdout + res.stderr).split())


def raising_app(error: BaseException) -> typer.Typer:
    """A one-command app that raises ``error`` under the CLI's error handling
    (``handle_errors``): how a command meets an exception torch or a backend raises."""
    from repackctl.cli.common import handle_errors

    app = typer.Typer()

    @app.command()
    @handle_errors
    def go() -> None:
        raise error

    return app
