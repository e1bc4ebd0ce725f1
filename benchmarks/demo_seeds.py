"""How far the demo's sample figures move with the DiT's seed alone.

    .venv/bin/python benchmarks/demo_seeds.py                    # seeds 1 and 2 beside runs/demo
    .venv/bin/python benchmarks/demo_seeds.py --demo runs/demo --seeds 1 2 3 --out runs/demo-seeds
    .venv/bin/python benchmarks/demo_seeds.py --dit-steps 7200 --seeds 0 1 2  # a longer DiT

It needs a finished ``repackctl demo`` and only reads it: the plan the demo was started with
(its ``plan.json``: ``--quick`` or not, seed, sizes), its cache, pack and refiner. Each seed
trains the demo's DiT again (its init, data order, time draws and sampling noise change; cache,
pack and refiner stay the demo's), samples and scores as the demo does
(:func:`repackctl.demo.run_dit_seed`), in ``<out>/seed-<N>``, one process and one thread per
seed, all at once. It writes ``<out>/seeds.md`` and ``seeds.json``: each seed's class accuracy,
FD and colour distance, the demo's own run under its seed (``repackctl demo --seed``, 0 by
default; the default ``--seeds`` are the two after it), and the mean ± std. A second call reuses
what is finished.

``--dit-steps N`` trains each seed's DiT for N steps instead of the demo's (the same recipe
otherwise: its learning-rate schedule is constant after the warm-up): how the figures move with
the DiT's training compute. The demo's own run is then not one of them, so its seed may be given,
and the default folder is ``runs/demo-seeds-<N>``; a folder made for another N is refused.

Two seeds of the full demo took 3 min 8 s on a 2-core Xeon (speed index 166; 13 min 24 s with
the earlier, longer DiT on a 2-GHz Xeon), and 4 min 41 s on a 2-core AMD EPYC (speed index 92).
The folder of a text-to-image demo (``repackctl demo --t2i``) is refused as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from repackctl.demo import SEED_METRICS, DemoPlan, check_finished, run_dit_seed
from repackctl.errors import ConfigError, TrainingError, script_main
from repackctl.files import write_json_atomic
from repackctl.pipeline import claim_folder
from repackctl.progress import log_progress


def one_seed(args: argparse.Namespace, plan: DemoPlan) -> int:
    """A worker: one seed of the seeds' ``plan``, its scores in ``<out>/seed-<N>/seed.json``."""
    runs = args.out / f"seed-{args.one}"
    log = _log(args.one)  # plain lines (every ~30 s for a long stage): the seeds share a terminal
    scores = run_dit_seed(plan, args.one, runs, log=log, progress=log_progress(write=log))
    write_json_atomic(runs / "seed.json", {"seed": args.one, **scores})
    return 0


def _log(seed: int):
    return lambda msg: print(f"[seed {seed}] {msg}", flush=True)


def run_seeds(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every seed in its own process at once; the rows in seed order (a failure is an error)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--demo",
        str(args.demo),
        "--out",
        str(args.out),
    ]
    if args.dit_steps is not None:
        base += ["--dit-steps", str(args.dit_steps)]
    procs = {s: subprocess.Popen([*base, "--one", str(s)], env=env) for s in args.seeds}
    failed = [s for s, p in procs.items() if p.wait() != 0]
    if failed:
        raise TrainingError(f"seed(s) {failed} failed", "their output is above; rerun to resume")
    return [json.loads((args.out / f"seed-{s}" / "seed.json").read_text()) for s in args.seeds]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per seed, then mean ± std of every column (of two seeds or more)."""
    lines = ["| seed | " + " | ".join(SEED_METRICS) + " |", "|---" * (len(SEED_METRICS) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.4g}" for k in SEED_METRICS) + " |")
    if len(rows) < 2:
        return lines
    stats = [
        f"{statistics.mean(r[k] for r in rows):.4g} ± {statistics.stdev(r[k] for r in rows):.2g}"
        for k in SEED_METRICS
    ]
    lines.append("| mean ± std | " + " | ".join(stats) + " |")
    return lines


def _rows(args: argparse.Namespace, plan: DemoPlan, again: bool) -> list[dict[str, Any]]:
    """Check the demo (its ``plan``) and the folder, run the seeds: their rows, the demo's own
    first unless they train for other steps than it did (``again``)."""
    metrics = args.demo / "metrics.json"  # the demo's own run: its plan's seed
    if not metrics.is_file():
        raise ConfigError(f"{args.demo} holds no finished demo", "run `repackctl demo` first")
    if len(set(args.seeds)) != len(args.seeds) or (plan.seed in args.seeds and not again):
        raise ConfigError(
            f"--seeds {' '.join(map(str, args.seeds))}",
            f"give distinct seeds; {plan.seed} is the demo's own run (`repackctl demo --seed "
            f"{plan.seed}`), trained again only with --dit-steps",
        )
    demo = json.loads(metrics.read_text())
    check_finished(plan)
    # a folder of seeds trained for another length is another experiment: refused, not mixed
    kind = f"demo-seeds --dit-steps {args.dit_steps}" if again else "demo-seeds"
    claim_folder(args.out, kind, (), fresh=False)
    own = [] if again else [{"seed": plan.seed, **{k: demo[k] for k in SEED_METRICS}}]
    return [*own, *run_seeds(args)]


@script_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the finished demo")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="DiT seeds; default the two after the demo's own (its --seed, 0 by default), which "
        "is given only with --dit-steps",
    )
    ap.add_argument("--out", type=Path, help="default runs/demo-seeds (-<N> with --dit-steps N)")
    ap.add_argument("--dit-steps", type=int, help="DiT steps of every seed; default the demo's")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a worker process
    args = ap.parse_args(argv)
    if args.dit_steps is not None and args.dit_steps < 1:
        raise ConfigError(f"--dit-steps {args.dit_steps}", "give a step count of 1 or more")
    plan = DemoPlan.of_demo(args.demo)  # the demo's own plan (its plan.json)
    seeds_plan = plan if args.dit_steps is None else replace(plan, dit_steps=args.dit_steps)
    again = seeds_plan.dit_steps != plan.dit_steps  # the seeds train for other steps
    if args.out is None:
        args.out = Path(f"runs/demo-seeds-{args.dit_steps}" if again else "runs/demo-seeds")
    if args.seeds is None:
        args.seeds = [plan.seed + 1, plan.seed + 2]
    if args.one is not None:
        return one_seed(args, seeds_plan)
    rows = _rows(args, plan, again)
    write_json_atomic(args.out / "seeds.json", rows)
    title = f"# DiT seed spread of {args.demo} ({seeds_plan.dit_steps} DiT steps)"
    text = "\n".join([title, "", *table(rows), ""])
    (args.out / "seeds.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
