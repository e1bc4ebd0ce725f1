"""`repackctl cache ls | info | verify | rm`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from repackctl.cli.common import (
    CacheOpt,
    ConfigOpt,
    confirm_delete,
    console,
    err_console,
    handle_errors,
    resolve,
)
from repackctl.cli.listing import JsonOpt, print_json, print_listing, print_pairs
from repackctl.cli.listing import megabytes as _mb

if TYPE_CHECKING:
    from repackctl.cache.store import DatasetEntry
    from repackctl.cache.verify import EntryInfo

app = typer.Typer(help="Inspect, verify and remove cache entries.", no_args_is_help=True)
EntryArg = Annotated[str, typer.Argument(help="Entry name, e.g. builtin--train--64px.")]


def _root(cache: str | None, config: str | None) -> str:
    return resolve(config, {"cache": cache}).settings.cache


@app.command("ls")
@handle_errors
def ls(cache: CacheOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List dataset entries with their sizes and what they hold.

    Example: `repackctl cache ls` (or `repackctl cache ls --json`)
    """
    from dataclasses import asdict

    from repackctl.cache.store import DatasetEntry, list_entries
    from repackctl.cache.verify import GROUP_KINDS, describe_entry, unfinished_groups

    root = _root(cache, config)
    names = list_entries(root)
    unfinished = list_entries(root, "incomplete")
    damaged = _damaged_entries(root)
    opened = [DatasetEntry.open(root, name) for name in names]
    infos = [describe_entry(e) for e in opened]
    pending = {i.name: unfinished_groups(e, i) for e, i in zip(opened, infos, strict=True)}
    if as_json:
        entries = [asdict(i) | {"unfinished": pending[i.name]} for i in infos]
        print_json({"root": root, "entries": entries, "incomplete": unfinished, "damaged": damaged})
        return
    for d in damaged:  # listed, and said why: never left out of the listing in silence
        err_console.print(
            f"Warning: cache entry {d['entry']}: {d['file']} {d['problem']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if not infos and not unfinished and not damaged:
        console.print(
            f"no cache entries in {root} (run `repackctl extract`)", highlight=False, soft_wrap=True
        )
        return
    rows = [
        [
            i.name,
            f"{i.written}/{i.n}" + (f" ({i.pending} pending)" if i.pending else ""),
            i.skipped,
            *(_group_cells(i, kind, pending[i.name]) for kind in GROUP_KINDS),
            _mb(i.bytes),
        ]
        for i in infos
    ]
    rows += [[name, "incomplete", "-", [], [], [], [], "-"] for name in unfinished]
    rows += [[d["entry"], "damaged", "-", [], [], [], [], "-"] for d in damaged]
    columns = ["entry", "images", "skipped", *GROUP_KINDS, "size"]
    print_listing(f"cache {root}", columns, rows)
    for name, groups in pending.items():  # the command that finishes each, under the table
        for g in groups:
            console.print(
                f"unfinished: {name} {g['group']}: {_unfinished_what(g)}; "
                f"finish with {g['finish']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def _group_cells(info: EntryInfo, kind: str, unfinished: list[dict[str, Any]]) -> list[str]:
    """The ids of ``info``'s groups of ``kind`` for `cache ls`: ``(unfinished: N of M rows
    pending)`` after one with pending rows, ``(unfinished: stats not written)`` after latents
    whose pack encode was killed before its stats (``unfinished``: ``unfinished_groups``), then
    the interrupted and damaged ones."""
    statless = {g["group"] for g in unfinished if g.get("stats") is False}
    cells = []
    for gid, g in getattr(info, kind).items():
        pending = int(g.get("pending", 0))
        note = f" (unfinished: {pending} of {info.n} rows pending)" if pending else ""
        if f"{kind}/{gid}" in statless:
            note = " (unfinished: stats not written)"
        cells.append(gid + note)
    return [*cells, *info.incomplete_of(kind)]


def _unfinished_what(group: dict[str, Any]) -> str:
    """What is left of an ``unfinished_groups`` item: its pending rows, or its stats."""
    if group.get("stats") is False:
        return f"all {group['n']} rows written, its channel stats not"
    return f"{group['pending']} of {group['n']} rows pending"


def _damaged_entries(root: str) -> list[dict[str, str]]:
    """``entry``, ``file`` and ``problem`` of each entry whose own metadata cannot be read."""
    from repackctl.cache.creation import damaged_child
    from repackctl.cache.store import list_entries, open_root

    names = list_entries(root, "damaged")
    g = open_root(root, mode="r") if names else None
    out = []
    for name in names:
        found = damaged_child(g, name)
        file, problem = (str(found[0]), found[1]) if found else ("zarr.json", "cannot be read")
        out.append({"entry": name, "file": file, "problem": problem})
    return out


@app.command("info")
@handle_errors
def info(
    entry: EntryArg, cache: CacheOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one entry: counts, classes, features, latents, refiner triplets and caption features.

    Example: `repackctl cache info builtin--train--64px`
    """
    from dataclasses import asdict

    from repackctl.cache.store import DatasetEntry
    from repackctl.cache.verify import GROUP_KINDS, describe_entry, unfinished_groups
    from repackctl.cache.versions import RECORD

    root = _root(cache, config)
    e = DatasetEntry.open(root, entry)
    d = describe_entry(e)
    pending = {g["group"]: g for g in unfinished_groups(e, d)}
    versions = e.attrs.get(RECORD)  # the images' (none: an entry made before the record)
    if as_json:
        extra = {"root": root, "source": e.attrs.get("source"), "chunk": e.chunk, "shard": e.shard}
        extra["versions"] = versions
        print_json({**asdict(d), **extra, "unfinished": list(pending.values())})
        return
    counts = f"{d.written} written, {d.skipped} skipped, {d.pending} pending of {d.n}"
    rows = [
        ("entry", d.name),
        ("source", e.attrs.get("source")),
        ("resolution", f"{d.resolution} px"),
        ("samples", f"{counts}{_written_with(versions)}"),
        ("classes", d.classes),
        ("layout", f"chunk {e.chunk}, shard {e.shard}"),
        ("size", _mb(d.bytes)),
    ]
    for kind in GROUP_KINDS:
        for gid, g in getattr(d, kind).items():
            what = f"{g['shape']} {g['weights']}" if kind == "features" else str(g["arrays"])
            made = _written_with(g.get("versions"))
            rows.append((f"{kind}/{gid}", f"{what}, {g['written']} written{made}"))
    pending["samples"] = pending.pop("images", None)  # the entry's own rows
    rows = [(k, f"{v}{_finish_note(pending[k])}" if pending.get(k) else v) for k, v in rows]
    print_pairs(f"cache entry ({root})", rows)


def _written_with(versions: dict[str, Any] | None) -> str:
    """`` (written with torch 2.14.1, repackctl 0.1.0)`` for a `cache info` row of an entry's
    images or a group; empty for one made before the versions were recorded."""
    made = ", ".join(f"{k} {v}" for k, v in (versions or {}).items())
    return f" (written with {made})" if made else ""


def _finish_note(group: dict[str, Any]) -> str:
    """``; unfinished: N of M rows pending, finish with CMD`` for a `cache info` row."""
    return f"; unfinished: {_unfinished_what(group)}, finish with {group['finish']}"


@app.command("verify")
@handle_errors
def verify(
    entry: Annotated[str | None, typer.Argument(help="Entry to check (default: all).")] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Mark the rows of missing, truncated or corrupt chunks pending, so that "
            "rerunning the command that wrote them rewrites them. NaN/inf rows are not "
            "rewritten: the error names the commands that are.",
        ),
    ] = False,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Read every chunk of every done row; check shapes, done counts, NaN/inf and attributes.

    Exits non-zero while any entry has a problem that `--repair` does not fix (NaN/inf rows,
    wrong shapes); the hint names what does.

    Example: `repackctl cache verify builtin--train--64px --repair`
    """
    from repackctl.cache.store import list_entries

    root = _root(cache, config)
    names = [entry] if entry else list_entries(root, "all")
    if not names:
        _nothing_to_verify(root)
        return
    bad, fixes, repairable = 0, [], False
    for name in names:
        problems = _verify_one(root, name, repair)
        if not problems:
            continue
        bad += 1
        fixes += [p.fix for p in problems if p.fix and p.fix not in fixes]
        repairable = repairable or any(not p.lasting for p in problems)
    if bad:
        _refuse(bad, len(names), fixes, repairable)


def _nothing_to_verify(root: str) -> None:
    """`cache verify` of a root without entries says so; one without a cache (a mistyped
    `--cache`, an unset `REPACKCTL_CACHE`) is an error: an exit status of 0 there would pass a
    check of a cache that was never read."""
    from repackctl.cache.store import NoCache, open_root
    from repackctl.errors import CacheError

    try:
        open_root(root, mode="r")
    except NoCache:
        raise CacheError(
            f"no cache at {root}: nothing was verified",
            "pass the cache's folder with --cache (or set REPACKCTL_CACHE, or `cache` in the "
            "--config file); `repackctl cache ls --cache DIR` lists a cache's entries",
        ) from None
    console.print(f"no cache entries in {root}: nothing to verify", highlight=False, soft_wrap=True)


def _verify_one(root: str, name: str, repair: bool) -> list:
    """Check (and with ``repair`` repair) one entry, printing what it finds; returns the problems
    left. An entry that another process is writing is not read: its pending rows and groups
    would show as problems, and a repair could mark rows pending under the writer's feet. The
    repair holds the entry against writers until it has finished."""
    from repackctl.cache.store import DatasetEntry, list_entries, open_root
    from repackctl.cache.verify import (
        Problem,
        damaged_problem,
        left_after_repair,
        leftovers,
        leftovers_problem,
        repair_rows,
        scan_chunks,
        verify_entry,
        writers_kept_out,
    )

    with writers_kept_out(root, name, hold=repair) as busy:
        found, temps, temp_problem = [], [], None
        if busy:
            problems = [busy]
        elif name in list_entries(root, "incomplete"):
            problems = [
                Problem("incomplete: its creation was interrupted (rerun the same extract)")
            ]
        elif name in list_entries(root, "damaged"):
            problems = [damaged_problem(open_root(root, mode="r"), name, "entry")]
        else:
            e = DatasetEntry.open(root, name)
            found = scan_chunks(e)
            problems = verify_entry(e, found)
            temps = leftovers(e)
            temp_problem = leftovers_problem(e, temps)
            problems += [temp_problem] if temp_problem is not None else []
        for p in problems:
            err_console.print(
                f"[red]✗[/] {escape(f'{name}: {p}')}", markup=True, highlight=False, soft_wrap=True
            )
        if not problems:
            console.print(f"[green]✓[/] {escape(name)}: ok", markup=True, highlight=False)
        if repair and temps:
            _sweep(e, temps)  # named above, now gone
            problems = [p for p in problems if p is not temp_problem]
        if not (repair and found):
            return problems
        rows = repair_rows(e, found)
        if rows:
            console.print(
                f"repaired {name}: {rows} rows marked pending; now run",
                highlight=False,
                soft_wrap=True,
            )
            for cmd in _rerun_commands(e, found):
                console.print(f"  {cmd}", highlight=False, soft_wrap=True)
        else:  # a lost `done` chunk written again from the features' records: nothing to redo
            console.print(
                f"repaired {name}: written again from what its features record; nothing to rerun",
                highlight=False,
                soft_wrap=True,
            )
        problems = left_after_repair(e, problems)
    for p in problems:
        err_console.print(
            f"[red]✗[/] {escape(f'{name}: not repaired: {p}')}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
    return problems


def _sweep(entry: DatasetEntry, temps: list) -> None:
    """Delete the temporaries of killed writes ``temps`` that verify listed in ``entry`` (a
    repair, writers kept out since) and say so."""
    from repackctl.cache.verify import sweep_leftovers

    gone = sweep_leftovers(entry, temps)
    console.print(
        f"repaired {entry.name}: deleted {len(gone)} temporary file(s) of killed writes",
        highlight=False,
        soft_wrap=True,
    )


def _rerun_commands(entry: DatasetEntry, found: list) -> list[str]:
    """The commands that write the rows a repair marked pending, in pipeline order, triplets
    last (``verify.producers``): for triplets the `refine train` of the run that builds them,
    with the flags that pick their group (pack run, entry, noise, seed), as `cache verify`
    names it. The flagless `repackctl refine train --name RUN` printed before started a run
    with the defaults, which builds (or finds) another triplets group and left these pending."""
    from repackctl.cache.verify import producers

    return producers(entry, found)


def _refuse(bad: int, total: int, fixes: list[str], repairable: bool) -> None:
    """The error of `cache verify`: what fixes each kind of problem that is left."""
    from repackctl.errors import CacheError

    hints = list(fixes)
    if repairable:
        hints.append(
            "`repackctl cache verify --repair` marks damaged rows pending; then rerun the "
            "extract / pack encode / captions that wrote them (it resumes), or `repackctl cache "
            "rm` them"
        )
    raise CacheError(f"{bad} of {total} entries have problems", "; ".join(hints))


@app.command("rm")
@handle_errors
def rm(
    entry: EntryArg,
    features: Annotated[
        str | None, typer.Option(help="Remove only these features (encoder entry id).")
    ] = None,
    latents: Annotated[str | None, typer.Option(help="Remove only these packed latents.")] = None,
    triplets: Annotated[
        str | None, typer.Option(help="Remove only these refiner triplets (group name).")
    ] = None,
    text: Annotated[
        str | None, typer.Option(help="Remove only these caption features (text group name).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cache: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove an entry (or only some of its features/latents). Asks first unless --yes.

    Example: `repackctl cache rm builtin--train--64px --yes`
    """
    from repackctl.cache.removal import check_removable, remove
    from repackctl.cache.store import DatasetEntry, list_entries

    root = _root(cache, config)
    groups = {"features": features, "latents": latents, "triplets": triplets, "text": text}
    _one_group(entry, groups)
    if _finished_before(root, entry, groups):
        return
    _check_entry_there(root, entry)
    sub = None
    whole = not (features or latents or triplets or text)
    if whole and entry in list_entries(root, "incomplete") + list_entries(root, "damaged"):
        e = None  # an interrupted creation, or an entry whose metadata cannot be read
    else:
        e = DatasetEntry.open(root, entry)
    given = [(k, v) for k, v in groups.items() if v]
    if e is None:
        pass
    elif given and f"{given[0][0]}/{given[0][1]}" in e.incomplete_groups("damaged"):
        # unreadable metadata (`cache ls`: "(damaged)"), of any kind: removable as it is
        sub = f"{given[0][0]}/{given[0][1]}"
    elif given:
        sub = _named_group(e, *given[0])
    what = f"{entry}/{sub}" if sub else entry
    check_removable(root, entry, sub)  # a file the cache did not write: refused before asking
    if not yes and not confirm_delete(
        f"Remove {what} from {root}?", f"repackctl cache info {entry}"
    ):
        console.print("nothing removed", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    remove(root, entry, sub)
    console.print(f"removed {what}", highlight=False, soft_wrap=True)


def _check_entry_there(root: str, entry: str) -> None:
    """Refuse `cache rm` of an entry that is not in the cache, with the entries that are (those
    whose names are close first): the readers' hint, "run `repackctl extract` for it", told a
    user removing something to create it."""
    import difflib

    from repackctl.cache.store import NoCache, list_entries, open_root
    from repackctl.errors import CacheError
    from repackctl.paths import SAFE_NAME, cache_root

    if not SAFE_NAME.fullmatch(entry):
        return  # no entry name at all: refused as such by ``DatasetEntry.open``
    try:
        open_root(root, mode="r")
    except NoCache:
        raise CacheError(
            f"no cache at {cache_root(root)}: nothing removed",
            "pass the cache's folder with --cache (or set REPACKCTL_CACHE, or `cache` in the "
            "--config file); `repackctl cache ls --cache DIR` lists a cache's entries",
        ) from None
    have = list_entries(root, "all")
    if entry in have:
        return
    close = [n for n in have if entry in n] or difflib.get_close_matches(entry, have, 3, 0.5)
    hint = "`repackctl cache ls` lists them" if have else "check --cache"
    if close:
        hint = f"did you mean {', '.join(close)}? {hint}"
    raise CacheError(
        f"no cache entry {entry!r} in {cache_root(root)}: nothing removed (have: "
        f"{', '.join(have) or 'none'})",
        hint,
    )


#: the words for each kind of group in `cache rm`'s "no … in ENTRY"
_GROUP_WHAT = {
    "features": "features",
    "latents": "packed latents",
    "triplets": "refiner triplets",
    "text": "caption features",
}


def _named_group(e: DatasetEntry, kind: str, name: str) -> str:
    """``kind/name`` of the group of entry ``e`` that `cache rm --<kind> NAME` removes: a
    complete one, or one whose creation was interrupted (it lacks arrays; removable as it is).

    One that is not there is refused with the ids the entry holds of that kind and `cache info`:
    the hint of the readers ("run `repackctl extract` …") made no sense for a removal.
    """
    from repackctl.errors import CacheError

    sub = f"{kind}/{name}"
    unfinished = [g.partition("/")[2] for g in e.incomplete_groups() if g.startswith(f"{kind}/")]
    if kind == "features":
        have = e.feature_ids()
    elif kind == "latents":
        have = e.latent_ids()
    else:
        have = e.complete_groups(kind)
    if name in have or name in unfinished:
        return sub
    listed = ", ".join(have + [f"{u} (unfinished)" for u in unfinished]) or "none"
    raise CacheError(
        f"no {_GROUP_WHAT[kind]} {name!r} in {e.name} (have: {listed})",
        f"pass one of those ids: `repackctl cache info {e.name}` lists them",
    )


def _finished_before(root: str, entry: str, groups: dict[str, str | None]) -> bool:
    """A `cache rm` of the same group killed while it deleted: its rest is deleted now (the
    group itself is gone from the entry, so it would be "not found")."""
    from repackctl.cache.removal import entry_folder, finish_removal
    from repackctl.cache.store import NoCache

    kind, value = next(((k, v) for k, v in groups.items() if v), (None, None))
    sub = f"{kind}/{value}" if kind else None
    try:
        folder = entry_folder(root, entry)
    except NoCache:
        return False
    if folder is None or (folder / sub if sub else folder).exists():
        return False
    if not finish_removal(root, entry, sub):
        return False
    what = f"{entry}/{sub}" if sub else entry
    console.print(
        f"removed {what} (the rest that an interrupted `cache rm` left)",
        highlight=False,
        soft_wrap=True,
    )
    return True


def _one_group(entry: str, given: dict[str, str | None]) -> None:
    """``cache rm`` removes the whole entry when no group option is given: an empty one
    (``--features "$ID"`` with ``$ID`` unset) removed every image, feature and latent, and of
    two options only the first was removed. Both refused before anything is read or removed."""
    from repackctl.errors import ConfigError

    hint = f"name one group: see `repackctl cache info {entry}` for its ids"
    for name, value in given.items():
        if value is not None and not value.strip():
            raise ConfigError(f"--{name} is empty (it names the group to remove)", hint)
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(named)} given: `cache rm` removes one group", hint)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")
