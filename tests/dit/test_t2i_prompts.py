"""Audit round 6, text-to-image sampling: results that could be wrong are refused, never silent.

1. `sample`'s default prompts: when the run's data has a val entry that holds no caption
   features of the run's group (captioned at another --max-length, or not captioned), the
   training captions are no evaluation prompts: refused, naming the `captions` command that
   encodes the val entry; once it is encoded, the val captions are the prompts.
2. A BOM is ignored wherever it stands in a --prompts file (files joined with `cat` keep the
   second one's BOM at the start of a line): a line of only a BOM is blank, never a prompt the
   text encoder reads as the empty (null) caption, and "\\ufeffa red star" is "a red star".
3. The card says which prompts file its samples got: ``prompt_source`` names the ``--prompts``
   file (absolute path, sha256 of its bytes) and how many ``--prompt`` came before it.

Real components: `extract` (patchpix, 32 px), `pack train`, `pack encode`, `captions` (MiniLM,
length 8), `train t2i` (2 steps), `cache rm` and `sample` through the CLI, on real Zarr caches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused

from repackctl.data.captions import builtin_captions
from repackctl.errors import CacheError

N, LEN = 32, 8
CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "3", *CPU]
VAL = "builtin-n8--val--32px"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """extract (train 32 + val 8) → pack → captions of both (len 8) → a 2-step t2i run tA."""
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-round6") / "w", N, LEN)


def _cards(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (work / "samples").glob("*/protocol.json")]


def test_val_entry_without_the_runs_captions_is_refused_not_replaced_by_training_captions(
    stack, tmp_path, monkeypatch
):
    work = use_stack(stack, tmp_path, monkeypatch)
    (tid,) = [p.name for p in (work / "cache" / VAL / "text").iterdir() if p.is_dir()]
    cli_ok("cache", "rm", VAL, "--text", tid, "--yes")
    cli_ok("captions", "--entry", VAL, "--max-length", "16", *CPU)  # another length only
    out = cli_refused(CacheError.exit_code, *SAMPLE)
    assert VAL in out and tid in out and "training captions" in out, out
    assert f"repackctl captions --entry {VAL} --text-encoder minilm --max-length {LEN}" in out
    assert not _cards(work)  # nothing sampled on the training captions

    # the command the hint names encodes them: the val captions are the prompts
    cli_ok("captions", "--entry", VAL, "--text-encoder", "minilm", "--max-length", str(LEN), *CPU)
    cli_ok(*SAMPLE)
    (card,) = _cards(work)
    assert card["prompt_source"].endswith(VAL)
    assert card["prompts"][0] == builtin_captions(0, split="val", seed=0)[0]


BOM = "\ufeff"


def test_a_bom_inside_a_prompts_file_is_ignored_not_a_prompt(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    joined = tmp_path / "joined.txt"  # `cat a.txt b.txt c.txt`, each saved with a BOM
    text = f"{BOM}a red star\r\n{BOM}\r\n{BOM}a red star\n{BOM}a blue ring\n"
    joined.write_bytes(text.encode("utf-8"))
    out = tmp_path / "s"
    cli_ok(*SAMPLE, "--prompts", str(joined), "--out", str(out))
    card = json.loads((out / "protocol.json").read_text())
    assert card["prompts"] == ["a red star", "a blue ring"]  # no BOM prompt, no BOM-only one
    assert card["prompt_ids"] == [0, 0, 1]  # the duplicate line kept: sample i gets line i
    said = (out / "prompts.txt").read_text(encoding="utf-8")
    assert said == "a red star\na red star\na blue ring\n"
    refused = cli_refused(2, *SAMPLE, "--prompt", BOM)  # only a BOM: an empty --prompt
    assert "empty" in refused


def test_the_card_names_the_prompts_file_its_samples_got(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    (tmp_path / "mine").mkdir()
    pfile = tmp_path / "mine" / "p.txt"
    pfile.write_text("a blue ring\n\na green disc\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "mine")  # named relative: recorded absolute
    out = tmp_path / "s"
    cli_ok(*SAMPLE, "--prompt", "a red star", "--prompts", "p.txt", "--out", str(out))
    card = json.loads((out / "protocol.json").read_text())
    digest = hashlib.sha256(pfile.read_bytes()).hexdigest()
    want = f"given: 1 --prompt, --prompts {os.path.realpath(pfile)} (sha256 {digest})"
    assert card["prompt_source"] == want
    assert card["prompts"] == ["a red star", "a blue ring", "a green disc"]
