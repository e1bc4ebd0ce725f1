"""`train t2i --text-encoder X --text-features <a group of encoder Y>`: the flag must act or be
refused. The run trained on Y's features (and sampled with Y) while its settings recorded X,
without a word; now it is refused before the run folder is made, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused

from repackctl.train import latest_checkpoint, read_state

TRAIN = ["train", "t2i", "-b", "8", "--steps", "1", "--ckpt-every", "1", "--log-every", "1",
         "--image-every", "0", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("audit4-t2i-encoder") / "w")


def _group(work: Path) -> str:
    """The caption-feature group run ``tA`` of the stack trained on (MiniLM's)."""
    return read_state(latest_checkpoint(work / "runs" / "tA"))["extra"]["text"]["features"]


def test_text_encoder_of_other_features_refused(stack, tmp_path, monkeypatch) -> None:
    work = use_stack(stack, tmp_path, monkeypatch)
    group = _group(work)
    out = cli_refused(2, *TRAIN, "--name", "tX", "--text-encoder", "clip",
                      "--text-features", group)  # fmt: skip
    assert "t2i.text_encoder 'clip' (flag)" in out and f"caption features {group}" in out, out
    assert "drop --text-encoder" in out, out
    assert not (work / "runs" / "tX").exists()  # refused before anything was written


def test_text_encoder_of_the_features_trains(stack, tmp_path, monkeypatch) -> None:
    work = use_stack(stack, tmp_path, monkeypatch)
    group = _group(work)
    cli_ok(*TRAIN, "--name", "tY", "--text-encoder", "minilm", "--text-features", group)
    text = read_state(latest_checkpoint(work / "runs" / "tY"))["extra"]["text"]
    assert text["features"] == group and text["encoder_ref"] == "minilm"
