"""Round-6 audit of the settings layer: a ``--model`` that silently overrode a given ``--size`` /
``--arch`` / ``--patch``, and ``--help`` defaults that no run used (a preset always fills them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from support.cli import cli_ok, cli_refused

from repackctl.cli.app import app
from repackctl.cli.options import shown_value
from repackctl.errors import ConfigError
from repackctl.settings import resolve_settings


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty cache and runs folders under ``tmp_path`` (the refusals come before any data)."""
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_model_refuses_a_given_size_it_would_ignore(roots: Path) -> None:
    # `--model tiny --size xl` trained the tiny model and recorded size xl as given
    args = ("train", "dit", "--model", "tiny", "--size", "xl", "--steps", "1", "--name", "mx")
    out = cli_refused(2, *args, "--device", "cpu")
    assert "dit.size = 'xl' (from flag)" in out and "dit.model 'tiny'" in out, out
    assert not (roots / "runs" / "mx").exists()
    # a patch the model id does not have is refused too (it was dropped for a registered id)
    out = cli_refused(2, "train", "dit", "--model", "lightningdit-s-2", "--patch", "1")
    assert "dit.patch = 1" in out, out


def test_model_refuses_a_size_from_the_environment(
    roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPACKCTL_DIT__SIZE", "xl")
    out = cli_refused(2, "train", "dit", "--model", "tiny", "--show-config")
    assert "REPACKCTL_DIT__SIZE" in out, out


def test_model_keeps_what_it_names_and_the_tiny_patch(roots: Path) -> None:
    # values the id names itself, the tiny model's patch option and a preset's values act
    for extra in (
        ("--model", "lightningdit-s-2", "--size", "s", "--arch", "lightningdit"),
        ("--model", "tiny", "--patch", "2"),
        ("--model", "lightningdit-b-1", "--preset", "paper"),
    ):
        cli_ok("train", "dit", *extra, "--show-config")
    # a run that stored such a value before resumes with it (no longer given now)
    resolved = resolve_settings(None, {"dit.model": "tiny"}, environ={})
    sources = {**resolved.sources, "dit.size": "stored run config"}
    resolved.settings.dit.size = "xl"
    resolved.settings.dit.check_model_named("dit", sources)
    with pytest.raises(ConfigError):
        resolved.settings.dit.check_model_named("dit", {**sources, "dit.size": "flag"})


def _shown(group: str, command: str) -> dict[str, str]:
    """``--help``'s default of each generated option of ``repackctl GROUP COMMAND``."""
    groups = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    cmd = groups[group].commands[command]
    return {p.name[2:]: str(p.show_default) for p in cmd.params if p.name.startswith("o_")}


@pytest.mark.parametrize(
    ("group", "command", "section"),
    [("refine", "train", "refine"), ("pack", "train", "pack"), ("train", "dit", "dit")],
)
def test_help_defaults_are_what_runs(group: str, command: str, section: str) -> None:
    """Each ``--help`` default is the value a run without that flag takes: refine showed
    ``--disc-channels 64`` and ``--ckpt-every 1000``, which neither of its presets uses."""
    shown = _shown(group, command)
    if section == "refine":
        assert shown["disc_channels"] == "small 16 / paper 128"
        assert shown["ckpt_every"] == "small 100 / paper 2500"
    on_cpu = resolve_settings(None, {"device": "cpu"}, environ={}).settings
    paper = resolve_settings(
        None, {"device": "cpu", f"{section}.preset": "paper"}, environ={}
    ).settings
    for name, text in shown.items():
        if name == "preset":
            continue
        if " / " in text:  # auto picks one of the two presets
            by_preset = dict(part.split(" ", 1) for part in text.split(" / "))
            assert by_preset["paper"] == shown_value(getattr(getattr(paper, section), name)), name
            text = by_preset["small"]
        assert text == shown_value(getattr(getattr(on_cpu, section), name)), (name, text)


@pytest.mark.parametrize("section", ["pack", "refine"])
def test_epochs_flag_wins_over_steps_of_a_lower_layer(
    section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--epochs`` on the command line over a config file's (or the environment's) ``steps``:
    the stages take a given step count first, so the epochs flag was silently ignored."""
    config = tmp_path / "length.toml"
    config.write_text(f"[{section}]\nsteps = 5\n")
    flags = {"device": "cpu", f"{section}.epochs": 3}
    got = getattr(resolve_settings(config, flags, environ={}).settings, section)
    assert (got.steps, got.epochs) == (None, 3)
    env = {f"REPACKCTL_{section.upper()}__STEPS": "5"}
    got = getattr(resolve_settings(None, flags, environ=env).settings, section)
    assert (got.steps, got.epochs) == (None, 3)
    env = {f"REPACKCTL_{section.upper()}__EPOCHS": "3"}
    got = getattr(resolve_settings(config, {}, environ=env).settings, section)
    assert (got.steps, got.epochs) == (None, 3)
    # steps of a higher layer still win (both in one layer: tests/cli/test_steps_and_epochs.py)
    config.write_text(f"[{section}]\nepochs = 3\n")
    env = {f"REPACKCTL_{section.upper()}__STEPS": "5"}
    got = getattr(resolve_settings(config, {}, environ=env).settings, section)
    assert (got.steps, got.epochs) == (5, 3)
    config.write_text(f"[{section}]\nsteps = 5\n")
    # what the command shows (and its run records) is the same
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    group = "pack" if section == "pack" else "refine"
    out = cli_ok(group, "train", "--config", str(config), "--epochs", "3", "--show-config")
    assert f"{section}.steps = None" in out and f"{section}.epochs = 3 # flag" in out, out
