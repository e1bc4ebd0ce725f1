"""The ``repackctl`` command line: one thin module per command group, registered here."""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

from repackctl import __version__

# --help lists the commands in pipeline order, then the tools
ORDER = ("extract", "pack", "captions", "train", "refine", "sample", "evaluate", "benchmark",
         "demo", "import", "cache", "runs", "plugins")  # fmt: skip


class PipelineOrder(TyperGroup):
    """Commands listed in :data:`ORDER` (Typer lists single commands before groups)."""

    def list_commands(self, ctx) -> list[str]:  # noqa: ANN001 - Click's context
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


app = typer.Typer(
    cls=PipelineOrder,
    name="repackctl",
    help=(
        "Train Diffusion Transformers on packed features of frozen vision foundation models "
        "(RePack then Refine, REPA). With no --data/--encoder, commands use the built-in dataset "
        "and encoder, offline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"repackctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """repackctl: extract → pack → train → refine → sample → evaluate."""


# Command modules in --help order; each has ``register(app)``. A module that is not part of this
# build (yet) is simply absent: commands appear in --help only once they exist and work.
COMMAND_MODULES = (
    "extract",
    "pack",
    "captions",
    "train",
    "refine",
    "sample",
    "evaluate",
    "benchmark",
    "demo",
    "convert",
    "cache",
    "runs",
    "plugins",
)
for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"repackctl.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"repackctl.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
