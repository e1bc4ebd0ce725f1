"""Unknown setting names (a ``REPACKCTL_*`` variable, a TOML section or key): errors that name the
wrong name, where it came from, the closest valid one and the command that lists the valid ones.

``--show-config`` resolves every layer before it prints, so it fails on the same unknown name:
a hint names it only as what to run once the name is fixed or gone.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from repackctl.errors import ConfigError

#: the command whose ``--show-config`` lists each section's keys (it shows its own section)
SHOW_COMMAND = {
    "extract": "repackctl extract",
    "pack": "repackctl pack train",
    "dit": "repackctl train dit",
    "captions": "repackctl captions",
    "t2i": "repackctl train t2i",
    "refine": "repackctl refine train",
    "sample": "repackctl sample",
    "evaluate": "repackctl evaluate fid",
    "benchmark": "repackctl benchmark train",
}


def _fields() -> dict[str, Any]:
    from repackctl.settings import Settings

    return Settings.model_fields


def section_model(name: str) -> type[BaseModel] | None:
    """The model of section ``name``; None for a top-level setting or an unknown name."""
    info = _fields().get(name)
    ann = info.annotation if info is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def sections() -> list[str]:
    return [n for n in _fields() if section_model(n) is not None]


def top_keys() -> list[str]:
    return [n for n in _fields() if section_model(n) is None]


def close(name: str, choices: list[str]) -> str | None:
    """The valid name closest to ``name`` (a typo), if any is close."""
    hits = difflib.get_close_matches(name.lower(), choices, n=1, cutoff=0.6)
    return hits[0] if hits else None


def lists_keys(section: str | None) -> str:
    """The command whose ``--show-config`` lists the keys of ``section`` (None: top level)."""
    if section is None:
        return (
            "any command's --show-config (e.g. `repackctl extract --show-config`) lists the "
            f"top-level settings ({', '.join(top_keys())})"
        )
    return f"`{SHOW_COMMAND[section]} --show-config` lists every {section}.* setting"


def valid_keys_hint(dotted: str) -> str:
    """Where to read the valid names next to the unknown setting ``dotted`` (``dit.stepz``)."""
    top, _, sub = dotted.partition(".")
    if sub and section_model(top) is not None:
        return lists_keys(top)
    return f"use a section ({', '.join(sections())}) or a top-level setting"


# ------------------------------------------------------------------------------ environment

ENV_PREFIX = "REPACKCTL_"  # the settings layer's (``repackctl.settings`` re-exports it)


def env_var(*parts: str) -> str:
    return ENV_PREFIX + "__".join(p.upper() for p in parts)


def unknown_env_error(name: str, top: str, sub: str) -> ConfigError:
    """The error for the variable ``name`` (``REPACKCTL_<top>[__<sub>]``) that names no
    setting: a section key, a section, or a top-level setting that is not there."""
    model = section_model(top)
    what = f"unknown setting in environment: {name}"
    unset = f"or unset {name}"
    if model is not None:  # a known section, an unknown key
        key = sub.split("__")[0]
        guess = close(key, list(model.model_fields))
        if guess is None:
            return ConfigError(
                f"{what} (section {top} has no key {key!r})",
                f"fix its name ({env_var(top, 'KEY')}) {unset}; then {lists_keys(top)}",
            )
        return ConfigError(
            f"{what} (section {top} has no key {key!r}; did you mean {guess!r}?)",
            f"rename it to {env_var(top, guess)}, {unset}; then {lists_keys(top)}",
        )
    if top in _fields():  # a top-level setting taken for a section
        return ConfigError(
            f"{what} ({top} is a top-level setting, not a section with keys)",
            f"set {env_var(top)} itself, {unset}",
        )
    return _unknown_top(what, top, sub, unset)


def _unknown_top(what: str, top: str, sub: str, unset: str) -> ConfigError:
    """An unknown section (``REPACKCTL_TRAIN__STEPS``) or top-level setting (``..._SEEDS``)."""
    if sub:
        guess = close(top, sections())
        known = f"the sections are {', '.join(sections())}"
        if guess is not None:
            fix = f"rename it to {env_var(guess, sub)}"
            return ConfigError(
                f"{what} (no section {top!r}; did you mean {guess!r}?)",
                f"{fix}, {unset}; {known}",
            )
        return ConfigError(
            f"{what} (no section {top!r}; {known})",
            f"name the section of the command it is for, e.g. {env_var('dit', sub)} for "
            f"`repackctl train dit`, {unset}",
        )
    guess = close(top, top_keys())
    if guess is not None:
        return ConfigError(
            f"{what} (no setting {top!r}; did you mean {guess!r}?)",
            f"rename it to {env_var(guess)}, {unset}",
        )
    return ConfigError(
        f"{what} (no top-level setting {top!r}; those are {', '.join(top_keys())})",
        f"a section's key is {ENV_PREFIX}SECTION__KEY (sections: {', '.join(sections())}); "
        f"fix its name, {unset}",
    )


# ------------------------------------------------------------------------------ TOML file


def unknown_file_names(data: dict[str, Any], where: str) -> ConfigError | None:
    """The error for the first section or key of the config file ``where`` that names no
    setting (None: all are known); ``data`` is the file's parsed content."""
    fields = _fields()
    for top, value in data.items():
        if top not in fields:
            return _unknown_file_top(top, isinstance(value, dict), where)
        model = section_model(top)
        if model is None or not isinstance(value, dict):
            continue  # a wrong type: the model's validation names it
        for key in value:
            if key not in model.model_fields:
                return _unknown_file_key(top, key, list(model.model_fields), where)
    return None


def _unknown_file_key(section: str, key: str, keys: list[str], where: str) -> ConfigError:
    guess = close(key, keys)
    mean = f"; did you mean {guess!r}?" if guess else ""
    fix = f"rename it to {guess}" if guess else "fix its name"
    return ConfigError(
        f"unknown key {key!r} in section [{section}] of config file {where}{mean}",
        f"{fix}, or remove it; then {lists_keys(section)}",
    )


def _unknown_file_top(name: str, table: bool, where: str) -> ConfigError:
    listed = ", ".join(f"[{s}]" for s in sections())
    if table:
        guess = close(name, sections())
        mean = f"; did you mean [{guess}]?" if guess else ""
        commands = ", ".join(f"[{s}] for `{SHOW_COMMAND[s][10:]}`" for s in ("dit", "t2i", "pack"))
        return ConfigError(
            f"unknown section [{name}] in config file {where}{mean}; the sections are {listed}",
            f"put its keys in the section of the command they are for (e.g. {commands}), "
            "or remove it",
        )
    guess = close(name, top_keys())
    mean = f"; did you mean {guess!r}?" if guess else ""
    return ConfigError(
        f"unknown top-level setting {name!r} in config file {where}{mean}; the top-level "
        f"settings are {', '.join(top_keys())}, the sections {listed}",
        f"{'rename it to ' + guess if guess else 'fix its name'}, move it into its section, "
        "or remove it",
    )
