"""`repackctl plugins`: list registered encoders, models and datasets."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import handle_errors
from repackctl.cli.listing import print_listing


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

    rows = []
    for kind in GROUPS:
        reg = registry(kind)
        if check:
            for name in reg.ids():
                reg.check(name)
        for row in reg.info():
            rows.append([row.id, row.group, row.distribution, row.version, row.status])
    print_listing("repackctl plugins", ["id", "group", "distribution", "version", "status"], rows)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
