"""A config file's values keep their TOML type (audit D of session 36, finding 2).

The settings models validate in pydantic's lax mode, right for the environment (every variable
is a string) but wrong for a TOML file, whose values carry a type: ``cfg = true`` sampled at
guidance 1 (a ``--cfg1`` folder), ``steps = true`` trained one step, ``ema_decay = false`` and
``repa_weight = false`` turned the EMA and REPA off, ``cfg = "2"`` was read as 2.0, all without a
word, while ``REPACKCTL_SAMPLE__CFG=true`` was refused. A file's boolean, string or number is
now taken only where the setting takes one; a whole number stays a valid float (``lr = 1``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.settings import Settings, _file_layer, resolve_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pydantic-settings brings tomli
    import tomli as tomllib

README = Path(__file__).resolve().parents[2] / "README.md"


def _refused(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_settings(path, environ={})
    return info.value


@pytest.mark.parametrize(
    "text,key,expected,fix",
    [
        ("[sample]\ncfg = true\n", "sample.cfg", "a number", None),
        ('[sample]\ncfg = "2"\n', "sample.cfg", "a number", "cfg = 2 (no quotes)"),
        ("[dit]\nsteps = true\n", "dit.steps", "a whole number", None),
        ("[dit]\nema_decay = false\n", "dit.ema_decay", "a number", None),
        ("[dit]\nrepa_weight = false\n", "dit.repa_weight", "a number", None),
        ('[dit]\nlr = "1e-3"\n', "dit.lr", "a number", "lr = 0.001 (no quotes)"),
        ('seed = "3"\n', "seed", "a whole number", "seed = 3 (no quotes)"),
        ("[extract]\nflips = 1\n", "extract.flips", "a boolean (true or false)", None),
        (
            '[pack]\nwhiten = "true"\n',
            "pack.whiten",
            "a boolean (true or false)",
            "whiten = true (no quotes)",
        ),
        ('[pack]\nbetas = ["0.5", 0.9]\n', "pack.betas", "a list of 2 numbers", None),
        ("[pack]\nch_mult = [1, true]\n", "pack.ch_mult", "a list of whole numbers", None),
    ],
)
def test_a_value_the_lax_mode_converted_is_refused(tmp_path, text, key, expected, fix):
    err = _refused(tmp_path, text)
    where = str(tmp_path / "c.toml")
    assert err.message.startswith(f"{key} in config file {where} must be {expected}, got the ")
    assert "not converted" in err.message
    assert err.hint and where in err.hint and "remove the key" in err.hint
    if fix is not None:
        assert f"write it as {fix}" in err.hint


@pytest.mark.parametrize(
    "key,good,value,bad,expected",
    [
        ("dit.lr", "1", 1.0, "true", "a number"),  # a whole number where a float is expected
        ("dit.steps", "1e2", 100, '"100"', "a whole number"),  # pydantic refuses 2.5
        ("pack.betas", "[0, 0.9]", (0.0, 0.9), "[false, 0.9]", "a list of 2 numbers"),
        ("pack.ch_mult", "[1, 2, 4]", [1, 2, 4], '["1", "2"]', "a list of whole numbers"),
        ("dit.allow_change", '["lr"]', ["lr"], "[1]", "a list of strings"),
        ("sample.prompt", '["a red star"]', ["a red star"], "[2]", "a list of strings"),
        ("dit.preset", '"paper"', "paper", "true", 'one of "small", "paper", "repa"'),
        ("sample.sampler", '"heun"', "heun", "1", 'one of "euler", "heun", "sde"'),
        ("pack.whiten", "true", True, "0", "a boolean (true or false)"),
        ("runs", '"runs2"', "runs2", "2", "a string"),  # a path
        ("imagenet_root", '"/data/in"', "/data/in", "false", "a string"),  # an optional path
        ("dit.name", '"r1"', "r1", "5", "a string"),
    ],
)
def test_a_value_of_its_own_type_is_kept_another_refused(tmp_path, key, good, value, bad, expected):
    section, _, name = key.rpartition(".")
    head = f"[{section}]\n" if section else ""
    path = tmp_path / "ok.toml"
    path.write_text(f"{head}{name} = {good}\n")
    settings = resolve_settings(path, environ={}).settings
    got = getattr(getattr(settings, section), name) if section else getattr(settings, name)
    assert got == value and type(got) is type(value), (got, value)
    err = _refused(tmp_path, f"{head}{name} = {bad}\n")
    assert f"{key} in config file {tmp_path / 'c.toml'} must be {expected}, got " in err.message


def test_a_section_written_as_a_value_is_an_error_not_a_traceback(tmp_path):
    err = _refused(tmp_path, "dit = 3\n")  # was AttributeError: 'int' object has no attribute
    assert "dit in config file" in err.message and "is a section" in err.message
    assert "[dit]" in (err.hint or "")


def test_the_audits_cfg_true_through_the_cli_while_env_and_flags_parse_as_before(
    tmp_path, monkeypatch
):
    config = tmp_path / "c2.toml"
    config.write_text("[sample]\ncfg = true\n")
    out = cli_refused(2, "sample", "--run", "dit", "--config", str(config), "--show-config")
    assert f"sample.cfg in config file {config} must be a number, got the boolean true" in out
    monkeypatch.setenv("REPACKCTL_CONFIG", str(config))
    out = cli_refused(2, "train", "dit", "--show-config")  # every section of the file is checked
    assert "sample.cfg in config file" in out and "(from REPACKCTL_CONFIG)" in out
    monkeypatch.delenv("REPACKCTL_CONFIG")
    config.write_text("[sample]\ncfg = 2\n")
    out = cli_ok("sample", "--run", "dit", "--config", str(config), "--show-config")
    assert re.search(r"sample\.cfg = 2\.0 # file c2\.toml", out), out
    monkeypatch.setenv("REPACKCTL_SAMPLE__CFG", "3")  # the environment's strings are converted
    assert resolve_settings(config).settings.sample.cfg == 3.0
    assert resolve_settings(config, {"sample.cfg": 4.0}).settings.sample.cfg == 4.0
    monkeypatch.setenv("REPACKCTL_SAMPLE__CFG", "true")  # and refused as before
    with pytest.raises(ConfigError, match="invalid setting sample.cfg"):
        resolve_settings(config)


# ------------------------------------------------------------------ every setting, every type

PROBES: list[Any] = [True, "2", 3, 2.5, ["2"], [True], [3]]


def _same_kind(given: Any, got: Any) -> bool:
    """Whether ``got`` is ``given`` taken as it stands: a boolean stays one, a string stays one,
    a number stays a number (an int may become a float, a float an equal int), a list a list."""
    if isinstance(given, bool) or isinstance(given, str):
        return type(got) is type(given) and got == given
    if isinstance(given, int | float):
        return isinstance(got, int | float) and not isinstance(got, bool) and got == given
    if isinstance(given, list):
        return (
            isinstance(got, list | tuple)
            and len(got) == len(given)
            and all(_same_kind(a, b) for a, b in zip(given, got, strict=True))
        )
    return False


def _fields() -> list[tuple[str, str, type[BaseModel]]]:
    out = []
    for top, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            out += [(top, key, model) for key in model.model_fields]
        else:
            out.append(("", top, Settings))
    return out


def test_no_setting_takes_a_file_value_of_another_type(tmp_path, monkeypatch):
    """Each setting, given each TOML type in a file, either refuses it or keeps it as it is:
    nothing is converted (a future setting of a new type is covered, too). The file layer reads
    each probe's TOML text from memory: ~2,000 files written and read took seconds on a busy
    disk."""
    import repackctl.settings as layer

    path = tmp_path / "p.toml"
    path.write_text("")
    text = {"now": ""}
    monkeypatch.setattr(
        layer, "TomlConfigSettingsSource", lambda *a, **k: lambda: tomllib.loads(text["now"])
    )
    converted = []
    for section, key, model in _fields():
        for probe in PROBES:
            value = repr(probe).replace("'", '"').replace("True", "true")
            text["now"] = f"[{section}]\n{key} = {value}\n" if section else f"{key} = {value}\n"
            try:
                data = _file_layer(path, {})[1]
                data = data[section] if section else data
                got = getattr(model.model_validate(data), key)
            except (ConfigError, ValidationError):
                continue
            if not _same_kind(probe, got):
                converted.append(f"{section}.{key} = {value} → {got!r}".lstrip("."))
    assert not converted, f"{len(converted)} converted: {converted[:20]}"


# ------------------------------------------------------------------ the README's examples

#: examples the README shows as refused (the paragraph on a file's types)
README_REFUSED = {"[sample] cfg = true", '[sample] cfg = "2"', "[dit] name = 5"}


#: `[section] key = value` (a key of a section) or `key = value` (a top-level setting)
EXAMPLE = r"(?:\[(\w+)\] )?(\w+) = (.+)"


def _readme_examples() -> list[str]:
    """Every inline TOML example of the README: `[section] key = value` or `key = value`."""
    spans = re.findall(r"`([^`\n]+)`", README.read_text())
    keys = set(Settings.model_fields)
    return [s for s in spans if (m := re.fullmatch(EXAMPLE, s)) and (m[1] in keys or m[2] in keys)]


def test_every_readme_config_example_resolves_and_a_mistyped_one_is_refused(tmp_path):
    examples = _readme_examples()
    assert len(examples) >= 3, examples  # [extract] batch_size = 64, runs = "runs2", a preset
    for example in examples:
        section, key, value = re.fullmatch(EXAMPLE, example).groups()
        head = f"[{section}]\n" if section else ""
        path = tmp_path / "readme.toml"
        path.write_text(f"{head}{key} = {value}\n")
        if example in README_REFUSED:
            with pytest.raises(ConfigError, match="in config file"):
                resolve_settings(path, environ={})
            continue
        resolve_settings(path, environ={})
        # the same value in the other type (quoted / unquoted) is refused, not converted
        other = value[1:-1] if value.startswith('"') else f'"{value}"'
        other = "true" if other.isidentifier() else other
        err = _refused(tmp_path, f"{head}{key} = {other}\n")
        assert f"{section + '.' if section else ''}{key} in config file" in err.message
