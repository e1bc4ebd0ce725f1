"""Numbers that say what they measure:

- `runs info` shows ``ema_warmup`` and, with the warm-up on, the EMA decay in effect at the newest
  checkpoint (``repackctl.train.ema.decay_after``): ``ema_decay 0.9999`` alone read as 0.9999
  when a 3-step run's EMA used 0.25;
- `evaluate adherence` records and prints how many real images its classifiers trained on and
  were scored on (a tenth held out), not the whole entry's count as "images";
- the `train dit` summary's rate (the whole fit: checkpoints and plots included) is named
  "wall speed", not shown as "speed" beside the bar's and the log's faster rates; "speed" is
  the rate of the training steps alone;
- `pack train` logs ``lr/disc`` 0 while the discriminator gets no loss (before ``gan_start``):
  its optimizer does not step then.

A real toy stack (tests/support/caches.py ``t2i_stack``), real runs through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok

from repackctl.train.ema import decay_after
from repackctl.train.logging import read_metrics

CPU = ["--device", "cpu"]
DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--log-every", "1", "--image-every", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("runs-info-speeds") / "w")


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


@pytest.mark.slow
def test_runs_info_shows_the_ema_decay_in_effect_and_the_summary_names_wall_speed(work):
    out = cli_ok(*DIT, "--steps", "3", "--ckpt-every", "3", "--name", "d", *CPU)
    assert "wall speed" in out and "steps/s (with checkpoints and plots)" in out
    flat = " ".join(out.replace("│", " ").split())
    loop = float(flat.split("speed ", 1)[1].split(" steps/s (training steps alone)")[0])
    wall = float(flat.split("wall speed ", 1)[1].split(" ")[0])
    assert loop >= wall > 0  # the steps alone, without the checkpoint writes and plots

    info = cli_ok("runs", "info", "d")
    in_effect = decay_after(0.9999, True, 2)  # the 3rd update's: 3 / 12
    assert in_effect == pytest.approx(0.25)
    assert f"config.ema_decay 0.9999 (warm-up: {in_effect:.4g} at step 3)" in info
    assert "config.ema_warmup True" in info
    d = json.loads(cli_ok("runs", "info", "d", "--json"))
    assert d["config"]["ema_decay"] == 0.9999 and d["config"]["ema_warmup"] is True  # numbers
    assert d["ema_decay_in_effect"] == {"decay": in_effect, "step": 3, "updates": 3, "warmup": True}

    # without the warm-up the configured decay is the one in effect: shown as it is
    cli_ok(*DIT, "--steps", "2", "--ckpt-every", "2", "--no-ema-warmup", "--name", "e", *CPU)
    info = cli_ok("runs", "info", "e")
    assert "config.ema_decay 0.9999 config.ema_warmup False" in info and "warm-up:" not in info


def test_adherence_names_the_classifiers_train_and_held_out_images(work, tmp_path):
    folder = tmp_path / "s"
    cli_ok("sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "2", *CPU,
           "--prompt", "a red star", "--out", str(folder))  # fmt: skip
    out = cli_ok("evaluate", "adherence", str(folder), "--steps", "2", *CPU)
    clf = json.loads((folder / "adherence.json").read_text())["classifier"]
    # 32 real train images: 3 held out (a tenth), the classifiers trained on the other 29
    assert clf["images"] == 32 and clf["train_images"] == 29 and clf["held_out"] == 3
    assert "classifier on 3 held-out real images │ shape" in out
    assert "classifier trained on │ the other 29 real images" in out


def test_pack_train_logs_no_discriminator_lr_before_the_gan_starts(work):
    pack = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "32"]
    pack += ["--steps", "4", "--batch-size", "8", "--ch", "8", "-c", "4", "--disc-channels", "8"]
    pack += ["--gan-weight", "0.5", "--gan-start", "2", "--disc-lr", "0.002", "--log-every", "1"]
    cli_ok(*pack, "--image-every", "0", "--name", "pg", *CPU)
    records = read_metrics(work / "runs" / "pg")
    # updates 0 and 1 (logged as steps 1, 2) have no discriminator loss: its optimizer idles
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [("loss/disc" in r) for r in records] == [False, False, True, True]
    assert [r["lr/disc"] for r in records] == [0.0, 0.0, 0.002, 0.002]
    assert all(r["lr/gen"] > 0 for r in records)


def test_a_text_to_image_guide_is_refused_by_what_it_is(work):
    """`sample --guide` with a t2i run said "(stage 't2i', missing [])": an empty list read as a
    cause. The stage alone is the reason."""
    from support.cli import cli_refused

    from repackctl.errors import CheckpointError

    cli_ok(*DIT, "--steps", "1", "--ckpt-every", "1", "--name", "d", *CPU)
    out = cli_refused(
        CheckpointError.exit_code,
        *("sample", "-r", "d", "--guide", "tA", "--cfg", "2", "-n", "2", "--steps", "2", *CPU),
    )
    assert "is not a DiT checkpoint (stage 't2i')" in out and "missing" not in out
