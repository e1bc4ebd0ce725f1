"""A given `--ema-decay` that does not act in `pack train` / `refine train` is a `Warning:`.

`train dit` and `train t2i` warned (commit 838a8da); the pack's EMA (always warmed up) and the
refiner's (never warmed up) did not: `pack train --ema-decay 0.999` over 2 steps follows the
warm-up's ramp all along, and `refine train --ema-decay 0.999` over 2 steps leaves the EMA that
`refine apply` loads almost all initial weights. A preset's or the default value is never named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import shared_stack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _common(stack: dict[str, str]) -> list[str]:
    return ["--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]


def _refine(stack: dict[str, str], name: str, *flags: str) -> str:
    new = ["refine", "train", "--pack-run", "pack-tiny", "--batch-size", "4", "--steps", "2"]
    new += ["--base-channels", "8", "--gan-weight", "0", "--name", name, *flags]
    return cli_ok(*new, *_common(stack))


def _pack(stack: dict[str, str], name: str, *flags: str) -> str:
    new = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
    new += ["--steps", "2", "--batch-size", "4", "-c", "4", "--ch", "8", "--image-every", "0"]
    return cli_ok(*new, "--name", name, *flags, *_common(stack))


def test_refine_warns_of_a_given_ema_that_stays_initial(stack) -> None:
    out = _refine(stack, "ema-slow", "--ema-decay", "0.999")
    said = "Warning: refine.ema_decay = 0.999 (from flag) without the EMA warm-up"
    assert said in " ".join(out.split()), out
    log = (Path(stack["runs"]) / "ema-slow" / "log.txt").read_text()
    assert said in " ".join(log.split())  # in the run's log too
    assert "ema_decay" not in _refine(stack, "ema-preset")  # the preset's value: not named


def test_pack_warns_of_a_given_ema_the_warm_up_does_not_reach(stack) -> None:
    out = _pack(stack, "pk-ema-slow", "--ema-decay", "0.999")
    said = "Warning: pack.ema_decay = 0.999 (from flag) is not reached in this run (2 steps)"
    assert said in " ".join(out.split()), out
    assert "ema_decay" not in _pack(stack, "pk-ema-preset")
