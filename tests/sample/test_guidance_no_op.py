"""Guidance (scale ≠ 1) that would change nothing is refused before anything is written: an
interval that holds none of the sampler's evaluation times, or legacy channels that cover every
latent channel. Both used to write a `cfg4-…` folder and card whose images were those of another
setting (`--cfg 1`, plain `--cfg 4`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.stack import LATENT, _settings, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.paths import PROTOCOL_JSON
from repackctl.sample.plan import resolve_plan


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _sample(stack: dict[str, str], samples: Path, *extra: str):
    args = ["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--batch-size", "2"]
    args += ["--grid", "0", "--device", "cpu", "--seed", "5", "--runs", stack["runs"]]
    r = CliRunner().invoke(app, [*args, "--samples", str(samples), *extra])
    assert "Traceback" not in r.output, r.output
    return r


def _refused(r, samples: Path, *needles: str) -> None:
    assert r.exit_code == ConfigError.exit_code, r.output
    assert "Error:" in r.output and "Hint:" in r.output, r.output
    for needle in needles:
        assert needle in r.output, (needle, r.output)
    assert not samples.exists()  # no folder, not even the samples root


def test_an_interval_without_a_step_time_is_refused(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    # Euler, 2 steps: the model is called at t = 1 and t = 0.5 only
    r = _sample(stack, samples, "--cfg", "4", "--cfg-t-lo", "0", "--cfg-t-hi", "0")
    _refused(r, samples, "[0, 0]", "(1, 0.5)", "--cfg-t-hi", "--steps")
    r = _sample(stack, samples, "--cfg", "4", "--cfg-t-lo", "0.6", "--cfg-t-hi", "0.9")
    _refused(r, samples, "[0.6, 0.9]")


def test_an_interval_holding_one_step_time_guides_that_step(stack, tmp_path) -> None:
    """The bound is inclusive, as in the guidance itself: [0.5, 0.5] guides the t = 0.5 call."""
    samples = tmp_path / "samples"
    assert _sample(stack, samples, "--cfg", "1").exit_code == 0
    r = _sample(stack, samples, "--cfg", "4", "--cfg-t-lo", "0.5", "--cfg-t-hi", "0.5")
    assert r.exit_code == 0, r.output
    (plain,) = samples.glob("*--cfg1--*")
    (guided,) = samples.glob("*--cfg4-t0.5-0.5--*")
    assert json.loads((guided / PROTOCOL_JSON).read_text())["nfe"] == 3  # 1 + 2
    assert not np.array_equal(np.load(plain / "latents.npy"), np.load(guided / "latents.npy"))


@pytest.mark.parametrize("channels", [LATENT[0], 100])
def test_channels_covering_every_latent_channel_are_refused(stack, tmp_path, channels) -> None:
    samples = tmp_path / "samples"
    r = _sample(stack, samples, "--cfg", "4", "--cfg-channels", str(channels))
    _refused(r, samples, f"--cfg-channels {channels}", f"all {LATENT[0]} latent channels")
    assert "--cfg-channels 0" in r.output  # the hint: guide all channels


def test_fewer_channels_than_the_latents_still_guide(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    for flags in (("--cfg", "4"), ("--cfg", "4", "--cfg-channels", str(LATENT[0] - 1))):
        assert _sample(stack, samples, *flags).exit_code == 0
    (all_channels,) = samples.glob("*--cfg4--*")
    (some,) = samples.glob(f"*--cfg4-ch{LATENT[0] - 1}--*")
    assert not np.array_equal(np.load(all_channels / "latents.npy"), np.load(some / "latents.npy"))


def test_an_interval_from_sampling_json_is_named_as_such(stack) -> None:
    """An imported run's interval (t ≤ 0.89) holds no time of a 1-step Euler sampler (t = 1)."""
    cfg = _settings(stack, run="dit-tiny", steps=1).sample
    with pytest.raises(ConfigError, match=r"\[0, 0\.89\] \(from sampling\.json\)") as e:
        resolve_plan(cfg, {"cfg": 15.0, "cfg_t_hi": 0.89})
    assert "--steps" in e.value.hint
    # at scale 1 the interval does not apply, so it is not refused
    assert resolve_plan(cfg, {"cfg": 1.0, "cfg_t_hi": 0.89}).t_hi == 1.0
    with pytest.raises(ConfigError, match="--cfg-channels 3 \\(from sampling.json\\)"):
        resolve_plan(_settings(stack, run="dit-tiny").sample, {"cfg": 15.0, "cfg_channels": 3}, 3)


def test_autoguidance_by_the_main_model_itself_is_refused(stack, tmp_path) -> None:
    """`--guide RUN` naming the sampled run (its same checkpoint) guided v_main by itself:
    v_main + w·(v_main − v_main) = v_main, the plain samples at twice the cost, written under a
    `--guide-…` folder."""
    samples = tmp_path / "samples"
    r = _sample(stack, samples, "--cfg", "2", "--guide", "dit-tiny")
    _refused(r, samples, "is the main model itself", "--guide-checkpoint")
