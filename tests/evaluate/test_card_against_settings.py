"""`evaluate` refuses a samples folder's card that the folder's own files contradict.

- An edited ``protocol.json`` (cfg_scale, seed, labels …) was taken at its word: `evaluate fid`
  scored the folder and wrote the edited settings into ``metrics.json`` beside the score, and
  `sample --out` accepted an edited cfg_scale or labels. Every reader now compares the card
  with the folder's ``.sample-settings.json`` (one rule, ``check_card_is_the_folders``), names
  the fields that differ, and its hint (remove the card, run the same `sample` command with
  --out FOLDER) writes the card again.
- An edited ``images_sha256`` (samples.npz and the PNGs agree) was blamed on samples.npz, and
  the hinted rebuild failed: the card is now named, and its hint works.
- A cut or removed card: the hint names the repair that works (the same `sample --out`).

Every hint is followed here, and must end the error. The shared toy stack (extract → pack
train → a DiT run), real `repackctl` CLI calls, the built-in encoder's FD on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, FD_WEIGHTS, shared_stack, stack_env

from repackctl.errors import DataError

SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--device", "cpu"]
STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    yield from stack_env(shared_stack(tmp_path_factory), tmp_path, monkeypatch)


def _edit(folder: Path, change) -> None:
    path = folder / "protocol.json"
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card, indent=1))


def _follow_the_hint(out: str, folder: Path, metrics: Path) -> None:
    """The hint's repair (the card removed, the same `sample` command with --out FOLDER), then
    the refused `evaluate fid`: it scores, and records the folder's true settings."""
    hint = out.split("Hint:", 1)[1]
    assert f"with --out {folder}" in hint and "writes protocol.json again" in hint, out
    (folder / "protocol.json").unlink(missing_ok=True)
    cli_ok(*SAMPLE, "--out", str(folder))
    cli_ok("evaluate", "fid", str(folder), *FD_SCORE, "--out", str(metrics))


def test_an_edited_card_is_refused_by_evaluate_and_sample(env, tmp_path):
    folder, metrics, sdir = tmp_path / "s", tmp_path / "m.json", tmp_path / "stats"
    cli_ok(*SAMPLE, "--out", str(folder))
    first = json.loads((folder / "protocol.json").read_text())
    _edit(folder, lambda d: d.update(cfg_scale=4.0, seed=7))
    edited = (folder / "protocol.json").read_bytes()

    score = ["evaluate", "fid", str(folder), *FD_SCORE, "--out", str(metrics)]
    out = cli_refused(DataError.exit_code, *score)
    assert f"{folder / 'protocol.json'} is not the card of the samples" in out, out
    assert "seed, cfg_scale" in out and ".sample-settings.json" in out, out
    assert not metrics.exists()  # no score beside the edited settings
    # the folder as the reference, and `evaluate stats`, read the card alike
    ref = cli_refused(
        DataError.exit_code, *STATS, str(folder / "samples.npz"), "--stats-dir", str(sdir)
    )
    assert ref.split("Hint:")[0] == out.split("Hint:")[0], (ref, out)
    # `sample --out` neither rewrites the card silently nor keeps the edit
    again = cli_refused(DataError.exit_code, *SAMPLE, "--out", str(folder))
    assert "seed, cfg_scale" in again, again
    assert (folder / "protocol.json").read_bytes() == edited

    _follow_the_hint(out, folder, metrics)
    recorded = json.loads(metrics.read_text())["protocol"]
    assert (recorded["cfg_scale"], recorded["seed"]) == (first["cfg_scale"], first["seed"])

    # labels: not compared before (`sample --out` and `evaluate fid` took them)
    metrics.unlink()
    _edit(folder, lambda d: d["labels"].__setitem__(0, d["labels"][0] + 1))
    out = cli_refused(DataError.exit_code, *score)
    assert "(fields that differ from the folder's .sample-settings.json: labels)" in out, out
    assert "labels" in cli_refused(DataError.exit_code, *SAMPLE, "--out", str(folder))
    _follow_the_hint(out, folder, metrics)
    assert json.loads((folder / "protocol.json").read_text())["labels"] == first["labels"]


def test_an_edited_images_sha256_is_named_and_its_hint_works(env, tmp_path):
    folder, metrics = tmp_path / "s", tmp_path / "m.json"
    cli_ok(*SAMPLE, "--out", str(folder))
    _edit(folder, lambda d: d["files"]["samples.npz"].update(images_sha256="0" * 64))

    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(folder), *FD_SCORE)
    assert "the card's images_sha256 was edited" in out, out
    assert "that record was changed to name another file" not in out, out  # not the npz's
    _follow_the_hint(out, folder, metrics)


def test_a_cut_card_hints_the_sample_command_that_writes_it_again(env, tmp_path):
    folder, metrics = tmp_path / "s", tmp_path / "m.json"
    cli_ok(*SAMPLE, "--out", str(folder))
    card = folder / "protocol.json"
    card.write_bytes(card.read_bytes()[: card.stat().st_size // 2])

    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(folder), *FD_SCORE)
    assert f"cannot read {card}" in out, out
    assert out.split("Hint:", 1)[1].strip() != "the samples folder is damaged", out
    _follow_the_hint(out, folder, metrics)
