"""`remove_command` builds the `repackctl cache rm` line of every hint that names one: each line
it renders must be one that `cache rm` itself parses to the entry and group it names (a renamed
option, or a kind of group `cache rm` does not take, would leave every such hint wrong)."""

from __future__ import annotations

import shlex

import pytest
from typer.main import get_command

from repackctl.cache.commands import remove_command
from repackctl.cli.app import app

ENTRY = "builtin--train--64px"


def _parsed(line: str) -> dict[str, object]:
    """The options `repackctl cache rm` reads from ``line`` (the ones left at None dropped)."""
    words = shlex.split(line)
    assert words[:3] == ["repackctl", "cache", "rm"], line
    rm = get_command(app).commands["cache"].commands["rm"]  # type: ignore[attr-defined]
    params = rm.make_context("rm", words[3:]).params
    return {k: v for k, v in params.items() if v is not None and v is not False}


@pytest.mark.parametrize("kind", ["features", "latents", "triplets", "text"])
@pytest.mark.parametrize("yes", [False, True])
def test_a_group_line_is_one_cache_rm_reads_as_that_group(kind, yes):
    line = remove_command(ENTRY, kind, "enc--final", yes=yes)
    assert _parsed(line) == {"entry": ENTRY, kind: "enc--final"} | ({"yes": True} if yes else {})


def test_without_a_group_id_it_removes_the_entry():
    # a path that stops at the kind (`ENTRY/features`, cache.creation) names the whole entry
    assert remove_command(ENTRY, "features", "") == f"repackctl cache rm {ENTRY}"
    assert _parsed(remove_command(ENTRY, yes=True)) == {"entry": ENTRY, "yes": True}
