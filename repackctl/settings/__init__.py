"""Settings: defaults < ``--config FILE.toml`` < ``REPACKCTL_*`` environment < flags actually given.

One pydantic-settings model holds the settings shared by all commands (cache, runs, seed, device,
precision, num_workers, data roots) and one nested section per command (``[extract]`` in TOML,
``REPACKCTL_EXTRACT__BATCH_SIZE`` in the environment, ``--batch-size`` on the command line).

Each layer is read separately (pydantic-settings' own TOML and environment sources) so that every
resolved value knows where it came from; ``--show-config`` prints that provenance, and each command
that writes a cache entry or a run stores the resolved config beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from repackctl.errors import ConfigError
from repackctl.settings.benchmark import BenchmarkSettings
from repackctl.settings.captions import CaptionsSettings
from repackctl.settings.dit import DitSettings
from repackctl.settings.evaluate import EvaluateSettings
from repackctl.settings.extract import ExtractSettings
from repackctl.settings.filetypes import file_type_error
from repackctl.settings.names import (
    ENV_PREFIX,
    unknown_env_error,
    unknown_file_names,
    valid_keys_hint,
)
from repackctl.settings.pack import PackSettings
from repackctl.settings.refine import RefineSettings
from repackctl.settings.sample import SampleSettings
from repackctl.settings.t2i import T2iSettings

Precision = Literal["fp32", "bf16", "fp16"]
SEED_MAX = 2**32 - 1  # seeds are 32-bit words (sampling: repackctl.sample.plan.index_seed)


def _seed_in_range(seed: int) -> int:
    """Refuse a seed outside 0 … 2**32 − 1 (it would be folded onto another seed's results)."""
    if not 0 <= seed <= SEED_MAX:
        raise PydanticCustomError(
            "seed_range",
            "must lie in 0 … {max} (2**32 − 1), got {seed}: seeds are 32-bit words, so a "
            "larger or negative one would repeat the results of another seed",
            {"max": SEED_MAX, "seed": seed},
        )
    return seed


Seed = Annotated[int, AfterValidator(_seed_in_range)]


class Settings(BaseSettings):
    """All settings of repackctl."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
    )

    cache: str = Field(
        str(Path("~/.cache/repackctl").expanduser()),
        min_length=1,
        description="cache root: a local folder or an fsspec URL",
    )
    runs: str = Field("runs", min_length=1, description="folder that holds training runs")
    samples: str = Field(
        "samples", min_length=1, description="folder that holds generated sample sets"
    )
    seed: Seed = Field(0, description="global seed, 0 … 2**32 − 1")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps")
    precision: Precision = Field("fp32", description="fp32, bf16 or fp16")
    num_workers: int = Field(2, ge=0, description="DataLoader workers that decode images")
    memory_gb: float = Field(
        4.0,
        gt=0,
        description="size limit (GiB) under which pack, dit and refine load their cached "
        "training arrays into memory when their in_memory is none",
    )
    log_every_s: float = Field(
        30.0,
        gt=0,
        description="seconds between two plain progress lines when stderr is not a terminal "
        "(SLURM, nohup, | tee)",
    )
    imagenet_root: str | None = Field(
        None, min_length=1, description="ImageNet folder with train/ and val/ class sub-folders"
    )
    extract: ExtractSettings = ExtractSettings()
    pack: PackSettings = PackSettings()
    dit: DitSettings = DitSettings()
    captions: CaptionsSettings = CaptionsSettings()
    t2i: T2iSettings = T2iSettings()
    refine: RefineSettings = RefineSettings()
    sample: SampleSettings = SampleSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()

    @model_validator(mode="before")
    @classmethod
    def _apply_presets(cls, data: Any) -> Any:
        """Fill each section's preset values into the keys no layer gave (see ``apply_presets``)."""
        return apply_presets(data) if isinstance(data, dict) else data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # resolve_settings reads the file and environment layers itself (to know each value's
        # source) and validates the merged result; the model must not read them a second time
        return (init_settings,)


# --------------------------------------------------------------------------------------------
# Presets: resolved here, once, whoever builds the settings (CLI, TOML, environment, Python)

PRESET_SECTIONS = ("pack", "dit", "t2i", "refine")


# device nodes of the NVIDIA driver, ROCm and WSL2's GPU bridge: without one, CUDA cannot work
_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def gpu_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch on a machine with no GPU driver.

    Importing torch takes seconds; light commands (``cache ls``, ``runs ls``) resolve presets
    too, so the negative answer comes from the missing device nodes instead.
    """
    if "torch" not in sys.modules and not any(os.path.exists(n) for n in _GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def concrete_preset(section: str, name: str, data: dict[str, Any]) -> str:
    """``auto`` → ``small`` on a CPU (and for the built-in encoder's pack), ``paper`` on a GPU."""
    if name != "auto":
        return name
    device = str(data.get("device", "auto"))
    if device == "auto":
        gpu = gpu_available()
    else:
        gpu = device.startswith("cuda")
    pack = data.get("pack") or {}
    if (
        section == "pack"
        and gpu
        and "encoder" not in pack
        and (pack.get("features") or pack.get("entry"))
    ):
        # the encoder of named features is in the cache, read after the settings: `auto` would
        # take the built-in encoder's `small` for DINOv3 features on a GPU, without a word
        raise ConfigError(
            "pack preset auto chooses by the encoder (small for the built-in one, paper on a GPU "
            "for the others), and --features/--entry do not say which encoder made them",
            "pass --encoder NAME (the one the features were extracted with), or --preset paper "
            "(or small)",
        )
    if section == "pack" and pack.get("encoder", "builtin") == "builtin":
        return "small"
    return "paper" if gpu else "small"


def apply_presets(data: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``data`` whose preset sections hold their preset's values where no layer set one.

    A section given as a model keeps the fields that were set on it (``model_fields_set``).
    """
    data = dict(data)
    for section in PRESET_SECTIONS:
        model = Settings.model_fields[section].annotation
        given = data.get(section, {})
        if isinstance(given, BaseModel):
            given = given.model_dump(include=given.model_fields_set)
        given = dict(given)
        name = given.get("preset", model.model_fields["preset"].default)
        concrete = concrete_preset(section, name, {**data, section: given})
        if concrete not in model.PRESETS and concrete != "small":
            raise ConfigError(
                f"unknown {section} preset {name!r}", f"choose one of {', '.join(model.PRESETS)}"
            )
        values = preset_values(model, concrete, given)
        if section == "pack":
            values = _pack_method_values(given, values)
        data[section] = {**values, **given, "preset": concrete}
    return data


def preset_values(model: Any, preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The values ``preset`` fills into a section of which ``given`` was set by some layer.

    A training length given in ``epochs`` (and no ``steps``) takes no step count from the
    preset: otherwise the preset's ``steps`` would win over the epochs the user asked for."""
    values = dict(model.PRESETS.get(preset, {}))
    if given.get("epochs") is not None and "steps" not in given:
        values.pop("steps", None)
    return values


def _pack_method_values(given: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Token whitening and the projection form are options of the repack projection: a preset
    leaves them off for PCA (folded: no learned maps, no post_quant_conv), and an explicit
    ``whiten`` or official ``projection_form`` with ``method pca`` is refused (it was ignored)."""
    if given.get("method") != "pca":
        return values
    if given.get("whiten"):
        raise ConfigError(
            "pack.whiten is an option of the repack projection; the PCA baseline is not whitened",
            "drop --whiten, or use --method repack",
        )
    if given.get("projection_form") == "official":
        raise ConfigError(
            "pack.projection_form official is a form of the repack projection; the PCA baseline "
            "is a fixed map without post_quant_conv",
            "drop --projection-form, or use --method repack",
        )
    out = {**values, "whiten": False} if "whiten" in values else dict(values)
    return {**out, "projection_form": "folded"} if "projection_form" in out else out


def preset_sources(data: dict[str, Any], sources: dict[str, str]) -> dict[str, str]:
    """``key → "preset NAME"`` for every key a preset filled (no layer gave it)."""
    out = {}
    for section in PRESET_SECTIONS:
        model = Settings.model_fields[section].annotation
        given = data.get(section, {})
        name = given.get("preset", model.model_fields["preset"].default)
        concrete = concrete_preset(section, name, data)
        if name != concrete:
            out[f"{section}.preset"] = f"preset {name} → {concrete}"
        for key in preset_values(model, concrete, given):
            if f"{section}.{key}" not in sources:
                out[f"{section}.{key}"] = f"preset {concrete}"
    return out


# --------------------------------------------------------------------------------------------
# Layered resolution with provenance


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _invalid_setting(
    e: ValidationError, sources: dict[str, str], flag_names: dict[str, str] | None
) -> ConfigError:
    """The error of a value the model refuses, naming the layer it came from. No
    ``--show-config`` hint: that resolves the same layers and fails with the same error."""
    key = ".".join(str(p) for p in e.errors()[0]["loc"])
    below = sorted({s for k, s in sources.items() if k.startswith(key + ".")})
    where = sources.get(key) or " and ".join(below) or "a setting"
    if e.errors()[0]["type"] == "extra_forbidden":
        return ConfigError(
            f"unknown setting {key} (from {where})", f"remove it, or {valid_keys_hint(key)}"
        )
    flag = (flag_names or {}).get(key) or "--" + key.split(".")[-1].replace("_", "-")
    fix = f"fix the value of {flag}" if where == "flag" else f"fix the value of {key} ({where})"
    return ConfigError(f"invalid setting {_first_error(e)} (from {where})", fix)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "string_too_short" and (err.get("ctx") or {}).get("min_length") == 1:
        # an empty name or path is not "not given": refuse it rather than fall back on a default
        return f"{loc}: must not be empty (leave the setting out to use its default)"
    return f"{loc}: {err['msg']}"


class ResolvedSettings:
    """The validated settings plus where each value came from."""

    def __init__(self, settings: Settings, sources: dict[str, str]) -> None:
        self.settings = settings
        self.sources = sources

    def rows(self, sections: tuple[str, ...] | None = None) -> list[tuple[str, Any, str]]:
        """(dotted key, value, source) for every setting, optionally limited to some sections."""
        flat = _flatten(self.settings.model_dump(mode="json"))
        rows = []
        for key, value in flat.items():
            top = key.split(".")[0]
            if sections is not None and "." in key and top not in sections:
                continue
            rows.append((key, value, self.sources.get(key, "default")))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.settings.model_dump(mode="json"),
            "sources": {k: s for k, _, s in self.rows()},
        }


def resolve_settings(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    flag_names: dict[str, str] | None = None,
) -> ResolvedSettings:
    """Merge the four layers. ``flags`` maps dotted keys (``extract.batch_size``) to given values.

    Unknown keys in the TOML file or environment are errors (never silently ignored), and so is
    a number out of its range (:func:`repackctl.settings.checks.check_magnitudes`, here so that
    every caller, the CLI, the demo and library users alike, gets the check; ``flag_names``:
    dotted key → the flag a command renames it to, named in that error). Options that the lr
    schedule would ignore are refused where a run's settings are final
    (:func:`repackctl.settings.checks.check_schedules`, after a resume merged the stored ones).
    """
    env = dict(os.environ if environ is None else environ)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append(_file_layer(Path(config_file).expanduser(), env))
    layers.append(("env", _env_layer(env)))
    flag_data: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        _set_dotted(flag_data, key, value)
    layers.append(("flag", flag_data))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, data in layers:
        for key, value in _flatten(data).items():
            _set_dotted(merged, key, value)
            sources[key] = (
                f"env {ENV_PREFIX}{key.upper().replace('.', '__')}" if name == "env" else name
            )
    _length_by_layer(merged, sources)
    try:
        sources.update(preset_sources(merged, sources))
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        raise _invalid_setting(e, sources, flag_names) from None
    from repackctl.settings.checks import check_magnitudes

    check_magnitudes(settings, sources, flag_names)
    return ResolvedSettings(settings, sources)


#: the sections whose training length is ``steps`` or ``epochs`` (a higher layer wins)
LENGTH_SECTIONS = ("pack", "refine")
#: the layers in the order they override one another
LAYER_ORDER = ("file", "env", "flag")


def _length_by_layer(merged: dict[str, Any], sources: dict[str, str]) -> None:
    """Drop a section's ``steps`` that a lower layer gave than its ``epochs`` (a config file's
    ``steps`` under ``--epochs``): the stages take a given step count first, so the epochs given
    on the command line were silently ignored against the precedence. Given in one layer, both
    are refused."""
    for section in LENGTH_SECTIONS:
        steps_from = sources.get(f"{section}.steps", "").split(" ")[0]
        epochs_from = sources.get(f"{section}.epochs", "").split(" ")[0]
        if steps_from not in LAYER_ORDER or epochs_from not in LAYER_ORDER:
            continue
        given = merged.get(section)
        if not isinstance(given, dict) or given.get("epochs") is None:
            continue
        if steps_from == epochs_from and given.get("steps") is not None:
            _refuse_both_lengths(section, given, sources)
        if LAYER_ORDER.index(epochs_from) > LAYER_ORDER.index(steps_from):
            given.pop("steps", None)
            sources.pop(f"{section}.steps", None)


def _refuse_both_lengths(section: str, given: dict[str, Any], sources: dict[str, str]) -> None:
    """``steps`` and ``epochs`` of one section set in one layer (both flags, both variables or
    both keys of one file) ask for two training lengths: refused, rather than one ignored."""
    steps, epochs = given["steps"], given["epochs"]
    if sources[f"{section}.steps"] == "flag":
        both = f"--steps {steps} and --epochs {epochs}"
    else:
        both = f"{section}.steps = {steps} and {section}.epochs = {epochs} (from " + (
            f"{sources[f'{section}.steps']} and {sources[f'{section}.epochs']})"
        )
    raise ConfigError(
        f"{both} both set the {section} training length, in one layer of settings",
        "give one of them: --steps counts optimiser steps, --epochs passes over the data",
    )


CONFIG_ENV = f"{ENV_PREFIX}CONFIG"


def same_config_file(a: str | Path, b: str | Path) -> bool:
    """Whether two spellings of a config path name one file (``~``, relative and ``..`` parts
    resolved): ``--config c.toml`` and ``REPACKCTL_CONFIG=$PWD/c.toml`` are the same file."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _file_layer(path: Path, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The ``--config`` layer; a path that came from ``REPACKCTL_CONFIG`` is named as such."""
    from_env = CONFIG_ENV in env and same_config_file(env[CONFIG_ENV], path)
    where = f" (from {CONFIG_ENV})" if from_env else ""
    fix = (
        f"point {CONFIG_ENV} at an existing TOML file, or unset it"
        if from_env
        else "pass an existing TOML file to --config"
    )
    if path.is_dir():
        raise ConfigError(f"config file {path}{where} is a folder, not a TOML file", fix)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{where}", fix)
    try:
        data = TomlConfigSettingsSource(Settings, toml_file=path)()
    except Exception as e:  # tomllib.TOMLDecodeError and friends
        raise ConfigError(
            f"cannot parse {path}{where}: {e}", "check the TOML syntax of the file"
        ) from None
    unknown = unknown_file_names(data, f"{path}{where}")
    if unknown is not None:
        raise unknown
    mistyped = file_type_error(data, f"{path}{where}")
    if mistyped is not None:  # lax validation would convert it (cfg = true → 1.0)
        raise mistyped
    return f"file {path.name}", data


def _read_env(env: dict[str, str]) -> dict[str, Any]:
    """pydantic-settings' environment source, shown exactly ``env`` (it reads os.environ)."""
    saved = os.environ.copy()
    try:
        os.environ.clear()
        os.environ.update(env)
        return EnvSettingsSource(
            Settings, env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False
        )()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _env_layer(env: dict[str, str]) -> dict[str, Any]:
    """The ``REPACKCTL_*`` layer; a variable that cannot be read is named, alone, in the error."""
    unknown = _unknown_env(env)
    if unknown is not None:
        raise unknown
    try:
        return _read_env(env)
    except SettingsError as e:  # a value that should be JSON (a list, a section) is not
        raise _env_error(env, str(e)) from None


def _env_error(env: dict[str, str], error: str) -> ConfigError:
    """The error for an unreadable variable of field ``"<name>"`` named in ``error``: the
    variables of that field that fail on their own (a whole section, or one of its keys)."""
    field = error.split('"')[1].upper() if error.count('"') >= 2 else ""
    whole = f"{ENV_PREFIX}{field}"
    ours = [n for n in env if n.upper() == whole or n.upper().startswith(whole + "__")]
    failing = [n for n in ours if _unreadable(n, env[n])] or ours
    if failing and all(n.upper() != whole for n in failing):
        shown = ", ".join(f"{n}={env[n]!r}" for n in failing)
        return ConfigError(
            f"cannot read the environment variable {shown}: a list or tuple setting takes a "
            "JSON value",
            f"write it as JSON, e.g. {ENV_PREFIX}DIT__ALLOW_CHANGE='[\"lr\"]' or "
            f"{ENV_PREFIX}PACK__BETAS='[0.5, 0.9]'; or unset the variable",
        )
    return ConfigError(
        f"cannot read the environment variable {' / '.join(failing) or ENV_PREFIX + '*'}: {error}",
        f"a section takes its keys one by one, e.g. {ENV_PREFIX}EXTRACT__BATCH_SIZE=64; "
        "unset the variable or fix its value",
    )


def _unreadable(name: str, value: str) -> bool:
    """Whether the variable ``name=value`` alone cannot be read by the environment source."""
    try:
        _read_env({name: value})
    except SettingsError:
        return True
    return False


# variables that are switches of the tool itself, not settings
_SWITCHES = {"DEBUG", "DISABLE_PLUGIN_AUTOLOAD", "CONFIG", "TEST_CRASH_AFTER", "TEST_SHARD_DELAY"}


def _unknown_env(env: dict[str, str]) -> ConfigError | None:
    """The error for the first ``REPACKCTL_*`` variable that names no setting (None: none)."""
    fields = Settings.model_fields
    for name in env:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest.upper() in _SWITCHES:
            continue
        top, _, sub = rest.partition("__")
        if top not in fields:
            return unknown_env_error(name, top, sub)
        if sub:
            ann = fields[top].annotation
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return unknown_env_error(name, top, sub)
            if sub.split("__")[0] not in ann.model_fields:
                return unknown_env_error(name, top, sub)
    return None
