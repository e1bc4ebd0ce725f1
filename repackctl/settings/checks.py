"""Checks shared by several settings sections (each section declares its own fields).

Kept apart from ``repackctl.settings`` (which imports every section) so that a section can use
them without an import cycle.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

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


def check_schedules(settings: Any, sources: dict[str, str], section: str) -> None:
    """Run ``section``'s ``check_schedule`` (dit and t2i have one) on the settings its run trains
    with.

    Called where those are final: a new run's settings as given, a resumed run's once its stored
    values are merged in (a resumed cosine run given only ``--min-lr`` keeps its schedule, and a
    new ``--lr`` below its stored ``min_lr`` is caught). ``sources``: dotted key → source."""
    check = getattr(getattr(settings, section, None), "check_schedule", None)
    if check is not None:
        check(section, sources)
