"""`repackctl demo --t2i`: text-to-image on the built-in data, prompts → a labelled image grid.

extract (train + val) → pack train → pack encode → captions (MiniLM, from the wheel) → train t2i
(MMDiT + REPA on the RePack latents) → sample from short prompts → evaluate (prompt adherence,
FD in the built-in encoder's space).

The prompts are the short phrasing of the built-in captions ("a light teal star") of the first
val images, one per distinct caption: every prompt names a shape and an object colour that occur
in the data. Each prompt is sampled with several seeds; ``prompts.png`` shows one row per prompt
(labelled with it), and adherence scores all the samples: the shape / colour classifiers of
`repackctl evaluate adherence` (trained on real train images) against the prompted attributes,
beside their chance levels and the same classifiers' accuracy on the real val images.

Everything goes under one folder (default ``runs/demo-t2i``): its own cache, runs, samples,
``prompts.png``, ``report.md`` and ``metrics.json``. Every stage is resumable, so a second run
reuses what is complete and says so. Shared stages live in ``repackctl.pipeline.Pipeline``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from repackctl.errors import DataError
from repackctl.files import write_text_atomic
from repackctl.pipeline import (
    PLAN_FILE,
    Pipeline,
    RunReport,
    claim_demo_folder,
    demo_command,
    scored_samples,
    solo_threads,
)
from repackctl.progress import ProgressFactory, null_progress
from repackctl.run_lock import released_after

__all__ = ["T2IDemoPlan", "T2IRecipe", "grid_scale", "run_t2i_demo", "short_prompts"]


#: What the text-to-image demo writes in its folder: all that ``--fresh`` removes, and only when
#: nothing else is inside (:func:`repackctl.pipeline.unknown_paths`).
T2I_DEMO_FILES = (
    "cache",
    "pack",
    "t2i",
    "samples",
    "captions.log",
    PLAN_FILE,
    "prompts.png",
    "report.md",
    "metrics.json",
)


@dataclass(kw_only=True)
class T2IRecipe:
    """The text-to-image recipe of `repackctl demo --t2i` and ``benchmarks/t2i_repa.py``: data,
    pack, MMDiT and sampling sizes.

    It is the class-conditional demo's (``repackctl.demo.DemoPlan``, whose comments
    hold its pilots): 64 px, the `small` pack preset without its GAN, and a 3-block,
    width-128, patch-2 model (here the MMDiT ``mmdit-s-2`` cut to that size: 16 image tokens)
    at lr 6e-3 after a 100-step warm-up, time shift 2, REPA's projector of width 128, and
    guidance for t ≤ 0.8. The earlier plan (32 px, the default pack preset for 500 steps,
    ``mmdit-tiny`` for 1500 steps at lr 2e-3, CFG 4 on every step; 1 min 46 s on the 2-core
    Xeon) scored shape 42 % and colour 25 % of 96 samples, but its pack's reconstructions of
    the val images were classified at 29 % and 17.5 %: that decoder drew blobs, so no prompt
    could be followed. Pilots of this recipe on the 2-core Xeon (the pack 1500 steps, 183 s
    beside the captions; 192 samples of 48 val prompts × 4 seeds, judged by the demo's
    classifiers; reconstructions 87.5 % / 40.5 %, real val images 93 % / 49.5 %): 3600 MMDiT
    steps (173 s) gave shape 46.4 / 45.8 / 43.2 % and colour 53.1 / 60.4 / 59.4 % at CFG 4 /
    6 / 8 for t ≤ 0.8 (CFG 2: 34.4 / 41.1 %; CFG 4 / 8 / 12 on every step: shape 41.7 / 38.0
    / 35.4 %), and 7200 steps 52.6 / 53.1 % shape, 50.5 / 55.7 % colour at CFG 4 / 6: the
    MMDiT is bound by its training compute, about +6.5 points of shape a doubling, as the
    class-conditional DiT is. With 4500 steps the whole demo took 8 min 10 s and 8 min 52 s
    there (the host's load)."""

    n_train: int = 2000
    n_val: int = 200
    resolution: int = 64
    pack_steps: int = 1500
    pack_preset: str = "small"
    pack_gan_weight: float | None = 0.0  # None = the preset's schedule
    model: str = "mmdit-s-2"
    depth: int | None = 3  # None = the model's
    width: int | None = 128
    heads: int | None = 2
    steps: int = 4500
    batch: int = 32
    lr: float = 6e-3
    warmup: int | None = 100  # None = the t2i default schedule
    time_shift: float | None = 2.0  # None = the t2i default
    repa_weight: float = 0.5
    repa_hidden: int | None = 128  # None = the t2i default
    max_length: int = 16
    sample_steps: int = 25
    cfg: float = 6.0
    cfg_t_hi: float | None = 0.8  # None = guidance on every step
    adherence_steps: int = 400

    def model_text(self) -> str:
        """The MMDiT as the report names it: ``mmdit-s-2 (depth 3, width 128, heads 2)``."""
        shape = [f"{k} {v}" for k, v in (("depth", self.depth), ("width", self.width),
                                          ("heads", self.heads)) if v is not None]  # fmt: skip
        return self.model + (f" ({', '.join(shape)})" if shape else "")

    def guidance_text(self) -> str:
        """``CFG 6 for t ≤ 0.8`` (or ``on every step``)."""
        when = "on every step" if self.cfg_t_hi is None else f"for t ≤ {self.cfg_t_hi:g}"
        return f"CFG {self.cfg:g} {when}"

    def pack_flags(self) -> dict[str, Any]:
        """`pack train` settings beyond the steps (a None is the preset's value)."""
        extra = {"preset": self.pack_preset, "gan_weight": self.pack_gan_weight}
        return {k: v for k, v in extra.items() if v is not None}

    def mmdit_flags(self, repa_weight: float | None = None) -> dict[str, Any]:
        """`train t2i` settings beyond the run's name, steps and checkpoints (``repa_weight``:
        another than the recipe's, e.g. 0 for the study's arm without REPA)."""
        flags = {"model": self.model, "lr": self.lr, "global_batch": self.batch,
                 "repa_weight": self.repa_weight if repa_weight is None else repa_weight,
                 "depth": self.depth, "width": self.width, "heads": self.heads,
                 "time_shift": self.time_shift, "repa_hidden": self.repa_hidden}  # fmt: skip
        if self.warmup is not None:
            flags |= {"schedule": "warmup", "warmup_steps": self.warmup}
        if flags["repa_weight"] == 0:  # no REPA: its projector width would be refused
            flags.pop("repa_hidden")
        return {k: v for k, v in flags.items() if v is not None}

    def guidance_flags(self) -> dict[str, Any]:
        """`sample` settings of the guidance."""
        return {"cfg": self.cfg} | ({} if self.cfg_t_hi is None else {"cfg_t_hi": self.cfg_t_hi})


@dataclass(kw_only=True)
class T2IDemoPlan(T2IRecipe):
    """Sizes of every stage of `repackctl demo --t2i` (8 to 9 minutes on 2 CPU cores): the
    recipe (``T2IRecipe``), the prompts and the threads."""

    COMMAND: ClassVar[str] = "repackctl demo --t2i"  # how hints name it (``demo_command``)
    DEFAULT_OUT: ClassVar[str] = "runs/demo-t2i"

    out: Path
    prompts: int = 48  # distinct prompts sampled (and scored)
    seeds_per_prompt: int = 4
    grid_rows: int = 8  # prompts shown in prompts.png
    seed: int = 0
    solo_threads: int = field(default_factory=solo_threads)
    side_threads: int = 1  # the captions' process, beside the pack

    @classmethod
    def quick(cls, out: Path) -> T2IDemoPlan:
        """A reduced plan (tests): same stages and files, far fewer steps and images."""
        return cls(out=out, n_train=64, n_val=32, resolution=32, pack_steps=4, depth=1, width=32,
                   steps=10, batch=8, repa_hidden=32, prompts=4, seeds_per_prompt=2, grid_rows=3,
                   sample_steps=2, adherence_steps=5)  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What decides the demo's results (``plan.json``): every size and the seed, not the
        folder nor the threads."""
        skip = ("out", "solo_threads", "side_threads")
        return {k: v for k, v in asdict(self).items() if k not in skip}


def short_prompts(keys: list[str], count: int) -> list[str]:
    """The short caption ("a red star") of built-in images ``builtin:<seed>:<split>:<index>``,
    first occurrences only, at most ``count``."""
    from repackctl.data.captions import builtin_captions

    out: list[str] = []
    for key in keys:
        _, seed, split, index = key.split(":")
        prompt = builtin_captions(int(index), split=split, seed=int(seed))[-1]
        if prompt not in out:
            out.append(prompt)
        if len(out) == count:
            break
    return out


def grid_scale(resolution: int) -> int:
    """Integer enlargement of the cells of ``prompts.png`` (at least 64 px per image)."""
    return max(1, 64 // resolution)


class _T2IDemo(Pipeline):
    """The t2i demo's stages: the shared pipeline runner with the demo's sizes."""

    def __init__(self, plan: T2IDemoPlan, progress: ProgressFactory, log: Callable[[str], None]):
        super().__init__(plan.out, seed=plan.seed, progress=progress, log=log)
        self.plan = plan
        self.report = RunReport(out=plan.out, stages=self.stages)

    def prepare(self) -> None:
        """Images, latents and caption features (train split; prompts are encoded at sampling).

        The captions are encoded in a second process while the pack autoencoder trains here:
        both need only the extracted entry, and on a 2-core machine each gets a core."""
        p = self.plan
        for split, n in (("train", p.n_train), ("val", p.n_val)):
            self.stage(
                f"extract {split}",
                lambda s=split, n=n: self.extract(s, n, p.resolution, shard=256, chunk=32),
            )
        self.start_captions()
        try:
            self.stage("pack train", self.pack_stage)
        except BaseException:
            self.kill_sides()
            raise
        self.stage("captions (waited for)", self.wait_captions)
        self.stage("pack encode", lambda: self.pack_encode("pack")[:2])

    def pack_stage(self) -> tuple[bool, str]:
        return self.pack_train(
            "pack", self.plan.pack_steps, image_every=0, **self.plan.pack_flags()
        )

    def captions_done(self) -> bool:
        """Whether the train entry already holds complete caption features of this length."""
        from repackctl.cache.store import TEXT_ARRAYS, ArrayGroup

        ds = self.entry("train")
        for tid in ds.complete_groups("text", TEXT_ARRAYS):
            group = ArrayGroup(ds.group["text"][tid])
            if group.attrs.get("max_length") == self.plan.max_length and group.complete():
                return True
        return False

    def start_captions(self) -> None:
        """`repackctl captions` of the train entry, in a second process."""
        self.captions_reused = self.captions_done()
        cmd = [
            "captions",
            "--entry",
            self.entries["train"],
            "--max-length",
            str(self.plan.max_length),
            "--cache",
            str(self.out / "cache"),
            "--device",
            "cpu",
        ]  # fmt: skip  (the captions of built-in data carry their seed)
        self.start_side("captions", cmd, self.plan.side_threads)

    def wait_captions(self) -> tuple[bool, str]:
        seconds = self.wait_side("captions", DataError, f"`{demo_command(self.plan)}` to resume")
        return self.captions_reused, (
            f"train captions → MiniLM features (length {self.plan.max_length}), "
            f"{seconds:.0f} s in a parallel process"
        )

    def train(self) -> tuple[bool, str]:
        p = self.plan
        reused = self.finished("t2i", p.steps)
        every = max(p.steps // 2, 1)
        self.t2i_train("t2i", p.steps, pack_run="pack", ckpt_every=every, image_every=0,
                       log_every=max(p.steps // 20, 1), **p.mmdit_flags())  # fmt: skip
        return reused, (
            f"{p.model_text()} + REPA (λ {p.repa_weight}), {p.steps} steps, batch {p.batch}"
        )

    def sample_stage(self) -> tuple[bool, str]:
        p = self.plan
        keys = [str(k) for k in self.entry("val").keys[:]]
        self.prompts = short_prompts(keys, p.prompts)
        n = len(self.prompts) * p.seeds_per_prompt
        self.generated, self.asked, self.folder, reused = self.sample_prompts(
            "t2i",
            self.prompts,
            num=n,
            steps=p.sample_steps,
            batch_size=48,
            grid=0,
            **p.guidance_flags(),
        )
        detail = f"{len(self.prompts)} prompts × {p.seeds_per_prompt} seeds, Euler "
        return reused, detail + f"{p.sample_steps}, {p.guidance_text()}"

    def evaluate(self) -> tuple[bool, str]:
        p = self.plan
        path = self.folder / "adherence.json"
        old = self.reusable_scores(path)
        reused = old is not None
        scores = old if old is not None else self.score_adherence(path)
        m = self.report.metrics
        m.update({k: scores[k] for k in _SCORE_KEYS})
        m["fd"] = self.encoder_fd(self.generated, "val", p.resolution)
        m["n_samples"] = int(len(self.generated))
        return reused, (
            f"shape {100 * m['shape_accuracy']:.0f} % (chance 10 %), colour "
            f"{100 * m['colour_accuracy']:.0f} % (chance {100 * m['chance']['colour']:.0f} %), "
            f"FD {m['fd']:.2f}"
        )

    def reusable_scores(self, path: Path) -> dict[str, Any] | None:
        """The scores of an earlier run of this stage in ``path``, when they are this plan's
        (classifier ``--steps`` and seed) for the PNGs the folder holds now, with every score
        the report reads; None (score again: the demo owns the file) for a missing, damaged or
        partial file, or one written by `evaluate adherence` without the val scores."""
        from repackctl.evaluate.adherence import samples_sha256
        from repackctl.run_files import read_json_dict

        old = read_json_dict(path)
        was = (old or {}).get("classifier")
        want = {"steps": self.plan.adherence_steps, "seed": self.plan.seed}
        if (
            old is None
            or not isinstance(was, dict)
            or any(was.get(k) != v for k, v in want.items())
        ):
            return None
        if not all(k in old for k in _SCORE_KEYS) or not all(
            isinstance(old[k], dict) for k in _SCORE_KEYS if k == "chance" or "classifier" in k
        ):
            return None
        n = len(self.generated)
        return old if old.get("samples_sha256") == samples_sha256(self.folder, n) else None

    def score_adherence(self, path: Path) -> dict[str, Any]:
        """`evaluate adherence` of the samples (+ the classifiers on the real val images), and
        the same classifiers on the pack decoder's reconstructions of those val images: what
        the latent space can show at best (added to ``adherence.json``)."""
        from repackctl.evaluate.adherence import predict, real_attributes
        from repackctl.files import write_json_atomic

        result = self.adherence(self.folder, self.plan.adherence_steps, val="val")
        _, shapes, colours = real_attributes(str(self.out / "cache"), self.entries["val"])
        _, decoded = self.reconstruct("pack", "val", len(shapes))  # (N, 3, R, R) in [-1, 1]
        u8 = ((decoded + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        ps, pc = predict(result.classifier, u8, torch.device("cpu"))
        scores = result.scores | {"classifier_recon_val_accuracy": {
            "shape": float((ps == shapes).mean()), "colour": float((pc == colours).mean()),
            "images": int(len(shapes))}}  # fmt: skip
        write_json_atomic(path, scores)
        return scores

    def grid(self) -> None:
        """``prompts.png``: one row per prompt (labelled), its samples side by side."""
        from PIL import Image

        from repackctl.metrics.recon import save_grid

        p, k = self.plan, len(self.prompts)
        up = grid_scale(p.resolution)  # small images are enlarged (nearest) to be seen
        big = self.generated.repeat(up, axis=1).repeat(up, axis=2)  # (N, R·up, R·up, 3)
        rows = [big[i::k] for i in range(min(p.grid_rows, k))]  # sample i gets prompt i mod k
        assert all(self.asked[i] == self.prompts[i] for i in range(len(rows)))
        path = self.out / "prompts.png"
        save_grid(rows, path, labels=self.prompts[: len(rows)])
        Image.open(path).verify()
        self.report.files["prompts.png"] = str(path)

    def write_report(self) -> None:
        """``report.md``, and ``metrics.json``: the scores with what they were computed from
        (``scored``: the samples' ``samples.npz`` and the checkpoint that made them, with their
        sha256), written through a temporary file."""
        from repackctl.files import write_json_atomic

        m, p, report = self.report.metrics, self.plan, self.report
        write_text_atomic(self.out / "report.md", _report_text(p, m, report, self.folder))
        write_json_atomic(self.out / "metrics.json", {**m, "scored": scored_samples(self.folder)})
        report.files["report.md"] = str(self.out / "report.md")
        report.files["metrics.json"] = str(self.out / "metrics.json")


#: the scores of ``adherence.json`` that the demo's report and metrics.json read
_SCORE_KEYS = (
    "shape_accuracy",
    "colour_accuracy",
    "n_shape",
    "n_colour",
    "chance",
    "classifier_real_accuracy",
    "classifier_real_val_accuracy",
    "classifier_recon_val_accuracy",
)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _report_text(p: T2IDemoPlan, m: dict[str, Any], report: RunReport, folder: Path) -> str:
    real, val = m["classifier_real_accuracy"], m["classifier_real_val_accuracy"]
    rec = m["classifier_recon_val_accuracy"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join([
        "# repackctl demo --t2i — text-to-image on the built-in data",
        "",
        f"{p.n_train} training / {p.n_val} validation images at {p.resolution} px, built-in "
        f"encoder, RePack latents; captions encoded once by MiniLM (length {p.max_length}); "
        f"`train t2i` of {p.model_text()} + REPA (λ {p.repa_weight}) for {p.steps} steps; "
        f"{len(m.get('prompts', [])) or p.prompts} short prompts from val captions × "
        f"{p.seeds_per_prompt} seeds, Euler {p.sample_steps} steps, {p.guidance_text()}.",
        "",
        "## Prompt adherence",
        "",
        "Attribute classifiers (shape, object colour) trained on the real train images judge "
        "whether each sample shows what its prompt names.",
        "",
        "| attribute | samples | chance | classifier on real val images | on their pack "
        "reconstructions | (on held-out real train images) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {a} | {_pct(m[a + '_accuracy'])} of {m['n_' + a]} | {_pct(m['chance'][a])} | "
            f"{_pct(val[a])} | {_pct(rec[a])} | {_pct(real[a])} |"
            for a in ("shape", "colour")
        ],
        "",
        "Samples are decoded by the pack decoder, so its reconstructions of the real val images "
        "bound what the samples can show: an attribute the decoder loses cannot be followed. "
        "The colour head names an object's first colour, which striped and gradient fills mix "
        "with a second one: real images score low on it, and samples drawn in one flat "
        "colour can score above them.",
        "",
        f"FD in the built-in encoder's space, {m['n_samples']} samples vs the {p.n_val} real val "
        f"images: **{m['fd']:.3f}**.",
        "",
        "## Time per stage",
        "",
        "| stage | seconds | reused | what |",
        "|---|---|---|---|",
        *[
            f"| {s.name} | {s.seconds:.1f} | {'yes' if s.reused else 'no'} | {s.detail} |"
            for s in report.stages
        ],
        f"| **total** | **{report.seconds:.1f}** | | |",
        "",
        f"{os.cpu_count()} CPUs, torch {torch.__version__} on {p.solo_threads} thread(s), "
        f"{p.side_threads} for the captions' process beside the pack; load "
        f"average at the end {load:.2f}.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(p).items()}, indent=1),
        "```",
        "",
        f"Files: `prompts.png` (one row per prompt), `metrics.json`, samples in `{folder}`.",
        "",
    ])  # fmt: skip


@released_after()  # the folder's lock (claim_folder) and the stages' run locks
def run_t2i_demo(
    plan: T2IDemoPlan,
    progress: ProgressFactory = null_progress,
    log: Callable[[str], None] = print,
    fresh: bool = False,
) -> RunReport:
    """Run (or finish) the text-to-image demo in ``plan.out``; ``fresh`` deletes the demo's earlier
    results first (only what it writes, in a folder it made: :func:`claim_folder`)."""
    claim_demo_folder(plan, "demo --t2i", T2I_DEMO_FILES, fresh, log)
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.solo_threads)
    try:
        demo = _T2IDemo(plan, progress, log)
        demo.prepare()
        demo.stage("train t2i", demo.train)
        demo.stage("sample", demo.sample_stage)
        demo.stage("evaluate", demo.evaluate)
        demo.report.metrics["prompts"] = demo.prompts
        demo.grid()
        demo.write_report()
    finally:
        torch.set_num_threads(threads)
    return demo.report
