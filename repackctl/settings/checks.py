"""Checks shared by several settings sections (each section declares its own fields).

Kept apart from ``repackctl.settings`` (which imports every section) so that a section can use
them without an import cycle.
"""

from __future__ import annotations

from typing import Any

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
    the value back)."""
    flag = "--" + name.replace("_", "-")
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
                f"tunes {term}, but that term is off: {section}.{switch} is "
                f"{getattr(values, switch)!r} (from {switch_from})"
            )
            refuse_ignored(section, name, getattr(values, name), source, why, turn_on)


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
