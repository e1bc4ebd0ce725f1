"""CLI options generated from the settings declarations: each setting is declared once.

A settings section (``repackctl/settings/<section>.py``) declares every field with its type,
default, bounds and help; its ``PANELS`` table groups fields for ``--help`` and ``SHORT`` gives
short flags. :func:`settings_command` turns a plain function ``fn(resolved, **extra)`` into a Typer
command whose options are those fields (flag = field name with dashes), plus the options shared
by every command. An option left out on the command line is not passed on, so the layers below
it (preset, file, environment) keep their values; ``--help`` still shows the declared default.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from repackctl.cli.common import COMMON, handle_errors, resolve, show_config

if TYPE_CHECKING:
    from repackctl.settings import ResolvedSettings

COMMON_PANEL = "Common"
#: the common settings a command shows unless it names others
COMMON_KEYS = ("cache", "runs", "seed", "device", "precision", "num_workers")
#: … and those of the training commands that read cached arrays: they decode no images, so
#: they have no DataLoader workers (num_workers is for the commands that decode images)
TRAIN_COMMON = (*(k for k in COMMON_KEYS if k != "num_workers"), "memory_gb")


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _cli_type(ann: Any) -> tuple[Any, str]:
    """The Typer type for a settings annotation, and a choices suffix for the help text."""
    ann = _strip_optional(ann)
    if typing.get_origin(ann) is Literal:
        return str, "One of: " + ", ".join(str(a) for a in typing.get_args(ann)) + "."
    origin = typing.get_origin(ann)
    if origin is list:
        return list[typing.get_args(ann)[0]], "(repeat the flag)"
    if origin is tuple:
        return ann, ""
    return ann, ""


def _shown_default(info: FieldInfo, env: str | None = None) -> str:
    """The ``--help`` default of a setting; where the environment variable ``env`` sets it,
    that value, naming the variable (``--help`` would otherwise show the built-in default of a
    setting the environment changes, e.g. ``--cache`` under ``REPACKCTL_CACHE``)."""
    built_in = shown_value(info.get_default(call_default_factory=True))
    given = os.environ.get(env) if env else None
    return built_in if given is None else f"{given} from {env}; built-in {built_in}"


def shown_value(value: Any) -> str:
    """A value as ``--help`` writes a default (none, on/off, a list's items)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    return str(value)


def _preset_default(name: str, info: FieldInfo, model: type[BaseModel]) -> str:
    """The ``--help`` default of a field: the value the section's default preset gives it (each
    of small and paper for ``auto``, which picks one of them) where that preset sets it, else
    the declared default. A preset is always applied, so refine's declared ``disc_channels`` 64
    (small 16, paper 128) was shown as the default and never trained with."""
    presets = getattr(model, "PRESETS", {}) or {}
    preset = model.model_fields.get("preset")
    default = _shown_default(info)
    if not presets or preset is None:
        return default
    chosen = ("small", "paper") if preset.default == "auto" else (preset.default,)
    if not any(name in presets.get(p, {}) for p in chosen):
        return default
    shown = [
        shown_value(presets[p][name]) if name in presets.get(p, {}) else default for p in chosen
    ]
    if len(set(shown)) == 1:
        return shown[0]
    return " / ".join(f"{p} {v}" for p, v in zip(chosen, shown, strict=True))


def _help(info: FieldInfo, suffix: str, preset_note: str | None) -> str:
    text = (info.description or "").rstrip(".")
    text = text[:1].upper() + text[1:] + "." if text else ""
    if suffix:
        text += f" {suffix}"
    if preset_note:
        text += f" {preset_note}"
    return text


def field_parameter(
    name: str, info: FieldInfo, model: type[BaseModel], flag: str | None
) -> inspect.Parameter:
    ann, suffix = _cli_type(info.annotation)
    short = getattr(model, "SHORT", {}).get(name)
    flag = flag or "--" + name.replace("_", "-")
    names = [flag] if short is None else [flag, short]
    if ann is bool:
        names = [f"{flag}/--no-{flag[2:]}"] + ([short] if short else [])
    presets = getattr(model, "PRESETS", {})
    noted = [p for p, values in presets.items() if name in values]
    note = f"(set by the preset: {', '.join(noted)})" if noted else None
    option = typer.Option(
        *names,
        help=_help(info, suffix, note),
        show_default=_preset_default(name, info, model),
        rich_help_panel=_panel_of(model, name),
    )
    param = f"o_{name}"  # no clash with Python keywords (compile, …)
    return inspect.Parameter(
        param,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[ann | None, option],
    )


def _panel_of(model: type[BaseModel], name: str) -> str:
    for panel, names in getattr(model, "PANELS", {}).items():
        if name in names:
            return panel
    return "Options"


def _common_parameters(
    keys: tuple[str, ...], renames: dict[str, str] | None = None
) -> list[inspect.Parameter]:
    from repackctl.settings import ENV_PREFIX, Settings

    out = []
    for key in keys:
        flag, text = COMMON[key]
        flag = (renames or {}).get(key, flag)
        info = Settings.model_fields[key]
        ann, _ = _cli_type(info.annotation)
        option = typer.Option(
            flag,
            help=text,
            show_default=_shown_default(info, ENV_PREFIX + key.upper()),
            rich_help_panel=COMMON_PANEL,
        )
        out.append(
            inspect.Parameter(
                f"c_{key}",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[ann | None, option],
            )
        )
    for pname, option, ann in (
        ("config", typer.Option("--config", help="TOML file with settings (env: REPACKCTL_CONFIG).", rich_help_panel=COMMON_PANEL), str | None),
        ("show_config", typer.Option("--show-config", help="Print every resolved setting and where it came from, then exit.", rich_help_panel=COMMON_PANEL), bool),
    ):  # fmt: skip
        default = False if ann is bool else None
        out.append(
            inspect.Parameter(
                pname,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[ann, option],
            )
        )
    return out


def settings_command(
    section: str,
    *,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    flags: dict[str, str] | None = None,
    common: tuple[str, ...] = COMMON_KEYS,
    show: tuple[str, ...] | None = None,
    arguments: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``fn(resolved, **extra)`` a Typer command with the section's fields as options.

    ``include``/``exclude`` choose the fields; ``flags`` renames a field's flag (e.g. pack encode's
    ``encode_batch_size`` → ``--batch-size``; a common key renames its flag the same way, e.g.
    ``{"samples": "--samples-root"}``). ``fn``'s own parameters after ``resolved`` (positional
    arguments, command-only switches) keep their Typer declarations; ``arguments`` maps those of
    them that are settings to their dotted key (``{"source": "evaluate.source"}``).
    """
    from repackctl.settings import Settings

    model = Settings.model_fields[section].annotation
    renames, positional = flags or {}, arguments or {}
    taken = {key.split(".")[-1] for key in positional.values()}
    # the flags that name a setting otherwise than ``--`` + its name (for the refusals)
    flag_of = {(f"{section}.{k}" if k in model.model_fields else k): f for k, f in renames.items()}
    names = [
        n
        for n in model.model_fields
        if (include is None or n in include) and n not in exclude and n not in taken
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)  # fn's own module resolves them
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in list(inspect.signature(fn).parameters.values())[1:]
        ]
        params = [field_parameter(n, model.model_fields[n], model, renames.get(n)) for n in names]
        params = [*own, *params, *_common_parameters(common, renames)]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            config = kwargs.pop("config", None)
            show_only = kwargs.pop("show_config", False)
            given: dict[str, Any] = {}
            for name, key in positional.items():
                value = kwargs.pop(name, None)
                if value is not None:
                    given[key] = value
            for key in list(kwargs):
                if key.startswith(("o_", "c_")):
                    value = kwargs.pop(key)
                    if value is None or value == []:
                        continue
                    field = key[2:]
                    given[f"{section}.{field}" if key[0] == "o" else field] = value
            resolved = resolve(config, given, flag_of)
            if show_only:
                # a training command shows what an existing run of that name resumes with
                training = fn.__name__ in ("train", "dit", "t2i")
                if training:
                    resolved = started_values(resolved, (show or (section,))[0])
                if fn.__name__ == "sample":  # the values sample takes from the run's sampling.json
                    from repackctl.sample.plan import shown_sample_settings

                    resolved = shown_sample_settings(resolved)
                show_config(resolved, show or (section,), resumable=training)
                return None
            return fn(resolved, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the generated signature, not fn's
        return handle_errors(command)

    return decorate


def started_values(resolved: ResolvedSettings, section: str) -> ResolvedSettings:
    """``resolved`` with the values an existing run of ``section`` keeps as it started
    (``settings.resume.keep_started_values``, as its resume does): ``--show-config`` showed a
    paper-preset run from before ``tf32`` existed with the preset's ``tf32`` false, where the
    resume trains with true. ``resolved`` itself for a new run."""
    from repackctl.cli.common import resumed_settings
    from repackctl.settings import ResolvedSettings
    from repackctl.settings.resume import keep_started_values

    reconciled, run_dir = resumed_settings(resolved, section)
    if run_dir is None:
        return resolved
    settings, record, _ = keep_started_values(
        run_dir, reconciled.settings, reconciled.to_dict(), section, _started_without(section)
    )
    return ResolvedSettings(settings, record["sources"]) if record else resolved


def _started_without(section: str) -> dict[str, Any]:
    """The values a run of ``section`` trained with before the settings that name them existed
    (each stage's ``STARTED_WITHOUT``)."""
    if section in ("dit", "t2i"):
        from repackctl.dit.run import STARTED_WITHOUT

        return STARTED_WITHOUT
    if section == "refine":
        from repackctl.refine.task import STARTED_WITHOUT as REFINE_STARTED_WITHOUT

        return REFINE_STARTED_WITHOUT
    if section == "pack":
        from repackctl.pack.task import STARTED_WITHOUT as PACK_STARTED_WITHOUT

        return PACK_STARTED_WITHOUT
    return {}
