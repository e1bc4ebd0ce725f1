"""The README stays true: every `repackctl` command it shows exists with the options it uses,
and the cheap ones run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def _command_lines() -> list[list[str]]:
    """Argument lists of every `repackctl …` line in the README's fenced code blocks."""
    text, out = README.read_text(), []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if (
                "repackctl " not in line
                or "`repackctl" in line
                or "python" in line.split("repackctl")[0]
            ):
                continue
            tail = line[line.index("repackctl ") + len("repackctl ") :]
            tail = tail.replace("$(which repackctl)", "")
            out.append(shlex.split(tail))
    return out


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(command path, the flags it uses) of one README line."""
    path = []
    for tok in argv:
        if tok.startswith("-") or "/" in tok or "." in tok or "<" in tok or "=" in tok:
            break
        path.append(tok)
    flags = [t.split("=")[0] for t in argv if t.startswith("-")]
    return path, flags


COMMANDS = _command_lines()


def test_the_readme_shows_many_commands():
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_readme_command_and_option_exists(argv):
    path, flags = _split(argv)
    while path:  # the longest prefix that is a command (the rest are positional arguments)
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
        if res.exit_code == 0 and "Usage:" in res.output:
            break
        path = path[:-1]
    assert path, f"no such command: {argv}"
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", res.output), (
            f"`repackctl {' '.join(argv)}`: {flag} is not an option of `{' '.join(path)}`"
        )


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins"],
        ["cache", "ls"],
        ["runs", "ls"],
        ["train", "dit", "--preset", "paper", "--show-config"],
        ["train", "dit", "--size", "xl", "--patch", "1", "--preset", "paper", "--show-config"],
        ["pack", "train", "--encoder", "dinov3", "--data", "imagenet", "--preset", "paper",
         "--name", "repack-dinov3", "--show-config"],
    ],
)  # fmt: skip
def test_cheap_readme_commands_run_as_written(argv):
    assert argv in COMMANDS or argv[:-1] in COMMANDS or argv[0] in ("train", "pack")
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
