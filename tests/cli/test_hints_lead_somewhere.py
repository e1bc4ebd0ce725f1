"""Hints that lead somewhere: each refusal names what the user got wrong, and what it tells the
user to run works (README-walk audit, session 35, findings 9-12).

- An unknown ``REPACKCTL_DIT__STEPZ``: the error names the close key (``steps``) and the hint
  the command whose ``--show-config`` lists the ``dit.*`` keys (it hinted `repackctl extract
  --show-config`, which lists only ``extract.*``); each section's hinted command lists it.
- A ``[train]`` section in a TOML file: the error names the file and the unknown section and
  lists the known ones; no ``--show-config`` hint (that fails with the same error).
- ``train t2i --text-encoder minilmm`` (a typo): refused as an unknown text encoder with the
  close one (it hinted ``repackctl captions … --text-encoder minilmm``, which fails so).
- ``REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1`` and a plugin's model id: the error says the plugin is
  installed and kept off (it said "install a plugin that registers it").

Real components: the command line through Typer's CliRunner; a toy packed cache for t2i.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CacheError, ConfigError, RegistryError
from repackctl.registry import clear_cache
from repackctl.settings import Settings

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]
SECTIONS = [n for n, f in Settings.model_fields.items() if hasattr(f.annotation, "model_fields")]


def _hinted_command(out: str) -> list[str]:
    """The arguments of the one `repackctl … --show-config` command a hint names."""
    (command,) = re.findall(r"`repackctl ([^`]*--show-config)`", out)
    return command.split()


def test_an_unknown_section_key_in_the_environment_hints_the_command_listing_that_section(
    monkeypatch,
):
    monkeypatch.setenv("REPACKCTL_DIT__STEPZ", "5")
    out = cli_refused(ConfigError.exit_code, "train", "dit", "--steps", "2", *CPU)
    assert "REPACKCTL_DIT__STEPZ" in out and "did you mean 'steps'?" in out, out
    assert "rename it to REPACKCTL_DIT__STEPS" in out, out
    command = _hinted_command(out)
    assert command == ["train", "dit", "--show-config"], out
    # as the hint says: renamed, the command lists the dit keys, this one from the variable
    monkeypatch.delenv("REPACKCTL_DIT__STEPZ")
    monkeypatch.setenv("REPACKCTL_DIT__STEPS", "5")
    shown = cli_ok(*command)
    assert "dit.steps = 5 # env REPACKCTL_DIT__STEPS" in shown, shown
    monkeypatch.delenv("REPACKCTL_DIT__STEPS")
    for section in SECTIONS:  # every section's hint names a command that lists that section
        monkeypatch.setenv(f"REPACKCTL_{section.upper()}__NO_SUCH_KEY", "1")
        out = cli_refused(ConfigError.exit_code, "extract", "--show-config")
        monkeypatch.delenv(f"REPACKCTL_{section.upper()}__NO_SUCH_KEY")
        listed = cli_ok(*_hinted_command(out))
        assert f" {section}." in f" {listed}", (section, out, listed)


def test_an_unknown_section_of_a_config_file_is_named_with_the_file_and_the_known_ones(
    tmp_path: Path,
):
    config = tmp_path / "d.toml"
    config.write_text("[train]\nsteps = 5\n")
    for args in (["train", "dit"], ["train", "dit", "--show-config"]):
        out = cli_refused(ConfigError.exit_code, *args, "--config", str(config), *CPU)
        assert f"unknown section [train] in config file {config}" in out, out
        assert "[dit], [captions], [t2i]" in out and "[dit] for `train dit`" in out, out
        assert "Extra inputs" not in out and "--show-config" not in out, out
    config.write_text("[dit]\nstepz = 5\n")  # a known section's unknown key: its close match
    out = cli_refused(ConfigError.exit_code, "train", "dit", "--config", str(config), *CPU)
    assert f"unknown key 'stepz' in section [dit] of config file {config}" in out, out
    assert "did you mean 'steps'?" in out, out
    config.write_text("[dit]\nsteps = 5\n")  # as the hint says
    command = _hinted_command(out)
    shown = cli_ok(*command, "--config", str(config))
    assert "dit.steps = 5 # file d.toml" in shown, shown


def test_a_misspelt_text_encoder_is_refused_with_the_close_one(
    tmp_path_factory, tmp_path, monkeypatch
):
    root = shared_packed_cache(tmp_path_factory, tmp_path / "w" / "cache", 16)
    monkeypatch.setenv("REPACKCTL_CACHE", str(root))
    monkeypatch.setenv("REPACKCTL_RUNS", str(root.parent / "runs"))
    train = ["train", "t2i", "--steps", "2", "-b", "8", *CPU]
    out = cli_refused(RegistryError.exit_code, *train, "--text-encoder", "minilmm")
    assert "unknown text encoder 'minilmm' (did you mean 'minilm'?)" in out, out
    assert "--text-encoder minilmm" not in out, out  # no command that fails the same way
    # the close one is known: what is missing then is its caption features, and the hint says so
    out = cli_refused(CacheError.exit_code, *train, "--text-encoder", "minilm")
    assert "no caption features of text encoder 'minilm'" in out, out
    assert re.search(r"`repackctl captions --entry \S+ --text-encoder minilm`", out), out
    # a caption group's name that is not there: the hinted command makes a group of that length
    out = cli_refused(CacheError.exit_code, *train, "--text-encoder", "minilm-l6--len9--0123abcd")
    assert "no caption features 'minilm-l6--len9--0123abcd'" in out, out
    assert re.search(r"`repackctl captions --entry \S+ --text-encoder minilm --max-length 9", out)


def test_a_plugin_kept_off_by_the_autoload_switch_is_named_as_such(monkeypatch):
    monkeypatch.setenv("REPACKCTL_DISABLE_PLUGIN_AUTOLOAD", "1")
    clear_cache()
    out = cli_refused(RegistryError.exit_code, "benchmark", "train", "--model", "uvit-tiny", *CPU)
    assert "model 'uvit-tiny' is registered by the installed plugin repackctl-extras" in out, out
    assert "REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1 keeps plugins from loading" in out, out
    assert "install a plugin" not in out and "unset REPACKCTL_DISABLE_PLUGIN_AUTOLOAD" in out, out
    # a typo of it says which id is meant, and that it is kept off
    out = cli_refused(RegistryError.exit_code, "benchmark", "train", "--model", "uvit-tin", *CPU)
    assert "did you mean 'uvit-tiny'? an installed plugin's, kept off by" in out, out


def test_config_flag_beside_the_environment_file_says_which_is_read(tmp_path, monkeypatch):
    # both given: the flag's file was read and the environment's ignored, without a word
    env_file, flag_file = tmp_path / "env.toml", tmp_path / "flag.toml"
    env_file.write_text("[extract]\nbatch_size = 9\n")
    flag_file.write_text("[extract]\nbatch_size = 7\n")
    monkeypatch.setenv("REPACKCTL_CONFIG", str(env_file))
    out = cli_ok("extract", "--config", str(flag_file), "--show-config")
    assert f"note: --config {flag_file} is read, not REPACKCTL_CONFIG={env_file}" in out, out
    assert "extract.batch_size = 7 # file flag.toml" in out, out
    # the same file both ways, or the environment alone: nothing to say
    out = cli_ok("extract", "--config", str(env_file), "--show-config")
    assert "note: --config" not in out, out
    # ... also spelt relative to the working folder (the note compared the paths as typed)
    monkeypatch.chdir(tmp_path)
    out = cli_ok("extract", "--config", "env.toml", "--show-config")
    assert "note: --config" not in out and "batch_size = 9" in out, out
