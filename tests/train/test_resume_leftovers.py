"""Three leftovers of the resume audit, each through real CLI runs on a real cache.

1. A refiner run started by a version that did not record its pack run, resumed with the pack
   run it was trained on given explicitly (``--pack-run pa``), was refused as ``None → 'pa'``
   (a plain resume worked). The checkpoint's pack run now stands in for the missing record;
   another pack run given is refused as ``'pa' → 'pb'``.
2. ``--buffer-blocks`` on a DiT whose latents are held in memory only changed the run's record
   (in memory the order is a plain permutation), and a resume with another value was refused as
   "resuming would change the order of samples". It is now said to have no effect, and the run
   keeps its recorded window.
3. ``--allow-change NAME`` was stored with the run and kept on every later resume: a later resume
   that changed the same thing again without it passed the checkpoint checks. The allowance now
   applies only to the call that passes it; config_history.jsonl keeps what it let through.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dit.test_dit_resume_latents import _forget_latents
from pack.test_watson import TINY, write_params
from support.caches import patchpix_fixtures, shared_packed_cache
from support.ckpt_state import run_state
from support.cli import cli_ok, cli_refused
from test_refine_pack_run import PACK, REFINE, _forget_pack_run, _trained_on

from repackctl.cache.store import list_entries
from repackctl.errors import CheckpointError, ConfigError
from repackctl.train.checkpoint import latest_checkpoint
from repackctl.train.sampler import MIN_BUFFER_BLOCKS, BlockSampler

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("round4-resume-cache", 16)


@pytest.fixture(scope="module")
def base_packed(tmp_path_factory) -> Path:
    """One :func:`packed_cache` (16 images, the 4-step pack run ``pk`` and its latents) for the
    module: its three DiT / t2i tests only read it, each from a private copy (``packed``)."""
    base = tmp_path_factory.mktemp("round4-packed")
    shared_packed_cache(tmp_path_factory, base / "cache", 16)  # built in one thread
    return base


@pytest.fixture
def packed(base_packed, tmp_path) -> Path:
    """A private copy of the module's packed cache/ and runs/ at this test's roots."""
    for name in ("cache", "runs"):
        shutil.copytree(base_packed / name, tmp_path / name)
    return tmp_path / "cache"


def test_an_older_refiner_run_resumes_with_its_own_pack_run_given(cache, tmp_path):
    run = tmp_path / "runs" / "rf"
    cli_ok(*PACK, "--name", "pa")
    cli_ok(*REFINE, "--steps", "1")
    cli_ok(*PACK, "--name", "pb")  # the newest pack run now
    _forget_pack_run(run)  # as an older version wrote the run
    out = cli_ok(*REFINE, "--steps", "2", "--pack-run", "pa")
    assert "pack_run" not in out, out  # no change to show: the run's own pack run
    assert _trained_on(run) == "pa" and latest_checkpoint(run).name == "step-0000002"
    _forget_pack_run(run)
    out = cli_refused(ConfigError.exit_code, *REFINE, "--steps", "3", "--pack-run", "pb")
    assert "refine.pack_run: 'pa' → 'pb'" in out, out
    assert latest_checkpoint(run).name == "step-0000002"


TRAIN = ["-b", "8", "--device", "cpu", "--image-every", "0"]
COMMANDS = {"dit": ["train", "dit", "--size", "tiny", *TRAIN], "t2i": ["train", "t2i", *TRAIN]}


def test_an_older_dit_run_resumes_with_its_own_latents_given(packed, tmp_path):
    """The same for `train dit` and the latents its checkpoint names."""
    run = tmp_path / "runs" / "d"
    train = [*COMMANDS["dit"], "--name", "d"]
    cli_ok(*train, "--steps", "1")
    own = run_state(tmp_path, "d")[1]["extra"]["cache"]["latents"]
    _forget_latents(run)
    out = cli_ok(*train, "--steps", "2", "--latents", own)
    assert "dit.latents" not in out and run_state(tmp_path, "d")[1]["step"] == 2, out
    _forget_latents(run)
    out = cli_refused(ConfigError.exit_code, *train, "--steps", "3", "--latents", "other")
    assert f"dit.latents: {own!r} → 'other'" in out, out


@pytest.mark.parametrize("section", list(COMMANDS))
def test_buffer_blocks_of_in_memory_data_is_said_to_have_no_effect(section, packed, tmp_path):
    # in memory the block is 1: the order is a plain permutation, whatever the window
    orders = [BlockSampler(16, 0, 1, w).epoch_order(0) for w in (1, 4, 64)]
    assert all((o == orders[0]).all() for o in orders)
    # packed: 16 small latents, held in memory
    if section == "t2i":
        (entry,) = list_entries(str(packed))
        cli_ok("captions", "--entry", entry, "--max-length", "8", "--device", "cpu")
    train = [*COMMANDS[section], "--name", "d"]
    out = cli_ok(*train, "--steps", "1", "--buffer-blocks", "4")
    assert f"Warning: {section}.buffer_blocks 4 (flag) has no effect" in out, out
    assert "--no-in-memory" in out, out
    assert run_state(tmp_path, "d")[1]["config"]["buffer_blocks"] == MIN_BUFFER_BLOCKS
    out = cli_ok(*train, "--steps", "2", "--buffer-blocks", "8")  # was refused as another order
    assert f"{section}.buffer_blocks 8 (flag) has no effect" in out, out
    assert run_state(tmp_path, "d")[1]["step"] == 2
    out = cli_ok(*train, "--steps", "3")  # kept from the record, not given now: nothing said
    assert "has no effect" not in out, out
    # read in chunk blocks, the window is the one given (no warning)
    other = [*COMMANDS[section], "--name", "z", "--no-in-memory"]
    out = cli_ok(*other, "--steps", "1", "--buffer-blocks", "4")
    assert "has no effect" not in out, out
    assert run_state(tmp_path, "z")[1]["config"]["buffer_blocks"] == 4


def test_an_allowed_change_does_not_allow_later_ones(cache, tmp_path):
    params = write_params(tmp_path / "watson.pth", seed=5)
    run = ("pack", "train", *TINY, "--watson-weight", "0.01", "--name", "w")
    args = (*run, "--watson-weights", str(params))
    cli_ok(*args, "--steps", "1")
    write_params(params, seed=6)
    cli_ok(*args, "--steps", "2", "--allow-change", "watson_weights")
    history = (tmp_path / "runs" / "w" / "config_history.jsonl").read_text()
    assert "watson_weights" in history, history
    write_params(params, seed=7)  # other values again, without --allow-change
    out = cli_refused(CheckpointError.exit_code, *args, "--steps", "3")
    assert "other Watson-DFT parameters" in out, out
    assert run_state(tmp_path, "w")[1]["step"] == 2
    record = json.loads((tmp_path / "runs" / "w" / "config.json").read_text())
    assert record["extra"]["settings"]["values"]["pack"]["allow_change"] == ["watson_weights"]
    cli_ok(*args, "--steps", "3", "--allow-change", "watson_weights")
    assert run_state(tmp_path, "w")[1]["step"] == 3
