"""`repackctl evaluate fid | stats` (and `recon | probe` from the pack stage when present)."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from rich.markup import escape

from repackctl.cli.common import (
    console,
    err_console,
    kv_table,
    note_line,
    rich_progress,
)
from repackctl.cli.options import settings_command
from repackctl.settings import ResolvedSettings
from repackctl.settings.checks import INT_LIMIT

evaluate_app = typer.Typer(
    name="evaluate",
    help="Score samples (FID, sFID, IS, KID, precision/recall, FD in an encoder's space) with a "
    "protocol card, and make reference statistics.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


GeneratedArg = Annotated[
    str | None,
    typer.Argument(
        help="Generated images: a samples folder, a samples .npz, or a DiT run/checkpoint "
        "(sampled first). Default: the newest folder under the samples root.",
        show_default=False,
    ),
]


def _score_rows(m: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the scores present in ``metrics.json``."""
    rows = []
    names = {
        "fid": "FID",
        "sfid": "sFID",
        "is_mean": "IS",
        "kid_mean": "KID",
        "precision": "precision",
        "recall": "recall",
        "fd": f"FD ({m.get('fd_detail', {}).get('encoder', {}).get('id', 'encoder')})",
    }
    for key, label in names.items():
        if key in m:
            value = _fmt(m[key])
            std = {"is_mean": "is_std", "kid_mean": "kid_std"}.get(key)
            if std and std in m:
                value += f" ± {_fmt(m[std])}"
            rows.append((label, value))
    return rows


def _print_fid(result: Any) -> None:
    """Notes and caveats on stderr, then the scores and the protocol summary as a table."""
    for message in result.messages:
        err_console.print(note_line(message), highlight=False, soft_wrap=True, markup=False)
    for note in result.metrics.get("notes", []):
        err_console.print(
            f"[yellow]caveat:[/] {escape(note)}", markup=True, highlight=False, soft_wrap=True
        )
    m = result.metrics
    rows = _score_rows(m)
    card = result.card
    rows += [
        ("samples", f"{result.n_generated} from {m['generated']['path']}"),
        ("reference", f"{card['reference_file']} (sha256 {card['reference_sha256'][:12]}…)"),
        ("sampler", f"{card['sampler']} steps={card['steps']} nfe={card['nfe']}"),
        *_made_with_rows(card),
        ("extractor", card["feature_extractor"]),
        ("written", str(result.path)),
    ]
    console.print(kv_table("evaluate fid", rows))


def _made_with_rows(card: dict) -> list[tuple[str, str]]:
    """Guidance, weights, refiner and decoder rows: what made the samples besides the
    checkpoint, each of which moves the score (autoguidance must not read as plain CFG)."""
    from repackctl.evaluate.generative import guide_text

    unknown = "not recorded"  # the samples' protocol.json does not say (external, older)
    scale = f"cfg={card['cfg_scale']} interval={card['cfg_interval']}"
    guide = guide_text(card.get("guide"))
    refiner, decoder = card.get("refiner"), card.get("pack_decoder")
    if refiner:
        sha = refiner.get("sha256")
        refined = f"{refiner['checkpoint']}" + (f" (sha256 {sha[:12]}…)" if sha else "")
    else:
        refined = "none" if "refiner" in card else unknown
    return [
        ("guidance", f"{guide}, scale={card['cfg_scale']} interval={card['cfg_interval']}")
        if guide
        else ("guidance", scale),
        ("weights", card.get("weights") or unknown),
        ("refiner", refined),
        ("decoder", decoder["checkpoint"] if decoder else unknown),
    ]


@evaluate_app.command("fid")
@settings_command(
    "evaluate",
    flags={"reference": "--ref", "num_samples": "--samples", "samples": "--samples-root"},
    common=("cache", "runs", "samples", "seed", "device", "precision"),
    show=("evaluate", "sample"),
    arguments={"source": "evaluate.source"},
)
def fid(resolved: ResolvedSettings, source: GeneratedArg = None) -> None:
    """Score generated samples against a reference; writes metrics.json with a protocol card.

    With no SOURCE it takes the newest samples folder under the samples root (`--samples-root`,
    REPACKCTL_SAMPLES), so after `repackctl sample --num 50000` the headline command is just
    `repackctl evaluate fid --samples 50000`. Samples from the built-in dataset are scored by
    default with FD in the built-in encoder's feature space, which needs no Inception weights.

    Example: `repackctl evaluate fid samples/RUN--... --ref VIRTUAL_imagenet256_labeled.npz`
    """
    from repackctl.evaluate.generative import run_evaluate_fid

    flags = tuple(k for k in ("seed", "precision") if resolved.sources.get(k) == "flag")
    if resolved.sources.get("evaluate.fd_method") == "flag":
        flags += ("fd_method",)
    if resolved.sources.get("cache") == "flag":
        flags += ("cache",)
    result = run_evaluate_fid(
        resolved.settings, rich_progress, _sampling_given(resolved), flags_given=flags
    )
    _print_fid(result)


#: [sample] settings that do not change which samples are made
_NOT_SAMPLING = {"sample.run", "sample.checkpoint", "sample.num", "sample.batch_size"}
_NOT_SAMPLING |= {"sample.grid", "sample.out"}


def _sampling_given(resolved: ResolvedSettings) -> tuple[str, ...]:
    """``--seed 7``, ``sample.cfg = 4.0 (file repackctl.toml)``: the settings that decide how
    samples are made which the user gave to this command (a flag for ``--seed`` and
    ``--precision``; any of flag, environment or file for the [sample] section)."""
    from repackctl.settings.checks import user_given

    given = []
    for key, source in sorted(resolved.sources.items()):
        if key in ("seed", "precision") and source == "flag":
            given.append(f"--{key} {getattr(resolved.settings, key)}")
        elif key.startswith("sample.") and key not in _NOT_SAMPLING and user_given(source):
            value = getattr(resolved.settings.sample, key.split(".", 1)[1])
            given.append(f"{key} = {value!r} ({source})")
    return tuple(given)


@evaluate_app.command("stats")
@settings_command(
    "evaluate",
    include=(
        "ref_cache",
        "inception_weights",
        "fd_encoder",
        "fd_weights",
        "batch_size",
        "stats_dir",
    ),
    common=("cache", "seed", "device"),
)
def stats(
    resolved: ResolvedSettings,
    source: Annotated[
        str | None,
        typer.Argument(
            help="Images: an image folder, an images .npz, or 'builtin' (or use --ref-cache).",
            show_default=False,
        ),
    ] = None,
    extractor: Annotated[
        str,
        typer.Option(
            "--extractor",
            help="inception (FID/sFID statistics) or fd (statistics in --fd-encoder's space).",
        ),
    ] = "inception",
    resolution: Annotated[
        int | None,
        typer.Option(
            max=INT_LIMIT,
            help="Center-crop size (≥ 1) for folders (256) / built-in data (64).",
        ),
    ] = None,
    num: Annotated[
        int | None,
        typer.Option(
            "--num",
            max=INT_LIMIT,
            help="Use the first/seeded N images (≥ 1); default all (1000 for builtin).",
        ),
    ] = None,
) -> None:
    """Write reference statistics (mu, sigma, metadata) of a set of images, cached by content.

    The file goes under `--stats-dir`; pass it to `evaluate fid --ref FILE`. Running it again
    on the same images with the same extractor reuses the file and says so.
    """
    from repackctl.evaluate.generative import run_evaluate_stats

    result = run_evaluate_stats(
        resolved.settings,
        source,
        extractor=extractor,
        resolution=resolution,
        num=num,
        progress=rich_progress,
        flags_given=tuple(k for k in ("seed", "cache") if resolved.sources.get(k) == "flag"),
    )
    meta = result.metadata
    state = "reused (same content hash)" if result.reused else "computed"
    err_console.print(
        f"[cyan]note:[/] reference statistics {state}: {escape(str(result.path))}", markup=True
    )
    rows = [
        ("file", str(result.path)),
        ("status", state),
        ("source", meta.get("source")),
        ("images", meta.get("n")),
        ("resolution", meta.get("resolution")),
        ("extractor", meta.get("extractor")),
        ("content sha256", str(meta.get("source_sha256", ""))[:16] + "…"),
    ]
    console.print(kv_table("evaluate stats", rows))


def _add_pack_commands() -> None:
    """`evaluate recon` / `evaluate probe` live with the pack stage; add them when present."""
    try:
        module = importlib.import_module("repackctl.cli.evaluate_pack")
    except ModuleNotFoundError as e:
        if e.name != "repackctl.cli.evaluate_pack":
            raise
        return
    module.register_into(evaluate_app)


_add_pack_commands()


def _add_t2i_commands() -> None:
    """`evaluate adherence` (text-to-image prompt adherence on the built-in data)."""
    from repackctl.cli.evaluate_t2i import register_into

    register_into(evaluate_app)


_add_t2i_commands()


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
