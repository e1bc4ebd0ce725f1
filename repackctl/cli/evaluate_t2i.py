"""`repackctl evaluate adherence`: prompt adherence of text-to-image samples (built-in data)."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    DeviceOpt,
    SeedOpt,
    console,
    handle_errors,
    kv_table,
    note_line,
    resolve,
    rich_progress,
)
from repackctl.settings.checks import INT_LIMIT


@handle_errors
def adherence(
    samples_dir: Annotated[
        str, typer.Argument(help="A samples folder written by `repackctl sample` for a t2i run.")
    ],
    steps: Annotated[
        int,
        typer.Option(
            "--steps", min=1, max=INT_LIMIT, help="Training steps of the attribute classifiers."
        ),
    ] = 400,
    cache: CacheOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score prompt adherence: the shape and colour each prompt names vs. what the sample shows.

    Attribute classifiers (shape, object colour) are trained on the real cached images of the
    run's training entry (built-in data: exact attributes); their held-out accuracy on real
    images is reported as the ceiling. The training entry is read from the cache setting
    (--cache, REPACKCTL_CACHE or the config file), else from the cache the run recorded.
    Writes adherence.json (with the sha256 of the samples and of the checkpoint, and their
    guidance scale: a note says when they were not guided) into the samples folder; one made
    with other --steps or --seed is kept, and the run refused; one of the same classifiers
    keeps the classifier scores this command does not compute (e.g. the demo's val scores).

    Example: `repackctl evaluate adherence samples/t2i-mmdit-tiny--step-0002000--euler-50--cfg4--seed0`
    """
    from repackctl.evaluate.adherence import run_adherence
    from repackctl.runtime import resolve_device

    s = resolve(config, {"cache": cache, "seed": seed, "device": device}).settings
    # the resolved cache (flag, REPACKCTL_CACHE or config file); the run's recorded root next
    device = resolve_device(s.device, 0)
    out = run_adherence(
        samples_dir, s.cache, steps, s.seed, device, keep_other=True, progress=rich_progress
    )
    sc = out.scores

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    real = sc["classifier_real_accuracy"]
    held = real["held_out"]  # a tenth of the real images: the classifiers trained on the rest
    real_line = f"shape {pct(real['shape'])}, colour {pct(real['colour'])}"

    rows = [
        (
            "shape",
            f"{pct(sc['shape_accuracy'])} of {sc['n_shape']} (chance 10 %)"
            + _unscored(sc, "shape"),
        ),
        ("colour", f"{pct(sc['colour_accuracy'])} of {sc['n_colour']}" + _unscored(sc, "colour")),
        (f"classifier on {held} held-out real image{'s' if held != 1 else ''}", real_line),
        ("classifier trained on", f"the other {sc['classifier']['train_images']} real images"),
        ("written", out.path),
    ]
    console.print(kv_table("evaluate adherence", rows))
    for line in _notes(sc):
        console.print(note_line(line), highlight=False)


def _notes(scores: dict) -> list[str]:
    """What the table's figures mean, as ``adherence.json`` records it: the samples' guidance
    (``guidance.note``) and the scores kept from the file replaced (``kept_from_before``)."""
    out = []
    note = (scores.get("guidance") or {}).get("note")
    if note:
        out.append(f"{note} (adherence.json: guidance)")
    kept = scores.get("kept_from_before")
    if kept:
        out.append(f"{', '.join(kept['fields'])} {kept['why']}")
    return out


def _unscored(scores: dict, attribute: str) -> str:
    """``; 8 of 10 samples not scored: 2 name several shapes, …`` (adherence.json: unscored),
    empty when every sample was scored on ``attribute``."""
    from repackctl.evaluate.adherence import REASONS

    total, left = scores["num_samples"], scores["num_samples"] - scores[f"n_{attribute}"]
    if not left:
        return ""
    why = (scores.get("unscored") or {}).get(attribute) or {}
    parts = [f"{n} {REASONS.get(k, k)}" for k, n in why.items()]
    return f"; {left} of {total} samples not scored" + (": " + ", ".join(parts) if parts else "")


def register_into(evaluate_app: typer.Typer) -> None:
    """Add ``adherence`` to the ``evaluate`` command group."""
    evaluate_app.command("adherence")(adherence)
