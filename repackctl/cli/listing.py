"""Listings (`cache ls`, `runs ls`, `… info`) that never cut an id.

On a terminal: a Rich table whose cells wrap (``overflow="fold"``) and whose first column is as
wide as its longest id. Elsewhere (pipes, files, CI): plain aligned lines at full width, easy to
grep. ``--json``: one JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from repackctl.cli.common import console

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")
]


def megabytes(n: int) -> str:
    """A size in bytes as ``12.3 MB``."""
    return f"{n / 1e6:.1f} MB"


def _cell(value: Any, sep: str = ", ") -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return sep.join(str(v) for v in value) or "-"
    return str(value)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (no Rich wrapping or colours)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


#: a column whose longest cell is at most this wide never wraps (counts, sizes, dates)
SHORT = 16


def table(title: str, columns: list[str], rows: list[list[Any]], width: int) -> Table:
    """A Rich table whose short columns keep their width and whose long ones (ids, lists of
    ids) wrap by folding: a cell is never cut with an ellipsis. The first column (the id) keeps
    up to a third of ``width`` before it folds."""
    cells = [[_cell(v, "\n") for v in r] for r in rows]
    t = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for i, col in enumerate(columns):
        longest = max([len(col)] + [len(line) for r in cells for line in r[i].splitlines()])
        if longest <= SHORT:
            t.add_column(col, no_wrap=True, min_width=longest)
        else:
            keep = min(longest, width // 3) if i == 0 else None
            t.add_column(col, overflow="fold", min_width=keep)
    for r in cells:
        t.add_row(*r)
    return t


def plain_lines(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """Aligned lines at full width: a header, then one line per row."""
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out = []
    for r in [columns, *cells]:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return out


def print_listing(
    title: str, columns: list[str], rows: list[list[Any]], out: Console | None = None
) -> None:
    """A table on a terminal, plain full-width lines elsewhere (ids never cut)."""
    out = out or console
    if out.is_terminal:
        out.print(table(title, columns, rows, out.width))
        return
    out.print(title, highlight=False, soft_wrap=True, markup=False)
    for line in plain_lines(columns, rows):
        out.print(line, highlight=False, soft_wrap=True, markup=False)


def print_pairs(title: str, pairs: list[tuple[str, Any]], out: Console | None = None) -> None:
    """Key/value rows: a two-column table on a terminal, ``key  value`` lines elsewhere."""
    out = out or console
    if out.is_terminal:
        t = Table(title=title, title_justify="left", show_header=False)
        t.add_column("key", style="bold", no_wrap=True)
        t.add_column("value", overflow="fold")
        for k, v in pairs:
            t.add_row(k, _cell(v))
        out.print(t)
        return
    out.print(title, highlight=False, soft_wrap=True, markup=False)
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        out.print(f"{k.ljust(width)}  {_cell(v)}", highlight=False, soft_wrap=True, markup=False)
