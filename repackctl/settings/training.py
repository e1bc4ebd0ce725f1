"""Checks of ``pack train`` and ``refine train`` settings against what the run trains: at least
one loss term on, and a batch that fits the training images.

Kept apart from ``repackctl.settings.checks`` (shared by every section) so that both stages use
one wording without importing each other (stages meet only through their ``load`` modules).
"""

from __future__ import annotations

from typing import Any

from repackctl.errors import ConfigError


def check_some_term_on(
    values: Any,
    section: str,
    sources: dict[str, str],
    weights: tuple[str, ...],
    files: dict[str, str],
    scaled: tuple[str, tuple[str, ...], str] | None = None,
) -> None:
    """Refuse settings under which no loss term is on: with every weight of ``weights`` at 0
    (or a weight above 0 whose local file, ``files[weight]``, is not set, which turns its term
    off) the run's loss is 0 and its gradient 0 at every step, so ``pack train`` died in the
    backward pass after writing its run folder, and ``refine train`` saved its initial refiner
    and exited 0. ``scaled`` = (weight, terms, why): a term whose weight is scaled by the others
    (pack's adaptive GAN weight), on only while one of ``terms`` is on; alone it trained only
    the discriminator, the generator's gradient 0. Called by the sections' ``check_terms``,
    before any run folder is written. ``sources``: dotted key → source, to name each value's."""
    on = {name for name in weights if _term_on(values, name, files)}
    if scaled is not None and scaled[0] in on and not on & set(scaled[1]):
        on.discard(scaled[0])
    if on:
        return
    parts = []
    for name in weights:
        value = getattr(values, name)
        part = f"{section}.{name} = {value!r} (from {sources.get(f'{section}.{name}', 'default')})"
        if name in files and (value or 0) > 0:
            part += f", off without {section}.{files[name]}"
        elif scaled is not None and name == scaled[0] and (value or 0) > 0:
            part += f", {scaled[2]}"
        parts.append(part)
    raise ConfigError(
        "no loss term is on: "
        + "; ".join(parts)
        + ": the run would train nothing (its loss and gradient 0 at every step)",
        "give one of these weights a value above 0 (e.g. --l1-weight 1)",
    )


def _term_on(values: Any, name: str, files: dict[str, str]) -> bool:
    """Whether the term weighed by ``name`` trains: its weight above 0 and, for a term that
    needs a local file, that file set."""
    if (getattr(values, name) or 0) <= 0:
        return False
    return name not in files or getattr(values, files[name]) is not None


def check_batch_fits(
    section: str, batch: int, rows: int, what: str, sources: dict[str, str] | None
) -> None:
    """Refuse a global batch larger than the ``rows`` training samples (``what``: e.g. "usable
    images of entry X"): every batch would read some samples twice or more (the batch reader
    draws with repeats), a different training from the one the batch size names, and an
    epoch-based length would count more passes than there are. The batch is global (split over
    the processes, each reading its share), so the world size does not change the bound.
    Called for a new run before it writes anything; ``sources`` names where the batch came
    from."""
    if batch <= rows:
        return
    source = (sources or {}).get(f"{section}.batch_size", "default")
    raise ConfigError(
        f"{section}.batch_size = {batch} (from {source}) is larger than the {rows} {what}: "
        "each batch would repeat samples",
        f"pass --batch-size {rows} or less, or train on an entry with more images "
        "(`repackctl extract -n N`)",
    )
