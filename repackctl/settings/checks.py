"""Checks shared by several settings sections (each section declares its own fields).

Kept apart from ``repackctl.settings`` (which imports every section) so that a section can use
them without an import cycle.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from repackctl.errors import ConfigError

#: the first word of a settings source that means "the user gave this value" (a flag, an
#: environment variable or a config file), as opposed to a default or a preset value
GIVEN_LAYERS = ("flag", "env", "file")


def ema_decay_below_one(value: float | None) -> float | None:
    """Refuse an EMA decay of 1 or more: the average would never move from the initial weights,
    and sampling and refining use the average, so the training would have no effect."""
    if value is not None and value >= 1:
        raise PydanticCustomError(
            "ema_decay_range",
            "must be below 1, got {value}: with a decay of 1 the EMA never moves from the "
            "initial weights, and sampling uses the EMA (0 = no EMA: the EMA copy is the weights)",
            {"value": value},
        )
    return value


def user_given(source: str) -> bool:
    """Whether a settings source (``flag``, ``env NAME``, ``file NAME``, ``preset NAME``,
    ``default``) is one where the user gave the value."""
    return source.split(" ")[0] in GIVEN_LAYERS


def undo_given(source: str, flag: str) -> str:
    """How to take back a value the user gave through ``source`` (``flag``: its flag)."""
    if source.startswith("env "):
        return f"unset {source.split(' ', 1)[1]}"
    if source.startswith("file "):
        return f"remove it from {source.split(' ', 1)[1]}"
    return f"drop {flag}"


def refuse_ignored(section: str, name: str, value: Any, source: str, why: str, fix: str) -> None:
    """Refuse ``section.name = value``, given through ``source``, that the run would ignore:
    ``why`` says what makes it ignored, ``fix`` how to make it act (the hint adds how to take
    the value back; a switch given off is named by its ``--no-`` flag)."""
    flag = ("--no-" if value is False else "--") + name.replace("_", "-")
    raise ConfigError(
        f"{section}.{name} = {value!r} (from {source}) {why}: it would be ignored",
        f"{fix}, or {undo_given(source, flag)}",
    )


def check_term_options(
    values: Any,
    section: str,
    sources: dict[str, str],
    options: tuple[str, ...],
    switch: str,
    term: str,
    turn_on: str,
) -> None:
    """Refuse each of ``options`` (settings of ``values``, the ``section``) that only tune
    ``term`` (e.g. "the REPA alignment loss") when the user gave it while that term is off;
    ``switch`` is the setting whose value turned the term off, ``turn_on`` how to turn it on.
    A preset's or the default value of such an option is harmless and never refused."""
    switch_from = sources.get(f"{section}.{switch}", "default")
    for name in options:
        source = sources.get(f"{section}.{name}", "default")
        if user_given(source):
            why = (
                f"tunes {term}, but {section}.{switch} is {getattr(values, switch)!r} (from "
                f"{switch_from}), which turns that off"
            )
            refuse_ignored(section, name, getattr(values, name), source, why, turn_on)


def check_gan_options(values: Any, section: str, sources: dict[str, str], options: tuple) -> None:
    """Refuse the discriminator's ``options`` given with ``gan_weight`` 0, which builds no
    discriminator (``pack train`` and ``refine train``; see :func:`check_term_options`)."""
    if values.gan_weight == 0:
        check_term_options(
            values,
            section,
            sources,
            options,
            "gan_weight",
            "the GAN term and its discriminator",
            "pass --gan-weight 0.5 (any weight > 0 turns the GAN on)",
        )


def check_output_options(values: Any, section: str, sources: dict[str, str]) -> None:
    """Refuse the options of the image grids given with ``image_every`` 0 (no grid is ever
    made: ``image_steps`` of train dit / t2i, ``grid_images`` of pack train) and ``ema_warmup``
    given on with ``ema_decay`` 0 (no EMA: the EMA copy is the weights, there is no decay to ramp
    up). Each was accepted, recorded and ignored (see :func:`check_term_options`)."""
    if getattr(values, "image_every", None) == 0:
        grid = tuple(n for n in GRID_OPTIONS if n in type(values).model_fields)
        turn_on = "pass --image-every N with N >= 1 (a grid every N steps and at the end)"
        check_term_options(
            values, section, sources, grid, "image_every", "the image grids", turn_on
        )
    # only a warm-up switched ON is ignored: --no-ema-warmup with no EMA asks for what is so
    no_ema = getattr(values, "ema_decay", None) == 0 and getattr(values, "ema_warmup", False)
    if no_ema and "ema_warmup" in type(values).model_fields:
        turn_on = "pass --ema-decay D with 0 < D < 1 (e.g. 0.9999) to keep an EMA"
        check_term_options(
            values, section, sources, ("ema_warmup",), "ema_decay", "the EMA decay", turn_on
        )


#: the options of the image grids a training writes every ``image_every`` steps
GRID_OPTIONS = ("image_steps", "grid_images")


def check_file_term(
    values: Any,
    section: str,
    sources: dict[str, str],
    pair: tuple[str, str],
    term: str,
    file_hint: str,
) -> None:
    """Refuse a term's weight the user gave above 0 while the term's local file is not set
    (``pair``: the weight's and the file's setting names, e.g. ``perceptual_weight`` and
    ``lpips_weights``): the run would train without ``term``, with a warning at most; and the
    file given while the weight is 0, which loads nothing. A preset's or the default weight
    without a file stays a warning (presets name LPIPS; an offline machine has no weights).
    ``file_hint`` says which file to pass."""
    weight, file = pair
    weight_from = sources.get(f"{section}.{weight}", "default")
    if getattr(values, file) is None and (getattr(values, weight) or 0) > 0:
        if user_given(weight_from):
            file_flag = "--" + file.replace("_", "-")
            refuse_ignored(
                section,
                weight,
                getattr(values, weight),
                weight_from,
                f"weighs {term}, but {section}.{file} is not set, and without it that term is off",
                f"pass {file_flag} with {file_hint}",
            )
    if (getattr(values, weight) or 0) == 0:
        turn_on = f"pass --{weight.replace('_', '-')} W with W > 0 to use it"
        check_term_options(values, section, sources, (file,), weight, term, turn_on)


def check_schedules(settings: Any, sources: dict[str, str], section: str) -> None:
    """Run ``section``'s checks of options that the run would ignore, on the settings its run
    trains with: ``check_schedule`` (dit and t2i: lr-schedule options the schedule does not
    use) and ``check_terms`` (options of a loss term that is off: REPA with λ 0, the KL term of
    a PCA pack).

    Called where those are final: a new run's settings as given, a resumed run's once its stored
    values are merged in (a resumed cosine run given only ``--min-lr`` keeps its schedule, and a
    new ``--lr`` below its stored ``min_lr`` is caught). ``sources``: dotted key → source."""
    part = getattr(settings, section, None)
    for hook in ("check_schedule", "check_terms"):
        check = getattr(part, hook, None)
        if check is not None:
            check(section, sources)


# names a stage's own resume checks take that are no setting of its section: pack's TF32 choice
# (``pack.task._check_resume_tf32``, from the preset) and the loss weights its plan derives
# (``pack.task._check_resume_loss``: LossConfig fields without a pack setting of their name)
STAGE_ALLOW_NAMES: dict[str, tuple[str, ...]] = {
    "pack": ("tf32", "ffl_alpha", "ffl_patch_factor", "adaptive_gan_weight"),
}


def allow_change_names(settings: Any, section: str) -> list[str]:
    """The names ``--allow-change`` takes for a ``section`` run: ``all``, each setting of the
    section (``lr``, or ``dit.lr``) and each common one (``precision``, ``seed`` …), as
    ``repackctl.settings.resume.reconcile`` and the stages' own resume checks match them."""
    fields = type(settings).model_fields
    common = [n for n, f in fields.items() if not _is_section(f.annotation)]
    own = [*type(getattr(settings, section)).model_fields, *STAGE_ALLOW_NAMES.get(section, ())]
    return ["all", *own, *(f"{section}.{n}" for n in own), *common]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def check_allow_change(settings: Any, section: str, sources: dict[str, str]) -> None:
    """Refuse an ``--allow-change`` name that is no setting of a ``section`` run: a typo was
    accepted silently, and the change the user meant to allow was then refused (or they took
    it for allowed). The error lists the closest names. ``sources``: dotted key → source."""
    names = allow_change_names(settings, section)
    for name in getattr(getattr(settings, section), "allow_change", None) or []:
        if name in names:
            continue
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        close += [n for n in names if n.startswith(name) and n not in close][: 3 - len(close)]
        near = f" (did you mean {' or '.join(close)}?)" if close else ""
        source = sources.get(f"{section}.allow_change", "flag")
        raise ConfigError(
            f"--allow-change {name!r} (from {source}) is no {section} setting{near}",
            f"name a setting as `--show-config` lists it (e.g. {close[0] if close else 'lr'}) "
            f"or all, or {undo_given(source, '--allow-change ' + name)}",
        )


def unreached_steps(values: Any, section: str, sources: dict[str, str], steps: int) -> list[str]:
    """``Warning:`` lines for values the user gave (flag, environment, file) that do not act in
    a run of ``steps`` steps (0-based step indices 0 … steps − 1): a ``drop_step`` of the step
    schedule at or past the last step (the lr never drops), a ``repa_stop_step`` at or past it
    (REPA never stops) and an ``ema_decay`` that the EMA warm-up does not reach by then (the
    EMA is the warm-up's ramp all along). Not errors: a run may be continued with more steps.
    ``values``: a settings section; fields it lacks are skipped. A preset's or the default
    value is never named (``schedule step`` given with the default ``drop_step`` is)."""
    if steps < 1:
        return []
    lines = []
    given = {n: sources.get(f"{section}.{n}", "default") for n in UNREACHED_OPTIONS}
    drop = getattr(values, "drop_step", None)
    if getattr(values, "schedule", None) == "step" and drop is not None and drop >= steps:
        name = "drop_step" if user_given(given["drop_step"]) else "schedule"
        if user_given(given[name]):
            lines.append(
                f"Warning: {section}.drop_step = {drop} (from {given['drop_step']}) is at or past "
                f"the end of this run ({steps} steps): the step schedule keeps the lr at "
                f"{values.lr:g} for the whole run and never drops it to {values.drop_lr:g} "
                f"(only a run continued to more than {drop} steps drops it; pass --drop-step below "
                f"{steps} to drop it in this run)"
            )
    stop = getattr(values, "repa_stop_step", None)
    repa_on = (getattr(values, "repa_weight", 0) or 0) > 0
    if repa_on and stop is not None and stop >= steps and user_given(given["repa_stop_step"]):
        lines.append(
            f"Warning: {section}.repa_stop_step = {stop} (from {given['repa_stop_step']}) is at "
            f"or past the end of this run ({steps} steps): REPA stays on for the whole run "
            f"(only a run continued to more than {stop} steps stops it; pass "
            f"--repa-stop-step below {steps} to stop it in this run)"
        )
    ema = unreached_ema_decay(values, section, sources, steps)
    return lines + ([ema] if ema else [])


#: the step settings :func:`unreached_steps` names (the EMA ones: :func:`unreached_ema_decay`)
UNREACHED_OPTIONS = ("drop_step", "schedule", "repa_stop_step")


def unreached_ema_decay(
    values: Any, section: str, sources: dict[str, str], steps: int, warmup: bool | None = None
) -> str | None:
    """The ``Warning:`` of an EMA the user set up (``ema_decay`` / ``ema_warmup`` given) that
    does not act in a run of ``steps`` steps: with the warm-up (decay ``min(ema_decay, (1 + n) /
    (10 + n))`` after n updates, ``repackctl.train.ema``) an ``ema_decay`` the ramp does not
    reach by the last update (the EMA follows the ramp all along); without it, a decay so slow
    that the EMA, which sampling uses, is still mostly the initial weights at the end.
    ``warmup``: the stage's fixed choice where it has no ``ema_warmup`` setting (pack: on)."""
    decay = getattr(values, "ema_decay", None)
    fixed = warmup is not None  # the stage has no ema_warmup setting (nor --ema-warmup)
    warmup = getattr(values, "ema_warmup", None) if warmup is None else warmup
    decay_from = sources.get(f"{section}.ema_decay", "default")
    warmup_from = sources.get(f"{section}.ema_warmup", "default")
    if not decay or warmup is None:
        return None
    name = f"{section}.ema_decay = {decay:g} (from {decay_from})"
    if warmup and user_given(decay_from):
        reached = math.ceil((10 * decay - 1) / (1 - decay) - 1e-9)  # (1+n)/(10+n) ≥ decay
        if reached < steps:
            return None
        return (
            f"Warning: {name} is not reached in this run ({steps} steps): the EMA warm-up "
            f"ramps the decay up to it only after {reached} updates, so the EMA follows the ramp "
            f"to its last update (decay {steps / (steps + 9):.4g}) and the value never acts (only "
            f"a run continued to more than {reached} steps reaches it)"
        )
    initial = decay**steps  # the initial weights' share of the EMA after the run
    if warmup or initial < 0.5 or not (user_given(decay_from) or user_given(warmup_from)):
        return None
    half = math.ceil(math.log(0.5) / math.log(decay))
    # offer only what the command has: `refine train` has no --ema-warmup (its EMA is never
    # warmed up), and the warning offered it
    why = (
        f"the {section} EMA has none"
        if fixed
        else f"{section}.ema_warmup = False from {warmup_from}"
    )
    ways = "" if fixed else "--ema-warmup, "
    return (
        f"Warning: {name} without the EMA warm-up ({why}) leaves the EMA weights, which "
        f"sampling uses, {initial:.0%} the initial ones after this run's {steps} steps (pass "
        f"{ways}a lower --ema-decay, or --steps above {half})"
    )


#: the largest whole-number setting (a count, a size, a step, a block index), either sign: a
#: larger one overflowed an array index (``extract --num 99999999999999999999`` ended in an
#: OverflowError traceback) or was read for hours before anything refused it
INT_LIMIT = 2**31 - 1
#: tighter ranges of some settings, whichever section holds them (each item of a list or
#: tuple): name → (lowest, highest, whether the highest is excluded, why)
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "num_workers": (
        0,
        64,
        False,
        "each DataLoader worker is a process: more than 64 only compete for the CPUs, and a "
        "huge count forked processes until the machine ran out of memory",
    ),
    "betas": (
        0.0,
        1.0,
        True,
        "Adam's betas are decay rates; the engine's own check came only once the run was "
        "being set up",
    ),
}
#: settings that check a range of their own (``seed``: 0 … 2**32 − 1)
OWN_RANGE = ("seed",)


def check_magnitudes(
    settings: BaseModel, sources: dict[str, str], flags: dict[str, str] | None = None
) -> None:
    """Refuse, before a command reads anything, a whole number beyond ±:data:`INT_LIMIT` in
    any section and a value outside its :data:`RANGES`: ``--num 99999999999999999999`` was a
    traceback, ``--num-workers 99999999999999999999`` forked until memory ran out. Lists and
    tuples are checked item by item. ``sources``: dotted key → source; ``flags``: dotted key →
    its flag where the command renames it (pack encode's ``--batch-size``), else ``--`` + the
    name with dashes."""
    for key, value in _numbers(settings):
        name = key.rsplit(".", 1)[-1]
        if name in OWN_RANGE:
            continue
        low, high, open_top, why = RANGES.get(
            name, (-INT_LIMIT, INT_LIMIT, False, "no count, size or step comes near it")
        )
        if name not in RANGES and isinstance(value, float):
            continue  # a real number: finite (allow_inf_nan), its field bounds it
        if low <= value < high or (not open_top and value == high):
            continue
        source = sources.get(key, "default")
        flag = (flags or {}).get(key) or "--" + name.replace("_", "-")
        if name in RANGES:
            span = f"{_num(low)} ≤ {name} {'<' if open_top else '≤'} {_num(high)}"
        else:
            span = f"|{name}| ≤ {INT_LIMIT} (2**31 − 1)"
        raise ConfigError(
            f"{key} = {_num(value)} (from {source}) is out of range: {span} ({why})",
            f"pass {flag} with a value in that range, or {undo_given(source, flag)}",
        )


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _numbers(model: BaseModel, prefix: str = "") -> list[tuple[str, int | float]]:
    """(dotted key, value) of every number of ``model`` and its sections, list items included."""
    out: list[tuple[str, int | float]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out += _numbers(value, f"{prefix}{name}.")
            continue
        items = value if isinstance(value, (list, tuple)) else (value,)
        nums = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out += [(f"{prefix}{name}", v) for v in nums]
    return out
