"""`train t2i --depth/--width/--heads` prints the name of the network it built
(``mmdit-tiny-d2w64h2``), which its checkpoint records, not the bare id it started from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_roots
from support.cli import cli_ok


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-name") / "w")


def test_the_summary_names_the_shaped_model(stack, tmp_path, monkeypatch):
    work = use_roots(stack, tmp_path, monkeypatch)
    out = cli_ok("train", "t2i", "-b", "8", "--steps", "1", "--name", "shaped", "--depth", "2",
                 "--width", "64", "--heads", "2", "--image-every", "0", "--device", "cpu")  # fmt: skip
    (state,) = (work / "runs" / "shaped" / "checkpoints").glob("step-*/state.json")
    name = json.loads(state.read_text())["extra"]["model_config"]["name"]
    assert name == "mmdit-tiny-d2w64h2"
    row = next(line for line in out.splitlines() if "│ model" in line)
    assert name in row, row
