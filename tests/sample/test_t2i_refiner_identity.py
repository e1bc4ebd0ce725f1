"""A text-to-image `sample --refiner` folder names its refiner as a class-conditional one does.

Its protocol.json recorded the refiner as a bare path (``"refiner": "<checkpoint>"``), where a
class-conditional card records ``{"checkpoint", "sha256"}``: a refiner retrained in place was
indistinguishable, and `refine apply` on the unrefined t2i folder, whose refined folder is the
`sample --refiner` one, died with an ``AttributeError`` traceback reading that path. Now:

- the t2i card records the refiner's checkpoint and sha256 (the one its settings file records);
- `refine apply` finds the `sample --refiner` folder already refined by that refiner, and
  refuses it by name (``refiner checkpoint``) once the refiner was retrained in place, as a
  rerun of `sample --refiner` does (nothing changed in either case);
- a t2i card of an earlier version (the bare path) is still told apart by the sha256 its
  settings file recorded when the folder was started.

A real toy stack (tests/support/caches.py ``t2i_stack``) and a refiner in the `refine train`
contract (tests/support/stack.py ``save_refiner_run``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.stack import save_refiner_run

from repackctl.errors import ConfigError
from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.train.checkpoint import read_state, save_checkpoint

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--grid", "0", *CPU]
REFINER = ["--refiner", "refine-32", *CPU]  # `refine apply FOLDER` options

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-refiner-id") / "w")
    save_refiner_run(str(work / "runs"), "refine-32", 32)  # the samples' side: 32 px
    return work


@pytest.fixture
def folders(stack, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(unrefined t2i folder, its `sample --refiner` folder), default prompts and names: the
    folder `refine apply` on the first writes to is the second."""
    work = use_stack(stack, tmp_path, monkeypatch)
    cli_ok(*SAMPLE)
    cli_ok(*SAMPLE, "--refiner", "refine-32")
    plain = work / "samples" / "tA--step-0000002--euler-2--cfg1--seed0"
    refined = plain.parent / f"{plain.name}--refine-32"
    assert (plain / "protocol.json").is_file() and (refined / "protocol.json").is_file()
    return plain, refined


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != SAMPLES_LOCK}


def _retrain_in_place(runs: Path) -> None:
    """The refiner run saved again under the same name, path and step with other weights."""
    ckpt = runs / "refine-32" / "checkpoints" / "step-0000002"
    state = read_state(ckpt)
    weights = {k: v + 0.01 for k, v in load_file(str(ckpt / "ema.safetensors")).items()}
    shutil.rmtree(runs / "refine-32")
    save_checkpoint(runs / "refine-32", 2, {"model": weights, "ema": weights}, {}, state)


def test_t2i_card_records_the_refiners_checkpoint_and_sha256(folders):
    _, refined = folders
    card = json.loads((refined / "protocol.json").read_text())
    started = json.loads((refined / SETTINGS_JSON).read_text())
    assert isinstance(card["refiner"], dict), card["refiner"]
    assert card["refiner"]["sha256"] == started["refiner"]
    assert Path(card["refiner"]["checkpoint"]).parent.parent.name == "refine-32"


def test_refine_apply_finds_the_sample_refiner_folder_already_refined(folders):
    plain, refined = folders
    before = _files(refined)
    out = cli_ok("refine", "apply", str(plain), *REFINER)
    assert "already refined" in out and "0 now" in out, out
    assert _files(refined) == before


def test_a_refiner_retrained_in_place_is_told_apart(folders, stack, tmp_path):
    plain, refined = folders
    before = _files(refined)
    _retrain_in_place(tmp_path / "w" / "runs")
    out = cli_refused(ConfigError.exit_code, "refine", "apply", str(plain), *REFINER)
    assert "refiner checkpoint" in out and str(refined) in out, out
    out = cli_refused(ConfigError.exit_code, *SAMPLE, "--refiner", "refine-32")
    assert "refiner" in out and str(refined) in out, out
    assert _files(refined) == before  # nothing changed


def test_an_earlier_t2i_card_with_a_bare_path_is_still_checked(folders, tmp_path):
    plain, refined = folders
    card = json.loads((refined / "protocol.json").read_text())
    if isinstance(card["refiner"], dict):  # as earlier versions recorded it: the path only
        card["refiner"] = card["refiner"]["checkpoint"]
    (refined / "protocol.json").write_text(json.dumps(card))
    assert "already refined" in cli_ok("refine", "apply", str(plain), *REFINER)
    _retrain_in_place(tmp_path / "w" / "runs")
    out = cli_refused(ConfigError.exit_code, "refine", "apply", str(plain), *REFINER)
    assert "refiner checkpoint" in out, out
