"""``--steps`` and ``--epochs`` of one stage set in one layer of settings (both flags, both
variables, both keys of one config file) ask for two training lengths. The steps won silently, so
the epochs asked for were ignored: now both are refused, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_refused

from repackctl.errors import ConfigError
from repackctl.settings import resolve_settings


@pytest.mark.parametrize("group", ["pack", "refine"])
def test_steps_and_epochs_on_one_command_line_are_refused(group: str, tmp_path: Path) -> None:
    # the autouse sandbox sets the cache and runs roots under tmp_path
    out = cli_refused(2, group, "train", "--steps", "5", "--epochs", "3", "--device", "cpu")
    assert f"--steps 5 and --epochs 3 both set the {group} training length" in out, out
    assert "Hint: give one of them" in out and "Traceback" not in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("section", ["pack", "refine"])
def test_steps_and_epochs_in_one_file_or_the_environment_are_refused(
    section: str, tmp_path: Path
) -> None:
    config = tmp_path / "length.toml"
    config.write_text(f"[{section}]\nsteps = 5\nepochs = 3\n")
    with pytest.raises(ConfigError, match=f"{section}.steps = 5 and {section}.epochs = 3"):
        resolve_settings(config, {}, environ={})
    env = {f"REPACKCTL_{section.upper()}__STEPS": "5", f"REPACKCTL_{section.upper()}__EPOCHS": "3"}
    with pytest.raises(ConfigError, match=f"REPACKCTL_{section.upper()}__EPOCHS"):
        resolve_settings(None, {}, environ=env)
    # one layer above the other: the higher one wins, as before
    got = getattr(resolve_settings(config, {f"{section}.steps": 7}, environ={}).settings, section)
    assert got.steps == 7
