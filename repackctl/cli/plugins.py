"""`repackctl plugins`: list registered encoders, models and datasets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from repackctl.cli.common import console, handle_errors


@handle_errors
def plugins(
    check: Annotated[
        bool, typer.Option("--check", help="Import every plugin to report load errors.")
    ] = False,
) -> None:
    """List every registered id with its group, distribution, version and load status.

    Set REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1 to keep the built-ins only.
    """
    from repackctl.registry import GROUPS, registry

    table = Table(title="repackctl plugins")
    for col in ("id", "group", "distribution", "version", "status"):
        table.add_column(col)
    for kind in GROUPS:
        reg = registry(kind)
        if check:
            for name in reg.ids():
                reg.check(name)
        for row in reg.info():
            table.add_row(row.id, row.group, row.distribution, row.version, row.status)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
