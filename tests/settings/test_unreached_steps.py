"""Schedule values that never act in the run they are given to (`train dit`, `train t2i`).

`--schedule step --drop-step N` with N at or past `--steps` never dropped the lr, and
`--repa-stop-step N` at or past `--steps` never stopped REPA, without a word; so did an
`--ema-decay` that the EMA warm-up does not reach within the run (the EMA is the warm-up's ramp
all along) and one so slow without the warm-up that the EMA, which sampling uses, stays mostly
the initial weights. A run may be continued with more steps, so these are not refused: a
``Warning:`` names each value the user gave (flag, environment, file), once, in log.txt too;
a preset's or the default value is never named, and the run trains.

Real components: the CLI in-process on a real patchpix cache with packed latents and cached
captions (``support.caches.packed_cache``), real tiny training runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache, use_roots
from support.cli import cli_ok

from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["-b", "8", "--device", "cpu", "--image-every", "0", "--log-every", "1"]
TRAIN = {"dit": ["train", "dit", "--size", "tiny", *FLAGS], "t2i": ["train", "t2i", *FLAGS]}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ (16 patchpix images, their packed latents and cached captions) and runs/."""
    root = tmp_path_factory.mktemp("s30b")
    shared_packed_cache(tmp_path_factory, root / "cache", 16)
    cli_ok("captions", "--cache", str(root / "cache"), "--max-length", "8", "--device", "cpu")
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    return use_roots(base, tmp_path, monkeypatch)


def _warnings(out: str) -> list[str]:
    return ["Warning:" + w for w in out.split("Warning:")[1:]]


@pytest.mark.parametrize("stage", ["dit", "t2i"])
def test_step_values_past_the_run_are_warned_once_and_the_run_trains(stage, work):
    given = ["--schedule", "step", "--drop-step", "3", "--repa-stop-step", "5"]
    out = cli_ok(*TRAIN[stage], "--steps", "3", *given, "--ema-decay", "0.999", "--name", "a")
    drop = f"Warning: {stage}.drop_step = 3 (from flag) is at or past the end of this run (3 steps)"
    stop = f"Warning: {stage}.repa_stop_step = 5 (from flag) is at or past the end of this run"
    ema = f"Warning: {stage}.ema_decay = 0.999 (from flag) is not reached in this run (3 steps)"
    for line in (drop, stop, ema):
        assert out.count(line) == 1, out
    assert "never drops it to 0.0001" in out and "REPA stays on for the whole run" in out
    assert "only after 8990 updates" in out and "--drop-step below 3" in out
    assert len(_warnings(out)) == 3, out
    run = work / "runs" / "a"
    assert (run / "checkpoints" / "step-0000003").is_dir()
    log = " ".join((run / "log.txt").read_text().split())
    assert all(line in log for line in (drop, stop, ema)), log
    # values that act within the run: nothing to say
    out = cli_ok(*TRAIN[stage], "--steps", "3", "--schedule", "step", "--drop-step", "2",
                 "--repa-stop-step", "2", "--ema-decay", "0.2", "--name", "b")  # fmt: skip
    assert "Warning" not in out, out
    assert (work / "runs" / "b" / "checkpoints" / "step-0000003").is_dir()


def test_preset_and_default_values_are_not_named(work):
    # paper: schedule step and drop_step 240000 (past 2 steps), EMA 0.9999 without warm-up
    out = cli_ok(*TRAIN["dit"], "--preset", "paper", "--patch", "1", "--steps", "2", "--name", "p")
    assert "Warning" not in out, out
    assert (work / "runs" / "p" / "checkpoints" / "step-0000002").is_dir()
    assert "Warning" not in cli_ok(*TRAIN["t2i"], "--steps", "2", "--name", "d")


def test_env_values_and_a_given_schedule_are_named(work, monkeypatch):
    monkeypatch.setenv("REPACKCTL_DIT__REPA_STOP_STEP", "9")
    out = cli_ok(*TRAIN["dit"], "--steps", "2", "--schedule", "step", "--name", "e")
    assert "dit.repa_stop_step = 9 (from env REPACKCTL_DIT__REPA_STOP_STEP)" in out, out
    # the step schedule asked for, with the default drop step: the lr never drops either
    assert "dit.drop_step = 240000 (from default) is at or past the end of this run" in out
    assert len(_warnings(out)) == 2, out


def test_an_ema_without_warm_up_that_stays_the_initial_weights_is_named(work):
    out = cli_ok(*TRAIN["dit"], "--steps", "2", "--no-ema-warmup", "--name", "n")
    assert "dit.ema_decay = 0.9999 (from default) without the EMA warm-up" in out, out
    assert "(dit.ema_warmup = False from flag)" in out and "100% the initial ones" in out
    assert "--ema-warmup" in out and len(_warnings(out)) == 1, out


def test_the_bounds_of_the_rule():
    """A step value acts when it is below the run's steps (0-based steps 0 … steps − 1)."""
    from repackctl.settings.checks import unreached_steps  # the rule itself

    flags = {"dit.schedule": "step", "dit.repa_stop_step": 4, "dit.steps": 4}
    for drop, said in ((4, True), (3, False)):
        resolved = resolve_settings(flags=flags | {"dit.drop_step": drop}, environ={})
        sources = resolved.to_dict()["sources"]
        lines = unreached_steps(resolved.settings.dit, "dit", sources, 4)
        assert any("drop_step" in line for line in lines) is said, lines
        assert any("repa_stop_step = 4" in line for line in lines), lines
    # REPA off: its stop step is refused elsewhere, never warned about
    off = resolve_settings(flags=flags | {"dit.repa_weight": 0.0}, environ={})
    lines = unreached_steps(off.settings.dit, "dit", off.to_dict()["sources"], 4)
    assert not any("repa_stop_step" in line for line in lines), lines
