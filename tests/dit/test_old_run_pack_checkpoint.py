"""`sample` decodes a DiT run that recorded ``pack.checkpoint: null`` with the pack checkpoint
that encoded its latents.

Until b4c4b9b every DiT run recorded ``extra["pack"]["checkpoint"] = None``; ``sample`` then
decoded with the pack run's newest checkpoint, and once the pack run had trained on after
``pack encode`` it refused ("pack model … is not the one the DiT was trained on") with a hint
that no user could follow. The checkpoint is the step inside the recorded pack id
(``<entry>--<run>-<step:07d>-<sha8>``); its weights' sha256 is checked against the sha8. A step
that is gone is refused with an Error and a Hint.

Real components: extract → pack train → pack encode (``support.caches.packed_cache``), a real
tiny DiT run and ``sample`` through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.caches import packed_cache, use_stack
from support.ckpt_state import write_state
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError
from repackctl.train import latest_checkpoint, read_state

CPU = ["--device", "cpu"]
DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--log-every", "1", "--ckpt-every", "2"]
DIT += ["--repa-weight", "0", "--steps", "2", "--image-every", "0", "--name", "d", *CPU]
SAMPLE = ["sample", "-r", "d", "-n", "2", "--steps", "2", *CPU]
PACK = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
PACK += ["--batch-size", "8", "--ch", "16", "-c", "4", "--ckpt-every", "2", "--keep-last", "0"]
PACK += ["--image-every", "0", "--name", "pk", "--steps", "6", *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ (latents of step 4 of pack run ``pk``), runs/d: a 2-step DiT on them whose state
    records ``pack.checkpoint: null`` as runs before b4c4b9b did, and runs/pk trained on to
    step 6 afterwards (its newest checkpoint is not the one that encoded the latents)."""
    root = tmp_path_factory.mktemp("old-pack-ckpt")
    packed_cache(root / "cache", 16)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("cache", "runs", "samples"):
            mp.setenv(f"REPACKCTL_{name.upper()}", str(root / name))
        cli_ok(*DIT)
        ckpt = latest_checkpoint(root / "runs" / "d")
        state = read_state(ckpt)
        assert state["extra"]["pack"]["checkpoint"]  # recorded since b4c4b9b
        state["extra"]["pack"]["checkpoint"] = None  # as every run before it recorded
        write_state(ckpt / "state.json", state)
        cli_ok(*PACK)  # the pack run trains on after `pack encode`
    assert latest_checkpoint(root / "runs" / "pk").name == "step-0000006"
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A private copy of ``base`` as this test's cache, runs and samples roots."""
    return use_stack(base, tmp_path, monkeypatch)


def test_sample_decodes_an_old_run_with_the_pack_step_of_its_latents(work):
    state = read_state(latest_checkpoint(work / "runs" / "d"))
    pack_id = state["extra"]["pack"]["pack_id"]
    assert state["extra"]["pack"]["checkpoint"] is None and "--pk-0000004-" in pack_id
    out = work / "samples" / "old"
    cli_ok(*SAMPLE, "--out", str(out))
    card = json.loads((out / "protocol.json").read_text())
    used = json.dumps(card)
    assert pack_id in used and "step-0000004" in used
    assert "step-0000006" not in used


def test_an_old_run_whose_pack_step_is_gone_is_refused_with_a_hint(work):
    shutil.rmtree(work / "runs" / "pk" / "checkpoints" / "step-0000004")
    out = cli_refused(CheckpointError.exit_code, *SAMPLE, "--out", str(work / "samples" / "gone"))
    text = " ".join(out.split())
    assert "step-0000004" in text and "is gone" in text and "step-0000006" in text
    assert "Hint:" in text and "restore" in text
    assert not (work / "samples" / "gone").exists()
