"""Type check of a ``--config`` file's values against the settings' declared types.

The models validate in pydantic's lax mode, which is right for the environment (every variable is
a string, ``REPACKCTL_SAMPLE__CFG=2`` must become 2.0) but wrong for TOML, whose values already
carry a type: lax mode took ``cfg = true`` as guidance 1.0, ``steps = true`` as one step,
``ema_decay = false`` as no EMA and ``cfg = "2"`` as 2.0, without a word. So the file's values
are checked here, before they are merged with the other layers: a boolean, a string and a number
are each accepted only where the field takes one. A whole number stays a valid float
(``lr = 1``), and a float a whole number where pydantic then checks that it has no fraction
(``steps = 1e5``); ranges, choices and lengths are left to the models, which name them.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from repackctl.errors import ConfigError
from repackctl.settings.names import section_model


def _arms(ann: Any) -> list[Any]:
    """The types a value may have under ``ann`` (a union's arms; ``None`` dropped, since TOML has
    no null: leaving the key out is how a file asks for none)."""
    if get_origin(ann) is Annotated:
        return _arms(get_args(ann)[0])
    if get_origin(ann) in (Union, types.UnionType):
        return [a for arm in get_args(ann) for a in _arms(arm)]
    return [] if ann is type(None) else [ann]


def _fits(value: Any, ann: Any) -> bool:
    """Whether the TOML value ``value`` has a type the annotation ``ann`` takes."""
    return any(_fits_arm(value, arm) for arm in _arms(ann))


def _fits_arm(value: Any, ann: Any) -> bool:
    """:func:`_fits` for one arm of a union; a list's items are checked one by one (a string in
    ``betas`` was converted as well)."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is Any:
        return True
    if ann is type(None):  # a Literal's None: TOML cannot write it
        return False
    if origin is Literal:
        return any(_fits_arm(value, type(choice)) for choice in args)
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            return False
        items = [a for a in args if a is not Ellipsis]
        if not items:
            return True
        if origin is tuple and Ellipsis not in args and len(items) == len(value):
            return all(_fits(v, a) for v, a in zip(value, items, strict=True))
        return all(any(_fits(v, a) for a in items) for v in value)
    if origin is dict or ann is dict:
        return isinstance(value, dict)
    if ann is bool:
        return isinstance(value, bool)
    if ann in (int, float):  # an int is a float (lr = 1); pydantic refuses steps = 2.5
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(ann, type) and issubclass(ann, str | PurePath):
        return isinstance(value, str)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return any(_fits_arm(value, type(member.value)) for member in ann)
    return True  # a type this check does not know: the model's validation decides


def _name(ann: Any) -> str:
    """The expected type in words (``a number``, ``a list of 2 numbers``)."""
    names = list(dict.fromkeys(_arm_name(arm) for arm in _arms(ann)))
    return " or ".join(names)


def _arm_name(ann: Any) -> str:
    """:func:`_name` for one arm of a union (a Literal names its choices, as TOML writes them)."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return "one of " + ", ".join(_toml(choice) for choice in args)
    if origin in (list, tuple, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and Ellipsis not in args and items:
            kinds = {_name(a) for a in items}
            if len(kinds) == 1:
                return f"a list of {len(items)} {_plural(kinds.pop())}"
        return f"a list of {_plural(_name(items[0]))}" if items else "a list"
    if ann is bool:
        return "a boolean (true or false)"
    if ann is int:
        return "a whole number"
    if ann is float:
        return "a number"
    if isinstance(ann, type) and issubclass(ann, str | PurePath):
        return "a string"
    return getattr(ann, "__name__", str(ann))


def _plural(name: str) -> str:
    """``a number`` → ``numbers`` (the items of a list)."""
    word = name.removeprefix("a ").removeprefix("an ")
    return word.split(" (")[0] + "s" if word != name else name


def _toml(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``"2"``, ``[0.5, 0.9]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _got(value: Any) -> str:
    """What the file gave, in words and as written (``the boolean true``)."""
    if isinstance(value, bool):
        kind = "the boolean"
    elif isinstance(value, int | float):
        kind = "the number"
    elif isinstance(value, str):
        kind = "the string"
    elif isinstance(value, list):
        kind = "the list"
    elif isinstance(value, dict):
        kind = "the table"
    elif isinstance(value, dt.date | dt.time):
        kind = "the date/time"
    else:
        kind = "the value"
    return f"{kind} {_toml(value)}"


def _example(key: str, value: Any, ann: Any) -> str:
    """The fix of ``key = value`` when one is plain (quotes dropped or added, brackets added),
    else empty; only a value the setting takes as it stands (a choice of a Literal) is shown."""
    tries: list[tuple[Any, str]] = []
    if isinstance(value, str):
        tries = [(_number(value), "no quotes"), (_boolean(value), "no quotes")]
        tries.append(([value], "in brackets"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        tries = [(str(value), "in quotes")]
    for fixed, how in tries:
        if fixed is not None and _fits(fixed, ann) and _is_choice(fixed, ann):
            return f"{key} = {_toml(fixed)} ({how})"
    return ""


def _is_choice(value: Any, ann: Any) -> bool:
    """Whether ``value`` is a choice of one of the Literal arms of ``ann`` (True: none is one)."""
    literals = [a for a in _arms(ann) if get_origin(a) is Literal]
    if not literals or len(literals) < len(_arms(ann)):
        return True
    return any(value in get_args(a) for a in literals)


def _number(text: str) -> int | float | None:
    """The number a quoted ``"2"`` or ``"1e-3"`` meant (None: not one)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _boolean(text: str) -> bool | None:
    """The boolean a quoted ``"true"`` meant (None: not one)."""
    return {"true": True, "false": False}.get(text.strip().lower())


def _mismatch(key: str, value: Any, ann: Any, where: str) -> ConfigError:
    """The error for ``key = value`` of the file ``where``: the type taken, the type given and,
    where one is plain, the line that fixes it."""
    section, _, name = key.rpartition(".")
    place = f"under [{section}]" if section else "at the top level"
    example = _example(name, value, ann)
    fix = f"write it as {example}" if example else f"give {_name(ann)}"
    return ConfigError(
        f"{key} in config file {where} must be {_name(ann)}, got {_got(value)} (a TOML value "
        "keeps its type: it is not converted)",
        f"{fix} {place} in {where}, or remove the key to use its default",
    )


def _not_a_table(section: str, value: Any, where: str) -> ConfigError:
    """``dit = 3``: the preset layer read it as a table and died with a traceback."""
    return ConfigError(
        f"{section} in config file {where} is a section (a table of keys), got {_got(value)}",
        f"write its keys under a [{section}] line in {where} (e.g. [{section}] then "
        f"`key = value` lines), or remove it",
    )


def file_type_error(data: dict[str, Any], where: str) -> ConfigError | None:
    """The error for the first value of the parsed config file ``where`` whose TOML type its
    setting does not take, or of a section written as a plain value (None: all fit). Unknown
    names are refused before this (:func:`repackctl.settings.names.unknown_file_names`)."""
    from repackctl.settings import Settings

    fields = Settings.model_fields
    for top, value in data.items():
        model = section_model(top)
        if model is None:
            if top in fields and not _fits(value, fields[top].annotation):
                return _mismatch(top, value, fields[top].annotation, where)
            continue
        if not isinstance(value, dict):
            return _not_a_table(top, value, where)
        for key, item in value.items():
            info = model.model_fields.get(key)
            if info is not None and not _fits(item, info.annotation):
                return _mismatch(f"{top}.{key}", item, info.annotation, where)
    return None
