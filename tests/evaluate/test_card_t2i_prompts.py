"""`evaluate adherence` scores a text-to-image folder against the prompts it was sampled from.

It read the prompts (the targets of its shape and colour scores) from ``protocol.json`` as they
were: an edited prompt list was scored, and ``adherence.json`` said ``samples_verified: true``.
The card's prompts are now checked against the ``prompts_sha256`` of the folder's
``.sample-settings.json`` (the rule every reader of a card applies,
``check_card_is_the_folders``); `sample --out` refuses the edited card too, rather than
rewriting it unsaid. A removed card names the repair that works. Every hint is followed.

A real toy stack (tests/support/caches.py ``shared_t2i_stack``): a 2-step `train t2i` run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused

from repackctl.errors import DataError

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "2", *CPU]
SAMPLE += ["--prompt", "a red star"]
ADHERENCE = ["evaluate", "adherence", "--steps", "2", *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-card") / "w")


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _follow_the_hint(out: str, folder: Path) -> dict:
    hint = out.split("Hint:", 1)[1]
    assert f"with --out {folder}" in hint and "writes protocol.json again" in hint, out
    (folder / "protocol.json").unlink(missing_ok=True)
    cli_ok(*SAMPLE, "--out", str(folder))
    cli_ok(*ADHERENCE, str(folder))
    return json.loads((folder / "adherence.json").read_text())


def test_edited_prompts_are_refused_and_a_removed_card_is_written_again(work, tmp_path):
    folder = tmp_path / "t"
    cli_ok(*SAMPLE, "--out", str(folder))
    card = folder / "protocol.json"
    doc = json.loads(card.read_text())
    doc["prompts"] = ["a blue circle" for _ in doc["prompts"]]
    card.write_text(json.dumps(doc))

    out = cli_refused(DataError.exit_code, *ADHERENCE, str(folder))
    assert f"{card} is not the card of the samples" in out and "prompts)" in out, out
    assert not (folder / "adherence.json").exists()  # nothing scored against them
    again = cli_refused(DataError.exit_code, *SAMPLE, "--out", str(folder))
    assert "prompts)" in again, again
    assert json.loads(card.read_text())["prompts"] == ["a blue circle"]  # not rewritten unsaid
    assert _follow_the_hint(out, folder)["samples_verified"] is True
    assert json.loads(card.read_text())["prompts"] == ["a red star"]

    (folder / "adherence.json").unlink()
    card.unlink()
    out = cli_refused(DataError.exit_code, *ADHERENCE, str(folder))
    assert f"{folder} has no protocol.json" in out, out
    assert "pass a folder written by" not in out, out  # it was written by `sample`
    _follow_the_hint(out, folder)
