"""Values and checkpoints that `sample` refuses, with messages that name what is wrong.

Found by an audit of silent wrong answers (session 36, D item 11): the non-finite hint offered
"sample in fp32 (--precision fp32)" to runs already sampling in fp32; ``--shift 1e30`` was
accepted although every step time rounds to 1.0 (a "2-step" folder of one Euler jump); a
checkpoint whose state.json records another depth was refused with "checkpoint is tiny (D=64),
run expects tiny (D=64)", naming only the width, which was the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.ckpt_state import write_state
from support.stack import make_dit_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import CheckpointError, ConfigError
from repackctl.sample.plan import resolve_plan
from repackctl.settings.sample import SampleSettings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _sample(stack: dict[str, str], samples: Path, run: str, *extra: str):
    args = ["sample", "-r", run, "-n", "2", "--steps", "2", "--grid", "0", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "--runs", stack["runs"], "--samples", str(samples), *extra])
    assert "Traceback" not in r.output, r.output
    assert "Error:" in r.output and "Hint:" in r.output, r.output
    assert not samples.exists() or not list(samples.rglob("*.png"))  # no sample written
    return r, " ".join(r.output.split())


def test_the_non_finite_hint_offers_only_what_changes_something(stack, tmp_path) -> None:
    r, out = _sample(stack, tmp_path / "s", "dit-tiny", "--cfg", "1e300")
    assert "not finite" in out and "lower --cfg" in out, out
    assert "--precision" not in out, out  # the run samples in fp32 already
    from repackctl.sample.generate import non_finite_hint

    assert "--precision fp32" in non_finite_hint("bf16", 4.0)
    plain = non_finite_hint("fp32", 1.0)  # no guidance to lower, fp32 already: the weights
    assert "--cfg" not in plain and "--precision" not in plain and "runs info" in plain


@pytest.mark.parametrize(
    ("kind", "shift", "steps"),
    [("euler", 1e30, 2), ("heun", 1e30, 2), ("sde", 1e30, 4), ("euler", 1e-30, 2)],
)
def test_a_shift_whose_time_grid_stalls_is_refused(kind, shift, steps) -> None:
    cfg = SampleSettings(sampler=kind, shift=shift, steps=steps)
    with pytest.raises(ConfigError) as e:
        resolve_plan(cfg, {})
    assert f"--shift {shift:g} (given)" in e.value.message and "degenerate" in e.value.message
    assert "--shift nearer 1" in e.value.hint


def test_a_large_shift_that_still_moves_is_kept() -> None:
    # 1e7 with 2 steps: 1, 0.99999988, 0 in float32 (distinct); 50 steps repeat 1.0
    assert resolve_plan(SampleSettings(shift=1e7, steps=2), {}).spec.shift == 1e7
    assert resolve_plan(SampleSettings(sampler="heun", shift=3.0, steps=250), {})
    with pytest.raises(ConfigError, match="degenerate"):
        resolve_plan(SampleSettings(shift=1e7, steps=50), {})


def test_a_sampling_json_shift_is_named_with_its_file(stack, tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_plan(SampleSettings(steps=2), {"shift": 1e30})
    assert "(from the run's sampling.json)" in e.value.message, e.value.message
    r, out = _sample(stack, tmp_path / "s", "dit-tiny", "--shift", "1e30")
    assert r.exit_code == ConfigError.exit_code, out  # before: rc 0, a "2-step" folder
    assert "--shift 1e+30 (given)" in out and "1, 1, 0" in out, out


def test_a_checkpoint_recording_another_depth_names_the_depth(stack, tmp_path) -> None:
    ckpt = make_dit_run(stack["runs"], "dit-deeper", seed=3)
    state = json.loads((ckpt / "state.json").read_text())
    state["extra"]["model_config"]["depth"] = 3  # the weights have 2 blocks
    write_state(ckpt / "state.json", state)
    r, out = _sample(stack, tmp_path / "s", "dit-deeper")
    assert r.exit_code == CheckpointError.exit_code, out
    assert "depth 2 in the weights, 3 recorded" in out, out
    assert "width" not in out.split("Hint:")[0], out  # the width is the same: not named


def _aside(folder: Path) -> Path:
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    return aside


def test_weights_removed_after_loading_are_an_error_naming_them(stack, tmp_path, monkeypatch):
    """Another process removes the checkpoint folder between the weights' load and their
    digest (the samples' identity): before, a `FileNotFoundError` traceback."""
    import repackctl.train.checkpoint as ckpt_io

    ckpt = make_dit_run(stack["runs"], "dit-removed", seed=4)
    real = ckpt_io.load_file

    def load_then_removed(path: str):
        sd = real(path)
        if Path(path).parent == ckpt:
            _aside(ckpt)
        return sd

    monkeypatch.setattr(ckpt_io, "load_file", load_then_removed)
    r, out = _sample(stack, tmp_path / "s", "dit-removed")
    assert r.exit_code == CheckpointError.exit_code, out
    assert f"{ckpt / 'ema.safetensors'} vanished while it was read" in out, out


def test_a_newest_checkpoint_replaced_while_verified_is_chosen_again(stack, tmp_path, monkeypatch):
    """The run's newest folder is replaced while its weights are hashed (removed, then copied
    back): the choice is made again, as for a folder pruned meanwhile; before, the run was
    called damaged (or a traceback)."""
    import repackctl.train.checkpoint as ckpt_io

    ckpt = make_dit_run(stack["runs"], "dit-replaced", seed=5)
    real, done = ckpt_io.sha256_file_cached, []

    def replaced_while_hashed(path):
        if Path(path).parent != ckpt or done:
            return real(path)
        done.append(path)
        aside = _aside(ckpt)  # the folder is gone while this file is hashed …
        try:
            return real(path)
        finally:
            aside.rename(ckpt)  # … and back (its copy) for the next choice

    monkeypatch.setattr(ckpt_io, "sha256_file_cached", replaced_while_hashed)
    monkeypatch.setattr(ckpt_io, "_WRITTEN", {})  # as another process: the files are hashed
    args = ["sample", "-r", "dit-replaced", "-n", "2", "--steps", "2", "--grid", "0"]
    args += ["--device", "cpu", "--runs", stack["runs"], "--samples", str(tmp_path / "s")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and done, r.output
