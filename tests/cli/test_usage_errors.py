"""A command line that does not parse is refused like every other bad input.

An unknown option, a missing argument, a value of the wrong type, an option without its value or
a mistyped command printed Click's boxed usage text ("Usage: … Try '… --help' for help." and a
framed message). It is now one ``Error:`` line and a ``Hint:`` naming the ``--help`` of the
command that was typed (also where Click's parser gives no context, as for an option missing its
value), exit code 2, nothing in a box. Real CLI calls, in-process and as a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.cli import cli_refused

CASES = [
    (["extract", "--bogus"], "No such option: --bogus", "repackctl extract"),
    (["train", "dit", "--bogus", "1"], "No such option: --bogus", "repackctl train dit"),
    (["train", "dit", "--steps", "abc"], "Invalid value for '--steps'", "repackctl train dit"),
    (["train", "dit", "--ema-decay"], "'--ema-decay' requires an argument", "repackctl train dit"),
    (["evaluate", "fid", "--ref"], "'--ref' requires an argument", "repackctl evaluate fid"),
    (["refine", "apply"], "Missing argument", "repackctl refine apply"),
    (["plugins", "ls"], "unexpected extra argument", "repackctl plugins"),
    (["evaluat"], "No such command 'evaluat'. Did you mean 'evaluate'?", "repackctl"),
    (["--bogus"], "No such option: --bogus", "repackctl"),
]


def _one_error(out: str, message: str, where: str) -> None:
    assert message in out, out
    assert f"Hint: `{where} --help` shows how to call it" in out, out
    assert "Usage:" not in out and "╭" not in out and "Try '" not in out, out


@pytest.mark.parametrize(("args", "message", "where"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_command_line_that_does_not_parse_is_one_error_with_a_hint(args, message, where):
    _one_error(cli_refused(2, *args), message, where)


def test_the_installed_command_refuses_it_on_stderr_in_two_lines(tmp_path):
    env = {**os.environ, "REPACKCTL_CACHE": str(tmp_path / "c"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "repackctl", "train", "dit", "--steps"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stdout == "", (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: "), res.stderr
    _one_error(res.stderr, "'--steps' requires an argument", "python -m repackctl train dit")
    assert not (tmp_path / "c").exists()


def test_no_arguments_still_print_the_help():
    from support.cli import runner

    from repackctl.cli.app import app

    res = runner.invoke(app, ["train"])
    assert "Usage: repackctl train" in res.output and "dit" in res.output, res.output
    assert "Error:" not in res.output
