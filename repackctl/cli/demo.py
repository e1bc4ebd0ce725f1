"""`repackctl demo`: the whole pipeline on the built-in dataset (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from repackctl.cli.common import console, handle_errors, rich_progress
from repackctl.errors import ConfigError

if TYPE_CHECKING:
    from repackctl.pipeline import RunReport


@handle_errors
def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for everything the demo writes (its own cache too); default runs/demo, "
            "with --t2i runs/demo-t2i.",
            show_default=False,
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Delete the demo's earlier results (only what it wrote; refused if its folders hold "
            "anything else) and start over.",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="A reduced run (fewer images and steps) in about a minute."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of every stage.")] = 0,
    pca_arm: Annotated[
        bool,
        typer.Option(
            "--pca-arm",
            help="Also train the paper's PCA baseline with the same recipe (its own pack and "
            "DiT stages, after the demo's) and add it to the report: about twice the time.",
        ),
    ] = False,
    t2i: Annotated[
        bool,
        typer.Option(
            "--t2i",
            help="The text-to-image demo instead: captions → MMDiT + REPA → prompts.png and "
            "prompt adherence (default --out runs/demo-t2i).",
        ),
    ] = False,
) -> None:
    """Run extract → pack → train dit (+REPA) → refine → sample → evaluate on the built-in data.

    Writes report.md, samples.png, recon.png and curves.png (plus each stage's own outputs) into
    --out. Running it again reuses every complete stage; --fresh starts over.

    Example: `repackctl demo` (about 8 minutes on 2 idle CPU cores), `repackctl demo --quick`,
    `repackctl demo --pca-arm` (adds the PCA baseline to a finished demo).
    """
    from repackctl.settings import SEED_MAX

    if not 0 <= seed <= SEED_MAX:  # checked before the folder is claimed: nothing written
        raise ConfigError(
            f"--seed must lie in 0 … {SEED_MAX} (2**32 − 1), got {seed}",
            "seeds are 32-bit words: a larger or negative one would repeat another seed's results",
        )
    if t2i:
        if pca_arm:
            raise ConfigError(
                "--pca-arm is an arm of the class-conditional demo, not of --t2i",
                "run `repackctl demo --pca-arm` without --t2i",
            )
        # only an --out not given takes the t2i default: `--out runs/demo` is written where asked
        _demo_t2i(Path("runs/demo-t2i") if out is None else out, fresh, quick, seed)
        return
    from repackctl.demo import DemoPlan, run_demo

    out = (Path("runs/demo") if out is None else out).expanduser().resolve()
    plan = DemoPlan.quick(out) if quick else DemoPlan(out=out)
    plan.seed, plan.pca_arm = seed, pca_arm
    console.print(f"[bold]repackctl demo[/] → {escape(str(out))}", markup=True)
    report = run_demo(
        plan,
        rich_progress,
        lambda msg: console.print(msg, highlight=False, markup=False, soft_wrap=True),
        fresh,
    )
    _print_summary(report)


def _print_summary(report: RunReport) -> None:
    """The demo's stage times, results, probe table and files on the console."""
    from repackctl.demo_report import demo_psnr

    m = report.metrics
    table = Table(title="demo summary")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("reused")
    for s in report.stages:
        table.add_row(s.name, f"{s.seconds:.1f}", "yes" if s.reused else "")
    table.add_row(Text("total", style="bold"), Text(f"{report.seconds:.1f}", style="bold"), "")
    console.print(table)
    results = Table(title="results")
    results.add_column("measure")
    results.add_column("value", justify="right")
    results.add_row("FD (encoder space), samples", f"{m['fd_plain']:.3f}")
    results.add_row("FD (encoder space), refined samples", f"{m['fd_refined']:.3f}")
    results.add_row(
        "FD decoder floor / real vs real", f"{m['fd_decoder']:.3f} / {m['fd_real']:.3f}"
    )
    results.add_row(
        "class accuracy of samples (real val)",
        f"{100 * m['class_accuracy']:.1f} % ({100 * m['class_accuracy_real_val']:.1f} %)",
    )
    results.add_row(
        "colour distance, samples (real vs real)",
        f"{m['colour_refined']:.3f} ({m['colour_real']:.3f})",
    )
    results.add_row(
        "recon PSNR → refined", f"{demo_psnr(m, 'recon_psnr')} → {demo_psnr(m, 'refined_psnr')}"
    )
    results.add_row(
        "high-frequency error, recon → refined",
        f"{m['recon_hf_error']:.4f} → {m['refined_hf_error']:.4f}",
    )
    if "fd_pca" in m:
        results.add_row(
            "PCA arm: FD (decoder floor), class accuracy",
            f"{m['fd_pca']:.3f} ({m['fd_decoder_pca']:.3f}), {100 * m['class_accuracy_pca']:.1f} %",
        )
    console.print(results)
    console.print(m["probe"]["table"])
    for name, path in report.files.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)


def _demo_t2i(out: Path, fresh: bool, quick: bool, seed: int) -> None:
    """`repackctl demo --t2i`: run ``repackctl.demo_t2i`` and print its summary."""
    from repackctl.demo_t2i import T2IDemoPlan, run_t2i_demo

    out = out.expanduser().resolve()
    plan = T2IDemoPlan.quick(out) if quick else T2IDemoPlan(out=out)
    plan.seed = seed
    console.print(f"[bold]repackctl demo --t2i[/] → {escape(str(out))}", markup=True)
    log = lambda msg: console.print(msg, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    report = run_t2i_demo(plan, rich_progress, log, fresh)
    m = report.metrics
    table = Table(title="demo --t2i summary")
    for col in ("measure", "samples", "chance", "real val images"):
        table.add_column(col)
    for key in ("shape", "colour"):
        row = [m[f"{key}_accuracy"], m["chance"][key], m["classifier_real_val_accuracy"][key]]
        table.add_row(f"{key} adherence", *(f"{100 * v:.1f} %" for v in row))
    console.print(table)
    console.print(
        f"FD (encoder space): {m['fd']:.3f}; total {report.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    for name, path in report.files.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
