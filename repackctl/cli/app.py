"""The ``repackctl`` command line: one thin module per command group, registered here."""

from __future__ import annotations

import importlib
import inspect
from typing import NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 vendors Click
from typer.core import TyperGroup

from repackctl import __version__

# --help lists the commands in pipeline order, then the tools
ORDER = ("extract", "pack", "captions", "train", "refine", "sample", "evaluate", "benchmark",
         "demo", "import", "cache", "runs", "plugins")  # fmt: skip


def usage_failure(e: UsageError, ctx: typer.Context | None = None) -> NoReturn:
    """A command line Click cannot parse (an unknown option, a missing argument, a value of the
    wrong type) as every other refusal: one ``Error:`` line, a ``Hint:`` naming the ``--help``
    of the command that was typed (``ctx``: the root's, for errors that carry none), exit code
    2; never Click's boxed usage text."""
    from repackctl.cli.common import fail
    from repackctl.errors import ConfigError

    where = e.ctx.command_path if e.ctx is not None else _typed_command(ctx)
    message = " ".join(e.format_message().split())
    fail(ConfigError(message, f"`{where} --help` shows how to call it"))
    raise AssertionError("fail() exits")  # pragma: no cover


#: ``ctx.meta`` key: the arguments the root group left for its commands to parse
TYPED = "repackctl.typed"


def _typed_command(ctx: typer.Context | None) -> str:
    """``repackctl train dit``: the root's name and the command names at the head of the
    arguments it had left to parse (the options' parser raises some errors without a context)."""
    if ctx is None:
        return "repackctl"
    words, command = [ctx.command_path], ctx.command
    for token in ctx.meta.get(TYPED, []):
        sub = command.get_command(ctx, token) if hasattr(command, "get_command") else None
        if sub is None:
            break
        words.append(token)
        command = sub
    return " ".join(words)


class PipelineOrder(TyperGroup):
    """Commands listed in :data:`ORDER` (Typer lists single commands before groups); a command
    line that does not parse, at any depth, is refused by :func:`usage_failure`."""

    def list_commands(self, ctx) -> list[str]:  # noqa: ANN001 - Click's context
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))

    def make_context(
        self, info_name: str | None, args: list[str], *more: object, **kw: object
    ) -> typer.Context:
        try:
            ctx = super().make_context(info_name, args, *more, **kw)
        except NoArgsIsHelpError:
            raise
        except UsageError as e:
            usage_failure(e)
        ctx.meta[TYPED] = [*getattr(ctx, "_protected_args", []), *ctx.args]
        return ctx

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as e:
            usage_failure(e, ctx)


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
    """The ``repackctl`` console script and ``python -m repackctl``: the CLI, which ends on
    SIGTERM with an ``Error:`` line (:func:`~repackctl.cli.common.stop_on_sigterm`); the
    commands called in-process (tests, notebooks) leave the caller's signals alone."""
    from repackctl.cli.common import stop_on_sigterm

    stop_on_sigterm()
    app()


def unwrap_help(text: str) -> str:
    """A docstring's paragraphs with their source line breaks taken out: Typer's rich markup
    keeps every newline, so text wrapped at 100 columns in the source was printed in ragged
    lines by ``--help`` at any terminal width. Paragraphs (blank lines) and lines that start a
    list item or are indented stay as written."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = paragraph.split("\n")
        joined = lines[0]
        for line in lines[1:]:
            keep = line.startswith((" ", "- ", "* ", "• "))
            joined += ("\n" + line) if keep else (" " + line.strip())
        paragraphs.append(joined)
    return "\n\n".join(paragraphs)


def _unwrap_commands(typer_app: typer.Typer) -> None:
    """:func:`unwrap_help` over the help of every command of ``typer_app`` and of its groups
    (the groups' own help is one line, given to ``typer.Typer``)."""
    for info in typer_app.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if text:
            info.help = unwrap_help(text)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_commands(group.typer_instance)


_unwrap_commands(app)
