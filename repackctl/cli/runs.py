"""`repackctl runs ls | info | rm`: the training runs under the runs root."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    RunsOpt,
    SamplesOpt,
    check_samples_root,
    confirm_delete,
    console,
    err_console,
    handle_errors,
    resolve,
)
from repackctl.cli.listing import JsonOpt, print_json, print_listing, print_pairs
from repackctl.cli.listing import megabytes as _mb

if TYPE_CHECKING:
    from repackctl.runs import RunDetail

app = typer.Typer(help="List, inspect and remove training runs.", no_args_is_help=True)
RunArg = Annotated[str, typer.Argument(help="Run name (a folder under the runs root).")]
LS_NOTE = (
    "ckpts: checkpoints with every file present at its recorded size; "
    "`repackctl runs info RUN` also verifies their sha256 checksums"
)


def _roots(runs: str | None, samples: str | None, config: str | None) -> tuple[str, str]:
    s = resolve(config, {"runs": runs, "samples": samples}).settings
    return s.runs, s.samples


def _encoded_latents(
    d: RunDetail, cache: str | None, config: str | None
) -> tuple[list[str], list[str]]:
    """The cached latents groups encoded with the pack run ``d`` and the cache roots not read
    (``repackctl.pack.task.latents_encoded_with``), in the settings' cache root (``--cache``)
    and those its checkpoints were trained from."""
    from pathlib import Path

    from repackctl.pack.task import latents_encoded_with

    root = resolve(config, {"cache": cache}).settings.cache
    return latents_encoded_with(Path(d.run.path), d.run.stage, root)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _stage(stage: str, imported: bool) -> str:
    return f"{stage} (imported)" if imported else stage


@app.command("ls")
@handle_errors
def ls(runs: RunsOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List runs: stage, newest step, checkpoints, size, last change.

    Fast on large runs: a checkpoint counts when its files are present at the sizes state.json
    records; their sha256 checksums are not read here but by `repackctl runs info RUN` (and by
    every command that loads a checkpoint).

    Example: `repackctl runs ls` (or `repackctl runs ls --json`)
    """
    from repackctl.paths import local_path
    from repackctl.runs import list_runs

    root = local_path(_roots(runs, None, config)[0])
    found = list_runs(root)
    if as_json:
        print_json({"root": str(root), "runs": [r.to_dict() for r in found]})
        return
    if not found:
        console.print(
            f"no runs in {root} (train one: `repackctl pack train`)",
            highlight=False,
            soft_wrap=True,
        )
        return
    rows = [
        [
            r.name,
            _stage(r.stage, r.imported),
            "-" if r.step is None else r.step,
            r.checkpoints,
            _mb(r.bytes),
            _when(r.modified),
        ]
        for r in found
    ]
    columns = ["run", "stage", "step", "ckpts", "size", "modified"]
    print_listing(f"runs {root}", columns, rows)
    console.print(LS_NOTE, highlight=False, soft_wrap=True, markup=False)


def _metric_line(rec: dict[str, Any]) -> str:
    from repackctl.progress import format_fields

    rest = {k: v for k, v in rec.items() if k != "step"}
    return format_fields(rest)


@app.command("info")
@handle_errors
def info(
    name: RunArg,
    runs: RunsOpt = None,
    samples: SamplesOpt = None,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: config summary, checkpoints, last metrics, sample folders made from it,
    for a pack run the runs that sample through its decoder and the cached latents groups
    encoded with it (in --cache and the cache it was trained from), and for a refiner run the
    samples folders it refined.

    The metrics stop at the newest complete checkpoint: rows logged past it by a training
    stopped before its next save are counted on one line, not listed (a resume drops them and
    trains those steps again). While the run is being trained, the newest rows that training
    logged past the checkpoint are listed too, marked "(no checkpoint yet)", beside that line.

    Every checkpoint file's sha256 is checked against its state.json (this reads every byte), so
    a damaged checkpoint is reported as corrupt, naming the file.

    Example: `repackctl runs info dit-tiny`
    """
    from repackctl.paths import local_path, run_dir
    from repackctl.runs import describe_run

    check_samples_root(samples)  # `--samples 100` meant as a count
    runs_root, samples_root = _roots(runs, samples, config)
    d = describe_run(run_dir(runs_root, name), local_path(samples_root))
    d.latents_used_by, d.latents_not_checked = _encoded_latents(d, cache, config)
    if as_json:
        print_json(d.to_dict())
        return
    r = d.run
    pairs: list[tuple[str, Any]] = [
        ("run", r.name),
        ("path", r.path),
        ("stage", _stage(r.stage, r.imported)),
        *([("model", d.model)] if d.model else []),
        ("size", _mb(r.bytes)),
        ("modified", _when(r.modified)),
    ]
    if d.config_problem:
        pairs.append(("config problem", d.config_problem))
    pairs += [(f"config.{k}", v) for k, v in d.shown_config().items()]
    for c in d.checkpoints:
        pairs.append((f"checkpoint {c.name}", "complete" if c.complete else c.problem))
    for rec in d.metrics_tail:
        pairs.append((f"metrics step {rec.get('step')}", _metric_line(rec)))
    if d.metrics_after is not None:
        for rec in d.metrics_after.newest:  # the training's own, listed apart
            label = f"metrics step {rec.get('step')} (no checkpoint yet)"
            pairs.append((label, _metric_line(rec)))
        after = d.metrics_after.checkpoint_step
        label = "metrics without checkpoint" if after is None else f"metrics after step {after}"
        pairs.append((label, d.metrics_after.describe()))
    pairs += [("samples", s) for s in d.samples]
    pairs += [("samples of another run of this name", s) for s in d.samples_of_other_runs]
    pairs += [("used by", u) for u in [*d.used_by, *d.latents_used_by]]
    pairs += [("latents not checked", u) for u in d.latents_not_checked]
    pairs += [("trained on", t) for t in d.trained_on]
    pairs += [("refined", f) for f in d.refined]
    print_pairs(f"run {r.name}", pairs)


@app.command("rm")
@handle_errors
def rm(
    name: RunArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    runs: RunsOpt = None,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete a run folder (only one that repackctl wrote). Asks first unless --yes.

    The runs that use a pack run (DiT, refiner and t2i runs, trained or imported) and the cached
    latents groups encoded with it (in --cache and the cache it was trained from) are named in
    the question, and in a warning with --yes: they are not deleted, but cannot sample (or be
    decoded) without it.

    Example: `repackctl runs rm dit-tiny --yes`
    """
    from repackctl.paths import run_dir
    from repackctl.runs import (
        check_removable,
        describe_run,
        remove_run,
        removing_folder,
    )

    folder = run_dir(_roots(runs, None, config)[0], name)
    if not folder.exists() and removing_folder(folder).is_dir():
        console.print(
            f"finishing the removal of {folder} (it was interrupted)",
            highlight=False,
            soft_wrap=True,
        )
        remove_run(folder)
        console.print(f"removed {folder}", highlight=False, soft_wrap=True)
        return
    d = describe_run(folder)  # refuses anything that is not a run
    what = f"run {name} ({d.run.stage}, {_checkpoint_count(d)}, {_mb(d.run.bytes)})"
    check_removable(folder)  # files of the user's in it: refused before asking
    needed = _needed_by(name, d.used_by, *_encoded_latents(d, cache, config))
    question = f"Delete {what} at {folder}?"
    if needed:
        question = f"{needed}\nDelete {what} at {folder} anyway?"
    if not yes and not confirm_delete(question, f"repackctl runs info {name}"):
        console.print("nothing removed", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    remove_run(folder)
    console.print(f"removed {folder}", highlight=False, soft_wrap=True)
    if needed and yes:  # asked otherwise: the question named them
        for line in needed.splitlines():
            err_console.print(f"Warning: {line}", highlight=False, soft_wrap=True)


def _checkpoint_count(d: RunDetail) -> str:
    """``3 checkpoints``, or ``1 checkpoint and 2 incomplete, damaged or marked bad``: every
    step folder is deleted, and one that is not complete may still hold intact weights."""
    others = len(d.checkpoints) - d.run.checkpoints
    good = f"{d.run.checkpoints} checkpoint{'' if d.run.checkpoints == 1 else 's'}"
    return good if others <= 0 else f"{good} and {others} incomplete, damaged or marked bad"


def _needed_by(
    name: str, dependents: list[str], latents: list[str], unread: list[str]
) -> str | None:
    """``2 runs use pack run NAME and cannot sample without it (not deleted): d (dit), …``, the
    latents groups encoded with it and the caches not read (``_encoded_latents``), or None when
    nothing needs it."""
    said = []
    if dependents:
        runs = f"{len(dependents)} runs use" if len(dependents) > 1 else "1 run uses"
        said.append(
            f"{runs} pack run {name} and cannot sample without it (not deleted): "
            f"{', '.join(dependents)}"
        )
    if latents:
        groups = f"{len(latents)} cached latents group" + ("s were" if len(latents) > 1 else " was")
        said.append(
            f"{groups} encoded with pack run {name} and cannot be decoded without it (not "
            f"deleted; a DiT trained on them cannot sample): {', '.join(latents)}"
        )
    said += [f"{u}: latents encoded with pack run {name} there were not checked" for u in unread]
    return "\n".join(said) or None


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="runs")
