"""Values that used to be accepted and then ignored or gave a wrong result are refused.

An EMA decay of 1 (the EMA never moves), an lr-schedule option the chosen schedule ignores, a
cosine floor above the lr, an empty run name or path taken as "not given", and environment
variables that cannot be read (the error names the variable that failed, and only that one).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from support import train_toy_script as toy
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.settings import Settings, resolve_settings
from repackctl.settings.resume import resume_settings


def _written(root: Path) -> list[str]:
    """Everything under ``root`` (the test's cache, runs and samples live there)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------ EMA decay


@pytest.mark.parametrize(
    "argv,setting",
    [
        (["train", "dit", "--ema-decay", "1"], "dit.ema_decay"),
        (["train", "t2i", "--ema-decay", "1"], "t2i.ema_decay"),
        (["refine", "train", "--pack-run", "p", "--ema-decay", "1"], "refine.ema_decay"),
        (["pack", "train", "--ema-decay", "1.0"], "pack.ema_decay"),
    ],
)
def test_an_ema_decay_of_one_is_refused_before_anything_is_written(argv, setting, tmp_path):
    out = cli_refused(2, *argv)
    assert f"invalid setting {setting}: must be below 1" in out
    assert "EMA never moves" in out
    assert _written(tmp_path) == []


def test_an_ema_decay_of_one_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("REPACKCTL_REFINE__EMA_DECAY", "1")
    out = cli_refused(2, "refine", "train", "--show-config")
    assert "refine.ema_decay: must be below 1" in out
    assert "env REPACKCTL_REFINE__EMA_DECAY" in out


def test_no_ema_and_a_decay_below_one_stay_allowed():
    for section in ("dit", "refine", "pack"):
        settings = Settings(**{section: {"ema_decay": 0.0}})
        assert getattr(settings, section).ema_decay == 0.0
        settings = Settings(**{section: {"ema_decay": 0.999}})
        assert getattr(settings, section).ema_decay == 0.999


def test_the_engine_refuses_an_ema_decay_of_one_too():
    with pytest.raises(ConfigError, match=r"ema_decay must lie in \[0, 1\)"):
        toy.make_config("r", ema_decay=1.0)
    assert toy.make_config("r", ema_decay=0.0).ema_decay == 0.0


# ------------------------------------------------------------------------- lr-schedule options


@pytest.mark.parametrize(
    "argv,option,suggested",
    [
        (["--warmup-steps", "1000", "--lr", "1e-3"], "dit.warmup_steps", "--schedule warmup"),
        (["--drop-step", "100"], "dit.drop_step", "--schedule step"),
        (["--drop-lr", "1e-5"], "dit.drop_lr", "--schedule step"),
        (["--min-lr", "1e-6"], "dit.min_lr", "--schedule cosine"),
        (["--schedule", "warmup", "--min-lr", "1e-6"], "dit.min_lr", "--schedule cosine"),
        (["--schedule", "cosine", "--drop-lr", "1e-5"], "dit.drop_lr", "--schedule step"),
        # the paper preset's schedule is step: a given warmup would be ignored as well
        (["--preset", "paper", "--warmup-steps", "10"], "dit.warmup_steps", "--schedule warmup"),
    ],
)
def test_a_schedule_option_the_schedule_ignores_is_refused(argv, option, suggested, tmp_path):
    out = cli_refused(2, "train", "dit", *argv)
    assert f"{option} = " in out and "it would be ignored" in out
    assert suggested in out and "drop --" in out
    assert _written(tmp_path) == []


def test_the_same_holds_for_t2i_and_for_a_value_from_env_or_file(tmp_path, monkeypatch):
    out = cli_refused(2, "train", "t2i", "--drop-lr", "1e-5", "--show-config")
    assert "t2i.drop_lr = 1e-05 (from flag)" in out and "--schedule step" in out
    toml = tmp_path / "c.toml"
    toml.write_text("[dit]\nwarmup_steps = 500\n")
    out = cli_refused(2, "train", "dit", "--config", str(toml), "--show-config")
    assert "dit.warmup_steps = 500 (from file c.toml)" in out and "remove it from c.toml" in out
    toml.unlink()
    monkeypatch.setenv("REPACKCTL_DIT__MIN_LR", "1e-6")
    out = cli_refused(2, "train", "dit", "--show-config")
    assert "dit.min_lr" in out and "unset REPACKCTL_DIT__MIN_LR" in out
    resolved = resolve_settings(flags={"dit.warmup_steps": 10}, environ={})
    with pytest.raises(ConfigError, match="dit.warmup_steps"):  # the Python pipeline's path
        resume_settings(tmp_path / "runs" / "new", resolved.settings, resolved.to_dict(), "dit")


@pytest.mark.parametrize(
    "argv",
    [
        ["--schedule", "warmup", "--warmup-steps", "10"],
        ["--schedule", "cosine", "--warmup-steps", "10", "--min-lr", "1e-6"],
        ["--schedule", "step", "--drop-step", "100", "--drop-lr", "1e-5"],
        ["--preset", "paper"],  # its drop_step / drop_lr are the step schedule's
        ["--preset", "paper", "--schedule", "cosine"],  # preset values are not "given"
        ["--preset", "repa"],
    ],
)
def test_options_the_schedule_uses_and_preset_values_are_accepted(argv):
    cli_ok("train", "dit", *argv, "--show-config")


def test_a_cosine_floor_above_the_lr_is_refused():
    out = cli_refused(2, "train", "dit", "--schedule", "cosine", "--lr", "1e-4", "--min-lr", "0.5")
    assert "dit.min_lr 0.5 is above dit.lr 0.0001" in out and "--min-lr" in out
    with pytest.raises(ConfigError, match="min_lr 0.5 is above lr 0.0001"):
        toy.make_config("r", schedule="cosine", lr=1e-4, min_lr=0.5)


def _started_cosine_run(root: Path) -> Path:
    """A dit run's folder as its first start left it: config.json with the settings record of
    ``--schedule cosine --lr 1e-3 --min-lr 1e-5``."""
    flags = {"dit.name": "d", "dit.steps": 4, "dit.schedule": "cosine", "dit.lr": 1e-3}
    record = resolve_settings(flags=flags | {"dit.min_lr": 1e-5}, environ={}).to_dict()
    run = root / "runs" / "d"
    run.mkdir(parents=True)
    engine = {"run_dir": str(run), "steps": 4, "global_batch": 8, "lr": 1e-3, "seed": 0}
    config = engine | {"ckpt_every": 2, "extra": {"settings": record}}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_a_resumed_cosine_run_takes_a_min_lr_without_the_schedule_again(tmp_path):
    """The schedule is checked on the settings the run goes on with: a resumed cosine run given
    only ``--min-lr`` keeps its cosine schedule (it was refused: "the schedule is constant")."""
    run = _started_cosine_run(tmp_path)
    out = cli_ok("train", "dit", "--name", "d", "--min-lr", "1e-5", "--show-config")
    assert "dit.schedule = 'cosine'" in out and "dit.min_lr = 1e-05" in out
    flags = {"dit.name": "d", "dit.min_lr": 2e-5, "dit.allow_change": ["min_lr"]}
    now = resolve_settings(flags=flags, environ={})
    settings, _, _ = resume_settings(run, now.settings, now.to_dict(), "dit")
    assert (settings.dit.schedule, settings.dit.min_lr) == ("cosine", 2e-5)
    # a new run given the same flag is still refused: its schedule is the default constant
    out = cli_refused(2, "train", "dit", "--name", "e", "--min-lr", "2e-5", "--show-config")
    assert "dit.min_lr = 2e-05 (from flag)" in out and "--schedule cosine" in out


def test_a_resumed_cosine_run_given_an_lr_below_its_stored_floor_is_refused(tmp_path):
    """``--lr 1e-6 --allow-change lr`` on a run that stored ``min_lr 1e-5``: the cosine "decay"
    would raise the lr tenfold (the check ran before the stored floor was merged in)."""
    run = _started_cosine_run(tmp_path)
    argv = ["train", "dit", "--name", "d", "--lr", "1e-6", "--allow-change", "lr"]
    out = cli_refused(2, *argv, "--show-config")
    assert "dit.min_lr 1e-05 is above dit.lr 1e-06" in out
    out = cli_refused(2, *argv, "--steps", "4")
    assert "dit.min_lr 1e-05 is above dit.lr 1e-06" in out
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


# ------------------------------------------------------------------ empty names and paths


def _optional_str_fields() -> list[tuple[str, str]]:
    """(section, field) of every optional string setting (a name or a path); ``""`` for top
    level. The evaluate section has its own checks (tests/evaluate)."""
    out = []
    for section, info in Settings.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            fields = ann.model_fields.items()
        else:
            fields, section = [(section, info)], ""
        for name, finfo in fields:
            if typing.get_origin(finfo.annotation) in (typing.Union, types.UnionType) and set(
                typing.get_args(finfo.annotation)
            ) == {str, type(None)}:
                out.append((section, name))
    return [f for f in out if f[0] != "evaluate"]


def test_the_optional_string_settings_are_found():
    fields = _optional_str_fields()
    assert ("sample", "run") in fields and ("", "imagenet_root") in fields
    assert ("refine", "pack_run") in fields and ("pack", "run") in fields
    assert len(fields) > 30


@pytest.mark.parametrize("section,name", _optional_str_fields())
def test_an_empty_name_or_path_is_refused(section, name):
    key = f"{section}.{name}" if section else name
    # a run name is a folder name: its own check says so (tests/test_hostile_inputs.py)
    refusal = "run name '' is not a safe name" if name == "name" else f"{key}: must not be empty"
    with pytest.raises(ConfigError, match=refusal):
        resolve_settings(flags={key: ""}, environ={})


@pytest.mark.parametrize(
    "argv,key",
    [
        (["sample", "-r", ""], "sample.run"),
        (["sample", "--out", ""], "sample.out"),
        (["sample", "--refiner", ""], "sample.refiner"),
        (["refine", "train", "--pack-run", ""], "refine.pack_run"),
        (["pack", "encode", "--run", ""], "pack.run"),
        (["evaluate", "recon", "--run", ""], "pack.run"),
        (["train", "dit", "--pack-run", ""], "dit.pack_run"),
    ],
)
def test_an_empty_run_is_not_taken_as_not_given(argv, key, tmp_path_factory, monkeypatch):
    from support.stack import shared_stack  # extract → pack train → a tiny DiT run (shared)

    stack = shared_stack(tmp_path_factory)
    monkeypatch.setenv("REPACKCTL_CACHE", stack["cache"])
    monkeypatch.setenv("REPACKCTL_RUNS", stack["runs"])
    monkeypatch.setenv("REPACKCTL_SAMPLES", stack["samples"])
    before = _written(Path(stack["runs"]).parent)
    out = cli_refused(2, *argv)
    assert f"invalid setting {key}: must not be empty" in out and "(from flag)" in out
    assert "newest" not in out  # no fallback on the newest run
    assert _written(Path(stack["runs"]).parent) == before


# ------------------------------------------------------------------ environment variables


def test_a_list_variable_that_is_not_json_is_named_alone(monkeypatch):
    monkeypatch.setenv("REPACKCTL_RUNS", "/x")
    monkeypatch.setenv("REPACKCTL_DIT__STEPS", "5")
    monkeypatch.setenv("REPACKCTL_DIT__ALLOW_CHANGE", "lr")
    out = cli_refused(2, "train", "dit", "--show-config")
    assert "REPACKCTL_DIT__ALLOW_CHANGE='lr'" in out and "JSON" in out
    assert "REPACKCTL_RUNS" not in out and "REPACKCTL_DIT__STEPS" not in out
    assert """REPACKCTL_DIT__ALLOW_CHANGE='["lr"]'""" in out  # the accepted form


def test_a_tuple_variable_that_is_not_json_is_named(monkeypatch):
    monkeypatch.setenv("REPACKCTL_PACK__BETAS", "0.5,0.9")
    out = cli_refused(2, "pack", "train", "--show-config")
    assert "REPACKCTL_PACK__BETAS='0.5,0.9'" in out and "JSON" in out
    assert "REPACKCTL_CACHE" not in out  # set by the sandbox, and readable


def test_the_json_forms_are_accepted(monkeypatch):
    monkeypatch.setenv("REPACKCTL_DIT__ALLOW_CHANGE", '["lr"]')
    monkeypatch.setenv("REPACKCTL_PACK__BETAS", "[0.5, 0.9]")
    settings = resolve_settings().settings
    assert settings.dit.allow_change == ["lr"] and settings.pack.betas == (0.5, 0.9)


def test_a_missing_config_file_from_the_environment_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("REPACKCTL_CONFIG", str(tmp_path / "nope.toml"))
    out = cli_refused(2, "train", "dit", "--show-config")
    assert "nope.toml (from REPACKCTL_CONFIG)" in out and "unset it" in out
    assert "--config" not in out
    monkeypatch.delenv("REPACKCTL_CONFIG")
    out = cli_refused(2, "train", "dit", "--config", str(tmp_path / "nope.toml"), "--show-config")
    assert "REPACKCTL_CONFIG" not in out and "to --config" in out


def test_a_config_folder_is_named_as_a_folder(tmp_path):
    """`--config DIR` said "config file not found" of a folder that is there."""
    out = cli_refused(2, "train", "dit", "--config", str(tmp_path), "--show-config")
    assert f"config file {tmp_path} is a folder, not a TOML file" in out, out
    assert "not found" not in out and "to --config" in out, out


def test_the_library_resolver_refuses_an_out_of_range_number_as_the_cli_does():
    """`resolve_settings` itself checks the magnitudes (the demo and library users call it
    without the CLI): a worker count that forked until memory ran out, from any layer."""
    with pytest.raises(ConfigError) as err:
        resolve_settings(flags={"num_workers": 10**20}, environ={})
    assert "num_workers" in str(err.value) and "out of range" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_settings(environ={"REPACKCTL_PACK__BATCH_SIZE": str(2**40)})
    assert "env REPACKCTL_PACK__BATCH_SIZE" in str(err.value)
    renamed = {"pack.batch_size": "--encode-batch"}
    with pytest.raises(ConfigError) as err:
        resolve_settings(flags={"pack.batch_size": 2**40}, environ={}, flag_names=renamed)
    assert "--encode-batch" in err.value.hint
    assert resolve_settings(flags={"num_workers": 4}, environ={}).settings.num_workers == 4
