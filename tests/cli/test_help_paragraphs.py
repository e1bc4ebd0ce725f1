"""`--help` prints each paragraph of a command's description as one flowing paragraph.

Typer's rich markup keeps every newline of a docstring, so descriptions wrapped at 100 columns
in the source came out as ragged lines at any terminal width ("...with the same --batch-size
and" / "device type:" / "the folder records them..."). The CLI now joins a paragraph's source
lines (``repackctl.cli.app.unwrap_help``); blank lines still separate paragraphs. Real `--help`
of every command, in-process, on a wide terminal.
"""

from __future__ import annotations

import inspect

import pytest
import typer
from support.cli import runner

from repackctl.cli.app import app, unwrap_help


def _commands(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[tuple, str]]:
    """(command words, its docstring) for every command of ``typer_app``."""
    found = []
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        found.append(((*prefix, name), info.help or ""))
    for group in typer_app.registered_groups:
        found += _commands(group.typer_instance, (*prefix, group.name))
    return found


COMMANDS = _commands(app)


def test_every_command_has_a_description():
    assert len(COMMANDS) > 20
    assert all(text.strip() for _, text in COMMANDS), [w for w, t in COMMANDS if not t.strip()]


@pytest.mark.parametrize(("words", "text"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_each_paragraph_of_the_description_is_printed_unbroken(words, text, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    res = runner.invoke(app, [*words, "--help"], terminal_width=1000)
    assert res.exit_code == 0, res.output
    lines = [" ".join(line.split()) for line in res.output.splitlines()]
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        flowing = " ".join(paragraph.split())
        if "\n- " in paragraph:  # a list keeps its lines
            continue
        assert flowing in lines, (words, flowing)


def test_paragraphs_and_list_items_stay_apart():
    text = "One\n    two.\n\n    Three\n    - a\n    - b"
    assert unwrap_help(text) == "One two.\n\nThree\n- a\n- b"
