"""`repackctl plugins`: list registered encoders, models and datasets."""

from __future__ import annotations

from typing import Annotated

import typer

from repackctl.cli.common import handle_errors
from repackctl.cli.listing import print_listing
from repackctl.errors import RegistryError


@handle_errors
def plugins(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Import every plugin to report load errors; exit non-zero when one fails.",
        ),
    ] = False,
) -> None:
    """List every registered id with its group, distribution, version and load status.

    Set REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1 to keep the built-ins only.
    """
    from repackctl.registry import GROUPS, registry

    rows, failed = [], []
    for kind in GROUPS:
        reg = registry(kind)
        if check:
            for name in reg.ids():
                status = reg.check(name)
                if status.startswith("error:"):
                    failed.append(f"{name} ({reg.group})")
        for row in reg.info():
            rows.append([row.id, row.group, row.distribution, row.version, row.status])
    print_listing("repackctl plugins", ["id", "group", "distribution", "version", "status"], rows)
    if failed:
        noun = "plugin" if len(failed) == 1 else "plugins"
        raise RegistryError(
            f"{len(failed)} {noun} failed to load: {', '.join(failed)}",
            "the status column above says why; reinstall or uninstall the distributions it "
            "names (a duplicate id: uninstall one of the two), or set "
            "REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1 to keep the built-ins only",
        )


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
