"""The ``repackctl`` command line: one thin module per command group, registered here."""

from __future__ import annotations

import typer

from repackctl import __version__
from repackctl.cli import cache_cmd, extract_cmd, plugins_cmd

app = typer.Typer(
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


app.command("extract")(extract_cmd.extract)
app.add_typer(cache_cmd.app, name="cache")
app.command("plugins")(plugins_cmd.plugins)


def main() -> None:
    app()
