"""`repackctl cache ls | info | verify | rm`."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    console,
    err_console,
    handle_errors,
    resolve,
)
from repackctl.cli.listing import print_json, print_listing, print_pairs

app = typer.Typer(help="Inspect, verify and remove cache entries.", no_args_is_help=True)
EntryArg = Annotated[str, typer.Argument(help="Entry name, e.g. builtin--train--64px.")]


def _root(cache: str | None, config: str | None) -> str:
    return resolve(config, {"cache": cache}).settings.cache


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")
]


@app.command("ls")
@handle_errors
def ls(cache: CacheOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List dataset entries with their sizes and what they hold.

    Example: `repackctl cache ls` (or `repackctl cache ls --json`)
    """
    from dataclasses import asdict

    from repackctl.cache.store import DatasetEntry, list_entries
    from repackctl.cache.verify import describe_entry

    root = _root(cache, config)
    infos = [describe_entry(DatasetEntry.open(root, name)) for name in list_entries(root)]
    if as_json:
        print_json({"root": root, "entries": [asdict(i) for i in infos]})
        return
    if not infos:
        console.print(f"no cache entries in {root} (run `repackctl extract`)", highlight=False)
        return
    rows = [
        [
            i.name,
            f"{i.written}/{i.n}",
            i.skipped,
            list(i.features),
            list(i.latents),
            _mb(i.bytes),
        ]
        for i in infos
    ]
    columns = ["entry", "images", "skipped", "features", "latents", "size"]
    print_listing(f"cache {root}", columns, rows)


@app.command("info")
@handle_errors
def info(
    entry: EntryArg, cache: CacheOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one entry: counts, classes, features and latents with their specs.

    Example: `repackctl cache info builtin--train--64px`
    """
    from dataclasses import asdict

    from repackctl.cache.store import DatasetEntry
    from repackctl.cache.verify import describe_entry

    root = _root(cache, config)
    e = DatasetEntry.open(root, entry)
    d = describe_entry(e)
    if as_json:
        extra = {"root": root, "source": e.attrs.get("source"), "chunk": e.chunk, "shard": e.shard}
        print_json({**asdict(d), **extra})
        return
    rows = [
        ("entry", d.name),
        ("source", e.attrs.get("source")),
        ("resolution", f"{d.resolution} px"),
        ("samples", f"{d.written} written, {d.skipped} skipped, {d.pending} pending of {d.n}"),
        ("classes", d.classes),
        ("layout", f"chunk {e.chunk}, shard {e.shard}"),
        ("size", _mb(d.bytes)),
    ]
    for fid, f in d.features.items():
        rows.append((f"features/{fid}", f"{f['shape']} {f['weights']}, {f['written']} written"))
    for lid, lat in d.latents.items():
        rows.append((f"latents/{lid}", f"{lat['arrays']}, {lat['written']} written"))
    print_pairs(f"cache entry ({root})", rows)


@app.command("verify")
@handle_errors
def verify(
    entry: Annotated[str | None, typer.Argument(help="Entry to check (default: all).")] = None,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check shapes, done counts, NaN/inf and that attributes match the arrays.

    Example: `repackctl cache verify builtin--train--64px`
    """
    from repackctl.cache.store import DatasetEntry, list_entries
    from repackctl.cache.verify import verify_entry
    from repackctl.errors import CacheError

    root = _root(cache, config)
    names = [entry] if entry else list_entries(root)
    bad = 0
    for name in names:
        problems = verify_entry(DatasetEntry.open(root, name))
        if problems:
            bad += 1
            for p in problems:
                err_console.print(f"[red]✗[/] {name}: {p}", highlight=False)
        else:
            console.print(f"[green]✓[/] {name}: ok", highlight=False)
    if bad:
        raise CacheError(
            f"{bad} of {len(names)} entries have problems",
            "rerun the extract/encode that wrote them (it resumes), or `repackctl cache rm` them",
        )


@app.command("rm")
@handle_errors
def rm(
    entry: EntryArg,
    features: Annotated[
        str | None, typer.Option(help="Remove only these features (encoder entry id).")
    ] = None,
    latents: Annotated[str | None, typer.Option(help="Remove only these packed latents.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove an entry (or only some of its features/latents). Asks first unless --yes.

    Example: `repackctl cache rm builtin--train--64px --yes`
    """
    from repackctl.cache.store import DatasetEntry
    from repackctl.cache.verify import remove

    root = _root(cache, config)
    e = DatasetEntry.open(root, entry)
    sub = None
    if features:
        e.features(features)
        sub = f"features/{features}"
    elif latents:
        e.latents(latents)
        sub = f"latents/{latents}"
    what = f"{entry}/{sub}" if sub else entry
    if not yes and not typer.confirm(f"Remove {what} from {root}?", default=False):
        console.print("nothing removed")
        raise typer.Exit(1)
    remove(root, entry, sub)
    console.print(f"removed {what}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")
