"""Small study: a text-to-image MMDiT with vs without REPA on the built-in captioned data.

    python benchmarks/t2i_repa.py                    # the reference run (about 30 min on 2 CPUs)
    python benchmarks/t2i_repa.py --quick --out /tmp/t2i-repa   # every stage at a toy size

Every stage is the library call behind the command a user types (`repackctl extract`, `pack
train`, `pack encode`, `captions`, `train t2i`, `sample`, `evaluate adherence`), through the
shared runner ``repackctl.pipeline.Pipeline`` (as `repackctl demo --t2i`), on one work folder:

1. the built-in images (train + val) through the built-in encoder, a RePack autoencoder and its
   latents; the built-in captions (several phrasings per image) encoded once by MiniLM;
2. for each seed, two `train t2i` runs of the demo's MMDiT (``T2IRecipe``: mmdit-s-2 cut to 3
   blocks of width 128) that differ only in ``--repa-weight``
   (0.5 vs 0): same steps, batch, learning rate, data order and noise (the seed);
3. each run's EMA sampled on the val captions (same prompts, sampler, steps, CFG and seed);
4. scores: FD in the built-in encoder's feature space between the samples and the real val images
   (``Pipeline.encoder_fd``; no Inception weights exist offline), and prompt adherence
   (`repackctl evaluate adherence`: shape / colour classifiers trained on the real images).

Writes ``results.json`` in ``--out`` and the table ``benchmarks/results/t2i_repa.md`` (or
``--report``). Lower FD and higher adherence are better; the verdict says whether REPA helped
on average over the seeds, and by how much compared to the spread between seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.demo_t2i import T2IRecipe
from repackctl.errors import ConfigError, name_items, script_main
from repackctl.files import refuse_foreign_output
from repackctl.pipeline import STUDY_RESTART, Pipeline, keep_plan
from repackctl.run_lock import lock_pipeline


@dataclass(kw_only=True)
class Plan(T2IRecipe):
    """Sizes of one study run: the recipe of `repackctl demo --t2i` (``T2IRecipe``), its seeds
    and how many val captions are sampled."""

    seeds: tuple[int, ...] = (0, 1, 2)
    samples: int = 200

    @classmethod
    def quick(cls) -> Plan:
        return cls(n_train=64, n_val=32, resolution=32, pack_steps=4, depth=1, width=32, steps=6,
                   batch=8, repa_hidden=32, seeds=(0, 1), samples=16, sample_steps=2,
                   adherence_steps=5)  # fmt: skip


class Study(Pipeline):
    """The study's stages in one work folder (the shared runner ``repackctl.pipeline``)."""

    def __init__(self, out: Path, plan: Plan) -> None:
        super().__init__(out, log=lambda msg: print(msg, flush=True))
        self.plan = plan

    @property
    def times(self) -> dict[str, float]:
        """Seconds per kind of stage (extract, pack, captions, train, sample, adherence, fd)."""
        out: dict[str, float] = {}
        for s in self.stages:
            kind = s.name.split()[0]
            out[kind] = out.get(kind, 0.0) + s.seconds
        return out

    def prepare(self) -> None:
        """Cache entries (train + val), RePack latents, caption features."""
        p = self.plan
        for split, n in (("train", p.n_train), ("val", p.n_val)):
            self.stage(f"extract {split}",
                       lambda s=split, n=n: self.extract(s, n, p.resolution, chunk=32, shard=256))  # fmt: skip
        self.stage("pack train",
                   lambda: self.pack_train("pack", p.pack_steps, image_every=0, **p.pack_flags()))  # fmt: skip
        self.stage("pack encode", lambda: self.pack_encode("pack")[:2])
        for split in ("train", "val"):  # val: the default evaluation prompts
            self.stage(f"captions {split}",
                       lambda s=split: self.captions(s, max_length=p.max_length))  # fmt: skip

    def arm(self, seed: int, repa: bool) -> dict[str, Any]:
        """Train one run (seed ``seed``), sample it on the val captions (seed 0), score it."""
        p = self.plan
        name = f"t2i-{'repa' if repa else 'plain'}-s{seed}"
        weight = p.repa_weight if repa else 0.0
        self.seed = seed  # the run's seed: data order and noise

        def train() -> tuple[bool, str]:
            reused = self.finished(name, p.steps)
            self.t2i_train(name, p.steps, pack_run="pack", ckpt_every=p.steps, image_every=0,
                           log_every=max(p.steps // 20, 1), **p.mmdit_flags(weight))  # fmt: skip
            return reused, f"REPA weight {weight}, seed {seed}"

        self.stage(f"train {name}", train)
        self.seed = 0  # same prompts, noise and classifiers for every run
        got: dict[str, Any] = {}

        def sample() -> tuple[bool, str]:
            got["images"], _, got["folder"], reused = self.sample_prompts(
                name, None, num=p.samples, steps=p.sample_steps, **p.guidance_flags())  # fmt: skip
            return reused, str(got["folder"])

        self.stage(f"sample {name}", sample)
        folder = got["folder"]
        self.stage(f"adherence {name}",
                   lambda: got.update(adh=self.adherence(folder, p.adherence_steps).scores))  # fmt: skip
        self.stage(f"fd {name}",
                   lambda: got.update(fd=self.encoder_fd(got["images"], "val", p.resolution)))  # fmt: skip
        adh = got["adh"]
        card = json.loads((folder / "protocol.json").read_text())
        assert card.get("prompt_source", "").endswith(self.entries["val"]), card.get(
            "prompt_source"
        )
        return {"run": name, "seed": seed, "repa_weight": weight, "fd": got["fd"],
                "shape_accuracy": adh["shape_accuracy"], "colour_accuracy": adh["colour_accuracy"],
                "classifier_real_accuracy": adh.get("classifier_real_accuracy"),
                "samples": str(folder)}  # fmt: skip


def _mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def verdict(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Table lines comparing the arms, and a summary with an honest verdict per score."""
    lines, summary = [], {}
    for key, better in (("fd", -1), ("shape_accuracy", 1), ("colour_accuracy", 1)):
        on = [r[key] for r in rows if r["repa_weight"] > 0]
        off = [r[key] for r in rows if r["repa_weight"] == 0]
        (m_on, s_on), (m_off, s_off) = _mean_sd(on), _mean_sd(off)
        diffs = [better * (a - b) for a, b in zip(on, off, strict=True)]  # > 0: REPA better
        wins = sum(d > 0 for d in diffs)
        helped = float(np.mean(diffs)) > 0
        clear = helped and wins == len(diffs) and abs(m_on - m_off) > max(s_on, s_off)
        word = ("REPA better on every seed, beyond the seed spread" if clear
                else "REPA better on average (within noise)" if helped
                else "REPA NOT better at this scale")  # fmt: skip
        summary[key] = {"repa": m_on, "no_repa": m_off, "repa_wins": wins, "verdict": word}
        lines.append(f"| {key} ({'lower' if better < 0 else 'higher'} is better) | "
                     f"{m_off:.4g} ± {s_off:.2g} | {m_on:.4g} ± {s_on:.2g} | "
                     f"{wins}/{len(diffs)} | {word} |")  # fmt: skip
    return lines, summary


def write_report(
    path: Path, plan: Plan, rows: list, times: dict, wall: float, host: dict[str, Any] | None
) -> dict[str, Any]:
    lines, summary = verdict(rows)
    per_run = [f"| {r['run']} | {r['seed']} | {r['repa_weight']} | {r['fd']:.4g} | "
               f"{r['shape_accuracy']:.3f} | {r['colour_accuracy']:.3f} |" for r in rows]  # fmt: skip
    real = json.dumps(rows[0].get("classifier_real_accuracy"))
    from repackctl.data.builtin import CLASS_NAMES
    from repackctl.evaluate.adherence import HUES

    n_shapes, n_hues = len(CLASS_NAMES), len(HUES)
    chance = {"shape_accuracy": 1 / n_shapes, "colour_accuracy": 1 / n_hues}
    near = [k for k, c in chance.items() if max(r[k] for r in rows) < 2 * c]
    reading = (
        f"Every run's {' and '.join(k.replace('_', ' ') for k in near)} is below twice chance: "
        "the model barely follows its prompts in either arm at this scale, so these scores "
        "cannot show a REPA effect on adherence."
        if near
        else "Both arms follow their prompts well above chance."
    )
    text = f"""{TITLE}

`python benchmarks/t2i_repa.py` — {_machine_text(host)}. Wall time **{wall / 60:.1f} min**
(stages: {", ".join(f"{k} {v:.0f} s" for k, v in times.items())}).

Setup (the recipe of `repackctl demo --t2i`, `repackctl.demo_t2i.T2IRecipe`): {plan.n_train}
train / {plan.n_val} val built-in images at {plan.resolution} px, built-in encoder, RePack latents
({plan.pack_steps} pack steps, preset {plan.pack_preset}), captions encoded once by MiniLM
(length {plan.max_length}); `repackctl train t2i` of {plan.model_text()} for **{plan.steps}
steps** (batch {plan.batch}, lr {plan.lr:g}), REPA weight {plan.repa_weight} vs 0, seeds
{list(plan.seeds)} (same data order and noise per seed in both arms); EMA sampled on the
{plan.samples} first val captions, Euler {plan.sample_steps} steps, {plan.guidance_text()},
sample seed 0. FD: built-in-encoder feature space, samples vs the {plan.n_val} real val images.
Adherence: shape / colour classifiers trained on the real train images ({plan.adherence_steps}
steps; their accuracy on held-out real images, the ceiling: {real}).

| score | without REPA (mean ± sd) | with REPA | REPA wins (seeds) | verdict |
|---|---|---|---|---|
{chr(10).join(lines)}

| run | seed | REPA weight | FD | shape acc. | colour acc. |
|---|---|---|---|---|---|
{chr(10).join(per_run)}

Chance levels of adherence: shape {chance["shape_accuracy"]:.3f} (1 of {n_shapes} shapes),
colour {chance["colour_accuracy"]:.3f} (1 of {n_hues} hue families). {reading}
With {len(plan.seeds)} seeds, "beyond the seed spread" is weak evidence, not a significance test.

The REPA paper reports MMDiT on MS-COCO at FID 6.05 → 4.73 with REPA after 400k steps of a
24-block model; this is a {plan.depth or "small"}-block model trained for {plan.steps} steps on
toy scenes, so a small or absent effect here says little about that claim either way.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return summary


@script_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/t2i-repa"))
    ap.add_argument("--report", type=Path, default=None, help="default: benchmarks/results/")
    ap.add_argument("--quick", action="store_true", help="every stage at a toy size")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--seeds", type=str, default=None, help="comma-separated, ≥ 2")
    ap.add_argument("--from-results", action="store_true",
                    help="only rewrite the report from --out/results.json")  # fmt: skip
    args = ap.parse_args(argv)
    if args.from_results:
        rewrite_report(args)
    else:
        run(args, plan_of(args))
    return 0


def rewrite_report(args: argparse.Namespace) -> None:
    """``--from-results``: the report again from ``--out/results.json`` (nothing trained)."""
    path = args.out / "results.json"
    try:
        doc = json.loads(path.read_text())
        plan = Plan(**{**doc["plan"], "seeds": tuple(doc["plan"]["seeds"])})
        runs, times, wall = doc["runs"], doc["times"], doc["wall_s"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path} holds no finished study ({type(e).__name__}: {e})",
            "run the study into this --out first (without --from-results)",
        ) from None
    other = sorted(set(doc["plan"]) ^ {f.name for f in fields(Plan)})
    if other:  # defaults filled in would describe a recipe the study did not run
        raise ConfigError(
            f"{path} records another version's plan (settings {name_items(other)} differ)",
            "rewrite its report with the version that ran it, or run the study again into a "
            "new --out",
        )
    report = check_report(args.report or default_report(args.out, plan))
    write_report(report, plan, runs, times, wall, doc.get("machine"))
    print(f"report: {report}")


def default_report(out: Path, plan: Plan) -> Path:
    """Where the report goes without --report: the committed table only for the study's own
    recipe (any seeds); any other plan (--quick, --steps) writes into its --out. A quick study
    rewritten with --from-results replaced the committed table."""
    recipe = replace(plan, seeds=Plan().seeds) == Plan()
    return Path(__file__).parent / "results" / "t2i_repa.md" if recipe else out / "t2i_repa.md"


def machine() -> dict[str, Any]:
    """The machine the study runs on (recorded in results.json: a rewrite describes it)."""
    return {"node": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}  # fmt: skip


def _machine_text(host: dict[str, Any] | None) -> str:
    if not host:  # a results.json written before the machine was recorded
        return "machine not recorded in results.json"
    return (f"{host['node']} ({host['cpus']} CPUs, shared), torch {host['torch']}, "
            f"{host['threads']} threads")  # fmt: skip


def plan_of(args: argparse.Namespace) -> Plan:
    """The study's plan from its flags (checked before anything is written)."""
    plan = Plan.quick() if args.quick else Plan()
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps {args.steps} must be ≥ 1", "e.g. --steps 300")
        plan.steps = args.steps
    if args.seeds:
        try:
            plan.seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds}", "give integers: --seeds 0,1") from None
    if len(plan.seeds) < 2 or len(set(plan.seeds)) < len(plan.seeds):
        raise ConfigError(f"--seeds {args.seeds}", "give at least two distinct seeds: --seeds 0,1")
    return plan


#: The first line of the study's report (a file at --report without it is not replaced).
TITLE = "# Text-to-image: a small MMDiT with vs without REPA (built-in captioned data)"
#: The title of the reports before the study took the demo's recipe (theirs too).
TITLES = (TITLE, "# Text-to-image: MMDiT-tiny with vs without REPA (built-in captioned data)")

#: What a started study holds in its folder (one without plan.json predates the record).
STUDY_FILES = ("cache", "pack", "results.json")


def check_report(path: Path) -> Path:
    """Refuse, before any work, a ``--report`` that is a folder or a file this study did not
    write (its first line is the report's title): it would be replaced."""
    hint = "pass a new file name to --report, or move that file away first"
    refuse_foreign_output(path, _is_report, "--report", "a report of this study", hint)
    return path


def _is_report(path: Path) -> bool:
    """Whether ``path`` starts with this study's title (a report it wrote); unreadable: no."""
    try:
        return path.read_text(errors="replace").startswith(TITLES)
    except OSError:
        return False


def run(args: argparse.Namespace, plan: Plan) -> None:
    """Every stage into ``args.out`` (its plan recorded; another plan there is refused)."""
    report = check_report(args.report or default_report(args.out, plan))
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    lock_pipeline(args.out, "benchmarks/t2i_repa.py")  # a second study here: refused at once
    record = {k: v for k, v in asdict(plan).items() if k != "seeds"}  # seeds may be added
    keep_plan(args.out, "python benchmarks/t2i_repa.py", record, STUDY_FILES,
              STUDY_RESTART)  # fmt: skip
    study = Study(args.out, plan)
    study.prepare()
    rows = [study.arm(seed, repa) for seed in plan.seeds for repa in (False, True)]
    wall = time.perf_counter() - t0
    summary = write_report(report, plan, rows, study.times, wall, machine())
    doc = {"plan": asdict(plan), "runs": rows, "summary": summary, "times": study.times,
           "wall_s": wall, "machine": machine()}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"report: {report} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
