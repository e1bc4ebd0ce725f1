"""Text-to-image: the hint for missing caption features makes the group asked for, and the
sample summary says where the prompts came from.

- `train t2i --text-features minilm-l6--len16--…` of a group not in the cache: the hint's
  `repackctl captions` command carries ``--max-length 16`` (without it the encoder's default
  length made a group of another name, and the same error came back); run as given, it makes
  that very group.
- `sample` of a run whose caption group is gone from its entries (no prompts given): the hint
  gives the `captions` command with the run's text encoder and ``--max-length``; run as given,
  sampling works.
- ``summary_rows``: the row `sample`'s table shows for a t2i folder, read off its card: the
  ``--prompts`` file (absolute path and sha256) and the ``--prompt`` count.

Real components: a toy t2i stack (extract → pack → captions → train t2i) in tmp folders, the
command line through Typer's CliRunner.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]
TRAIN, VAL = "builtin-n32--train--32px", "builtin-n8--val--32px"
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "2", *CPU]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(
        tmp_path_factory, tmp_path_factory.mktemp("t2i-s28") / "w"
    )  # captions at --max-length 8


def _groups(work: Path, entry: str) -> list[str]:
    return DatasetEntry.open(str(work / "cache"), entry).complete_groups("text", ("done",))


def _run_hint(out: str) -> None:
    """Run the `repackctl captions …` command of a hint, as given (plus the CPU)."""
    (command,) = re.findall(r"`(repackctl captions [^`]*)`", out)
    cli_ok(*shlex.split(command)[1:], *CPU)


def test_the_hint_for_a_missing_text_features_group_makes_that_group(stack, tmp_path, monkeypatch):
    work = use_stack(stack, tmp_path, monkeypatch)
    (have,) = _groups(work, TRAIN)  # minilm-l6--len8--<sha8>
    wanted = have.replace("--len8--", "--len16--")
    train = ["train", "t2i", "-b", "8", "--steps", "2", "--name", "tB", *CPU]
    out = cli_refused(CacheError.exit_code, *train, "--text-features", wanted)
    assert f"no caption features '{wanted}' in {TRAIN}" in out, out
    assert f"--entry {TRAIN} --text-encoder minilm --max-length 16`" in out, out
    _run_hint(out)
    assert sorted(_groups(work, TRAIN)) == sorted([have, wanted])  # the group asked for


def test_the_hint_for_a_run_whose_caption_group_is_gone_encodes_it_again(
    stack, tmp_path, monkeypatch
):
    work = use_stack(stack, tmp_path, monkeypatch)
    (text_id,) = _groups(work, TRAIN)
    cli_ok("cache", "rm", VAL, "--yes")
    cli_ok("cache", "rm", TRAIN, "--text", text_id, "--yes")
    out = cli_refused(CacheError.exit_code, *SAMPLE)
    assert f"no cached captions {text_id} for the run's entries" in out, out
    assert f"--entry {TRAIN} --text-encoder minilm --max-length 8`" in out, out
    assert "or pass prompts" in out
    _run_hint(out)
    assert _groups(work, TRAIN) == [text_id]
    cli_ok(*SAMPLE, "--out", str(tmp_path / "s"))
    assert json.loads((tmp_path / "s" / "protocol.json").read_text())["prompt_source"] == (
        f"first caption of each image of {TRAIN}"
    )


def test_the_summary_says_which_prompts_file_the_samples_got(stack, tmp_path, monkeypatch):
    from repackctl.sample.t2i import summary_rows  # the rows `sample` adds for a t2i folder

    use_stack(stack, tmp_path, monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red star\na blue disc\n", encoding="utf-8")
    digest = hashlib.sha256(prompts.read_bytes()).hexdigest()
    folder = tmp_path / "s"
    cli_ok(
        *SAMPLE,
        "-n",
        "3",
        "--prompt",
        "a grey box",
        "--prompts",
        str(prompts),
        "--out",
        str(folder),
    )
    card = json.loads((folder / "protocol.json").read_text())
    source = f"given: 1 --prompt, --prompts {prompts.resolve()} (sha256 {digest})"
    assert summary_rows(card) == [("prompts", f"3 distinct; {source}")]
    assert summary_rows({**card, "stage": "dit"}) == []  # class-conditional: labels, no prompts
