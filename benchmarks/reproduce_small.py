"""Small-scale reproduction of the claims of RePack then Refine and of REPA, on the built-in data.

    python benchmarks/reproduce_small.py --out /work/study-run   # the study (see the plan's sizes)
    python benchmarks/reproduce_small.py --smoke --out /tmp/rs    # every stage at a toy size

A study, not a test: every stage goes through the library functions the CLI calls (the shared
runner ``repackctl.pipeline.Pipeline``), every arm gets equal compute (same DiT, recipe, batch,
optimizer steps, sampler and noise), and every claim gets a verdict; one that does not hold at this
scale is reported as such.

1. **Representation** (RePack paper, FID vs latent): a DiT on RePack latents, on PCA latents of the
   same dimension d (the same decoder on a frozen PCA projection: the paper's baseline) and on raw
   pixels space-to-depth'ed onto the same 8×8 token grid (``repackctl.pack.pixels``: exact decoder).
2. **REPA** (Yu et al. 2025, "17.5× faster"): each of the three latents with and without the
   alignment loss. The DiT follows REPA's recipe (``dit.preset repa``: SiT, uniform t, plain
   velocity MSE, AdamW β2 0.999, clip 1, λ 0.5) at a small custom shape
   (``--depth/--width/--heads``; 8 blocks, aligned after block 3 ≈ 1/3 of the depth). Pixels
   are the positive control, where REPA should help most (REPA's gains were shown on SD-VAE
   latents, which carry no semantics; RePack latents are a projection of the alignment target).
   The RePack and PCA packs train with the ``small`` pack preset, whose perceptual term is the
   same feature distance as the refiner's (``pack.feature_weight``, below), with the conv
   decoder up to the full resolution (``pack.pixel_shuffle 1``): the decoder of the study's
   committed run, made before the preset's pixel-shuffle decoder (``repackctl.pack.decoder``).
3. **Refiner** (RePack then Refine, stage 3): L1 + perceptual + 0.5·hinge GAN. LPIPS has no weights
   offline, so the perceptual term is the weights-free ``refine.feature_weight`` (a multi-layer
   feature distance in the frozen built-in encoder, ``repackctl.pack.features``). Judged first on
   held-out reconstructions (FD, high-frequency error, PSNR), then on samples of the RePack + REPA
   DiT.
4. **Linear probe** (the paper's table: DINOv3 raw > PCA-32 > RePack-32): raw tokens vs PCA-d vs
   RePack-d (``repackctl.evaluate.pack.evaluate_probe``).

**Scores.** Every DiT arm runs with ``--seeds`` seeds (init, data order and sampling noise); FD and
class accuracy are reported as mean ± std over seeds, and a difference counts only when every
seed agrees and the mean paired gap exceeds two standard errors. FD and accuracy come from an
**independent judge** (``repackctl.metrics.judge``): a small CNN trained (deterministically, once,
cached in ``<out>/judge``) on the real training images; it shares no architecture or weights with
the encoder that RePack packs and REPA aligns to. Its penultimate features give the FD space
(reference: real ``val`` images); its predictions give the class accuracy of class-conditional
samples. Floors put FD in scale: real training images (the FD's small-sample bias at this N) and
each arm's decoder applied to encoded training images (what a perfect latent generator scores).

**Run time.** The DiT runs go through a pool of ``--jobs`` worker processes (one CPU thread each;
``--worker`` is a worker's own entry point: it takes the next unclaimed job); every stage and run is resumable, so a second run
with the same sizes reuses what is complete. Outputs in ``--out``: ``cache/``, ``runs/``,
``samples/``, ``judge/``, ``jobs/`` (one JSON per DiT run), ``logs/``, ``results.json``,
``reproduce_small.md`` (tables, verdicts, sizes, time per stage) and ``reproduce_small.png``.
The reference figures are in ``benchmarks/results/reproduce_small.{md,png}``: a full run took
57.4 min on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from repackctl.errors import ConfigError, RepackError, script_main
from repackctl.pipeline import STUDY_RESTART, Pipeline, keep_plan, one_per_class
from repackctl.progress import ProgressFactory, null_progress
from repackctl.run_lock import lock_pipeline
from repackctl.runtime import resolve_device

console = Console(stderr=True)

LATENTS = {"pixels": "pixels", "PCA": "pca", "RePack": "repack"}  # arm label → latent kind


def arm_name(latent: str, repa: bool) -> str:
    return f"{latent} + REPA" if repa else latent


ARMS = [arm_name(lat, repa) for lat in LATENTS for repa in (False, True)]


# ---------------------------------------------------------------------------- sizes


@dataclass
class Plan:
    """Every size of one study run (stored in results.json and the report)."""

    train_images: int = 2000
    val_images: int = 2000
    resolution: int = 64
    patch: int = 8  # the built-in encoder's patch: the token grid of every arm
    pack_steps: int = 500
    pack_gan_start: int = 400
    judge_steps: int = 400
    judge_width: int = 16
    # the DiT: REPA's recipe (preset repa: SiT) at a custom small shape
    dit_size: str = "s"
    dit_patch: int = 2
    dit_depth: int = 8
    dit_width: int = 64
    dit_heads: int = 4
    repa_depth: int = 3  # ≈ 1/3 of the depth (REPA: block 8 of 28)
    repa_weight: float = 0.5
    dit_steps: int = 1000
    checkpoints: list[int] = field(default_factory=lambda: [500, 1000])
    dit_batch: int = 64
    dit_lr: float = 5e-4
    seeds: int = 3
    samples: int = 2000
    sampler: str = "euler"
    sample_steps: int = 20
    sample_batch: int = 250
    refine_steps: int = 600
    refine_channels: int = 32
    refine_batch: int = 8
    refine_output: str = "residual"
    refine_feature_weight: float = 1.0  # the weights-free perceptual term (LPIPS weight: 1)
    probe_epochs: int = 100
    jobs: int = 2

    @classmethod
    def smoke(cls) -> Plan:
        """Every stage at a toy size (the test suite's run)."""
        return cls(
            train_images=48,
            val_images=40,
            resolution=32,
            pack_steps=4,
            pack_gan_start=2,
            judge_steps=5,
            judge_width=8,
            dit_depth=3,
            dit_width=32,
            dit_heads=2,
            repa_depth=1,
            dit_steps=4,
            checkpoints=[2, 4],
            dit_batch=8,
            seeds=2,
            samples=20,
            sample_steps=2,
            sample_batch=20,
            refine_steps=2,
            refine_channels=8,
            refine_batch=4,
            probe_epochs=3,
        )


def parse_checkpoints(text: str, steps: int) -> list[int]:
    """``"500,1000,2000"`` → sorted steps; the last one must be the training length."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(
            f"--checkpoints {text!r} is not a comma list of steps", "e.g. --checkpoints 500,1000"
        ) from None
    if not values or values[0] < 1 or values[-1] > steps:
        raise ConfigError(
            f"--checkpoints {text!r} must lie in 1..{steps} (the --steps)",
            f"e.g. --checkpoints {steps // 2},{steps}",
        )
    if values[-1] != steps:
        values.append(steps)
    return values


# ---------------------------------------------------------------------------- helpers


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """A titled stage whose wall time goes into ``timings``."""
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    console.print(f"[dim]{name}: {timings[name]:.1f} s")


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def pm(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


class Study(Pipeline):
    """The stages of one study run (the shared pipeline runner), its judge and its results."""

    def __init__(
        self, plan: Plan, out: Path, seed: int, device: str, progress: ProgressFactory
    ) -> None:
        super().__init__(
            out, runs=out / "runs", seed=seed, device=device, progress=progress, log=console.print
        )
        self.plan = plan
        self.timings: dict[str, float] = {}
        self.results: dict[str, Any] = {"plan": asdict(plan), "seed": seed}
        self.strips: dict[str, np.ndarray] = {}  # figure strips: name → one image per class
        self.pack_ids: dict[str, str] = {}

    # -- state shared with the worker processes ------------------------------------------------
    def save_state(self) -> None:
        state = {"plan": asdict(self.plan), "seed": self.seed, "device": self.device}
        state |= {"entries": self.entries, "features": self.features, "pack_ids": self.pack_ids}
        (self.out / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def from_state(cls, out: Path, progress: ProgressFactory) -> Study:
        state = json.loads((out / "state.json").read_text())
        study = cls(Plan(**state["plan"]), out, state["seed"], state["device"], progress)
        study.entries, study.features = state["entries"], state["features"]
        study.pack_ids = state["pack_ids"]
        return study

    def pack_flags(self, method: str) -> dict[str, Any]:
        p = self.plan
        return {
            "pack.method": method,
            "pack.run": f"pack-{method}-{p.pack_steps}",
            "pack.pixel_shuffle": 1,  # the decoder of the committed results (module docstring)
            "pack.num": p.train_images,
            "pack.resolution": p.resolution,
            "pack.entry": self.entries["train"],
            "pack.eval_entry": self.entries["val"],
            "pack.steps": p.pack_steps,
            "pack.gan_start": p.pack_gan_start,
            "pack.image_every": 0,
            "pack.ckpt_every": p.pack_steps,
            "pack.probe_epochs": p.probe_epochs,
        }

    # -- stage 1: data ---------------------------------------------------------------------------
    def extract_splits(self) -> None:
        p = self.plan
        for split, num in (("train", p.train_images), ("val", p.val_images)):
            self.extract(split, num, p.resolution)
        self.results["entries"] = dict(self.entries)

    # -- stage 2: representations ----------------------------------------------------------------
    def packs(self) -> None:
        from repackctl.pack.encode import run_pack_encode
        from repackctl.pack.pixels import write_pixel_latents
        from repackctl.pack.task import run_pack_train

        for method in ("repack", "pca"):
            s = self.settings(self.pack_flags(method))
            run_pack_train(s, self.progress)
            self.pack_ids[method] = run_pack_encode(s, self.progress).pack_id
        self.pack_ids["pixels"] = write_pixel_latents(
            self.entry("train"), self.plan.patch, self.progress
        ).latent_id
        self.results["latents"] = dict(self.pack_ids)

    def pack_run(self, method: str) -> str:
        return f"pack-{method}-{self.plan.pack_steps}"

    def sample_labels(self) -> np.ndarray:
        """The labels ``run_sample`` gives sample i (class-balanced, in class order)."""
        from repackctl.sample.plan import make_labels

        return make_labels(self.plan.samples, self.num_classes, "balanced", self.seed)

    # -- the judge -------------------------------------------------------------------------------
    def load_judge(self, train: bool = False) -> None:
        """The independent judge (trained once into ``out/judge``) and the val reference stats."""
        from repackctl.metrics.judge import JudgeRecipe, cached_judge, judge_stats

        p = self.plan
        recipe = JudgeRecipe(steps=p.judge_steps, width=p.judge_width, seed=self.seed)
        real, labels = self.images("train", p.train_images)
        val, val_labels = self.images("val", p.val_images)
        if not train and not (self.out / "judge" / "judge.json").is_file():
            raise ConfigError("the judge is not trained yet", "run the study without --worker")
        self.judge, self.judge_meta = cached_judge(
            self.out / "judge", real, labels, self.num_classes, recipe,
            val=(val, val_labels), progress=self.progress,
        )  # fmt: skip
        self.ref_stats = judge_stats(self.judge, val)

    def score(self, images: np.ndarray, labels: np.ndarray | None, what: str) -> dict[str, float]:
        """Judge FD against real val images and (given labels) class accuracy."""
        from repackctl.metrics.judge import judge_accuracy, judge_fd

        out = {"fd": judge_fd(self.judge, images, self.ref_stats)}
        if labels is not None:
            out["acc"] = judge_accuracy(self.judge, images, labels)
        acc = f", class accuracy {100 * out['acc']:.1f}%" if "acc" in out else ""
        console.print(f"  {what}: FD {out['fd']:.3f}{acc} (n = {len(images)})")
        return out

    def floors(self) -> None:
        """FD of real training images and of each pack decoder's reconstructions of them."""
        from repackctl.files import to_uint8

        p = self.plan
        real, labels = self.images("train", min(p.samples, p.train_images))
        floors = {"real images": self.score(real, labels, "floor: real train images")}
        for method, name in (("repack", "RePack"), ("pca", "PCA")):
            _, dec = self.reconstruct(self.pack_run(method), "train", len(real))
            rec = to_uint8(dec)  # (n, R, R, 3)
            floors[name] = self.score(rec, labels, f"floor: {name} reconstructions")
            self.strips[f"{name} recon"] = one_per_class(rec, labels, self.num_classes)
        floors["pixels"] = floors["real images"]  # depth-to-space is exact
        self.strips["real"] = one_per_class(real, labels, self.num_classes)
        val, val_labels = self.images("val", p.val_images)
        self.results["judge"] = dict(self.judge_meta) | {
            "val_accuracy_check": self.score(val, val_labels, "real val (reference)")["acc"]
        }
        self.results["floors"] = floors

    # -- stage 3: one DiT run (a worker's job) ---------------------------------------------------
    def dit_name(self, latent: str, repa: bool, seed: int) -> str:
        return f"dit-{LATENTS[latent]}{'-repa' if repa else ''}-{self.plan.dit_steps}-seed{seed}"

    def dit_flags(self, latent: str, repa: bool, seed: int) -> dict[str, Any]:
        p = self.plan
        return {
            "seed": seed,
            "dit.name": self.dit_name(latent, repa, seed),
            "dit.preset": "repa",
            "dit.entry": self.entries["train"],
            "dit.latents": self.pack_ids[LATENTS[latent]],
            "dit.arch": "sit",
            "dit.size": p.dit_size,
            "dit.patch": p.dit_patch,
            "dit.depth": p.dit_depth,
            "dit.width": p.dit_width,
            "dit.heads": p.dit_heads,
            "dit.repa_weight": p.repa_weight if repa else 0.0,
            # REPA's targets and projector: given only with REPA on (else they are refused)
            **(
                {
                    "dit.features": self.features,
                    "dit.repa_depth": p.repa_depth,
                    "dit.repa_hidden": 4 * p.dit_width,
                }
                if repa
                else {}
            ),
            "dit.steps": p.dit_steps,
            "dit.global_batch": p.dit_batch,
            "dit.lr": p.dit_lr,
            "dit.ema_warmup": True,
            "dit.latent_sampling": "mean",  # pixels and PCA latents have no posterior std
            "dit.ckpt_every": math.gcd(*p.checkpoints),
            "dit.keep_last": 0,
            "dit.image_every": 0,
            "dit.log_every": max(1, min(50, p.dit_steps // 4)),
        }

    def run_job(self, latent: str, repa: bool, seed: int) -> dict[str, Any]:
        """Train one DiT, sample every scored checkpoint and judge the samples."""
        from repackctl.dit.run import train_dit

        t0 = time.perf_counter()
        res = self.train_recorded(train_dit, self.dit_flags(latent, repa, seed))
        train_s = time.perf_counter() - t0
        run, labels, scores = str(res.run_dir), self.sample_labels(), {}
        for step in self.plan.checkpoints:
            images = self.sample_arm(latent, run, f"step-{step:07d}", seed)
            scores[str(step)] = self.score(
                images, labels, f"{arm_name(latent, repa)} s{seed} @{step}"
            )
        strip = one_per_class(images, labels, self.num_classes)
        np.save(self.out / "jobs" / f"{Path(run).name}-strip.npy", strip)
        return {
            "arm": arm_name(latent, repa),
            "seed": seed,
            "run": run,
            "params": res.num_params,
            "latent_shape": list(res.latent_shape),
            "train_s": train_s,
            "sample_s": time.perf_counter() - t0 - train_s,
            "steps_per_s": res.result.steps_per_s,
            "scores": scores,
        }

    def sample_arm(self, latent: str, run: str, ckpt: str, seed: int, **flags: Any) -> np.ndarray:
        """``repackctl sample`` of one checkpoint with noise seed ``seed`` → uint8 images."""
        from repackctl.metrics.adm import read_samples_npz
        from repackctl.sample.run import run_sample

        if LATENTS[latent] == "pixels":
            return self.sample_pixels(run, ckpt, seed)
        keys = self.sample_flags(ckpt) | {"run": run} | flags
        s = self.settings({f"sample.{k}": v for k, v in keys.items()}, seed=seed)
        res = run_sample(s, self.progress)
        return read_samples_npz(res.out_dir / "samples.npz")[0]

    def sample_flags(self, ckpt: str) -> dict[str, Any]:
        p = self.plan
        return {
            "checkpoint": ckpt,
            "num": p.samples,
            "batch_size": p.sample_batch,
            "sampler": p.sampler,
            "steps": p.sample_steps,
            "cfg": 1.0,
            "labels": "balanced",
            "grid": 20,
        }

    @torch.no_grad()
    def sample_pixels(self, run: str, ckpt: str, seed: int) -> np.ndarray:
        """The same sampler, labels and per-index noise as ``run_sample``, decoded depth-to-space."""
        from repackctl.dit.load import load_dit_for_sampling
        from repackctl.metrics.recon import save_grid
        from repackctl.pack.pixels import decode_pixels
        from repackctl.runtime import resolve_device
        from repackctl.sample.generate import generate_raw_latents, guided_velocity, model_velocity
        from repackctl.sample.plan import make_labels, resolve_plan

        flags = {f"sample.{k}": v for k, v in self.sample_flags(ckpt).items()}
        s = self.settings(flags | {"sample.run": run, "seed": seed})
        dev = resolve_device(s.device)
        dit = load_dit_for_sampling(s.runs, run, ckpt, s.sample.weights)
        plan = resolve_plan(s.sample, {})
        classes = int(dit.extra["num_classes"])
        velocity = guided_velocity(
            model_velocity(dit.model.to(dev), dit.extra), plan, classes, None
        )
        labels = make_labels(s.sample.num, classes, s.sample.labels, s.seed)
        out = []
        with self.progress(f"sample {Path(run).name} (pixels)", total=len(labels)) as bar:
            for lo in range(0, len(labels), s.sample.batch_size):
                idx = list(range(lo, min(lo + s.sample.batch_size, len(labels))))
                raw = generate_raw_latents(velocity, plan, dit.extra, labels, s.seed, idx, dev)
                out.append(decode_pixels(raw, self.plan.patch))  # (b, R, R, 3)
                bar.advance(len(idx))
        images = np.concatenate(out)
        folder = self.out / "samples" / f"{Path(run).name}--{ckpt}--pixels"
        save_grid(
            [images[i : i + 10] for i in range(0, min(len(images), 40), 10)], folder / "grid.png"
        )
        return images

    # -- stage 4: refiner ------------------------------------------------------------------------
    def refine_name(self) -> str:
        p = self.plan
        return f"refine-{self.pack_run('repack')}-{p.refine_channels}-{p.refine_steps}"

    def refine_job(self) -> dict[str, Any]:
        """Train the refiner (a worker's job): the official losses, weights-free perceptual term."""
        p = self.plan
        t0 = time.perf_counter()
        self.refine_train(
            self.refine_name(),
            self.pack_run("repack"),
            p.refine_steps,
            base_channels=p.refine_channels,
            disc_channels=max(8, p.refine_channels),
            batch_size=p.refine_batch,
            output=p.refine_output,
            perceptual_weight=0.0,  # LPIPS: no weights offline
            feature_weight=p.refine_feature_weight,
            ckpt_every=p.refine_steps,
        )
        return {"run": self.refine_name(), "train_s": time.perf_counter() - t0}

    def refiner_eval(self, jobs: dict[str, dict[str, Any]]) -> None:
        """Held-out reconstructions decoded vs refined, then samples without / with the refiner."""
        from repackctl.files import to_uint8
        from repackctl.metrics.detail import hf_error
        from repackctl.metrics.recon import psnr, ssim_per_image
        from repackctl.refine.load import load_refiner

        p = self.plan
        pack = self.pack_handle(self.pack_run("repack"))
        ref = load_refiner(str(self.runs), self.refine_name(), pack.pack_id)
        val, val_labels = self.images("val", p.val_images)
        z, dec = self.reconstruct(self.pack_run("repack"), "val", len(val))
        dec = to_uint8(dec)  # (n, R, R, 3)
        refined = np.concatenate([ref.refine(dec[i : i + 100], z[i : i + 100])
                                  for i in range(0, len(dec), 100)])  # fmt: skip
        recon = {}
        for key, imgs in (("decoded", dec), ("refined", refined)):
            recon[key] = (
                self.score(imgs, val_labels, f"val reconstructions {key}")
                | {
                    "psnr": psnr(val, imgs).mean,
                    "ssim": float(ssim_per_image(val, imgs).mean()),
                }
                | hf_error(imgs, val).to_dict()
            )
        self.strips["RePack val recon"] = one_per_class(dec, val_labels, self.num_classes)
        self.strips["RePack val recon + refiner"] = one_per_class(refined, val_labels, self.num_classes)  # fmt: skip
        # samples of the RePack + REPA DiT (first seed, final checkpoint), the same latents refined
        job = jobs[job_name("RePack", True, self.seed)]
        ckpt = f"step-{p.checkpoints[-1]:07d}"
        images = self.sample_arm("RePack", job["run"], ckpt, self.seed, refiner=self.refine_name())
        labels = self.sample_labels()
        self.strips["RePack + REPA + refiner"] = one_per_class(images, labels, self.num_classes)
        self.results["refiner"] = {
            "run": self.refine_name(),
            "train_s": jobs["refine"]["train_s"],
            "recon_val": recon,
            "samples": {
                "decoded": job["scores"][str(p.checkpoints[-1])],
                "refined": self.score(images, labels, "RePack + REPA + refiner"),
            },
        }

    # -- stage 5: probe --------------------------------------------------------------------------
    def probe(self) -> None:
        from repackctl.evaluate.pack import evaluate_probe

        report = evaluate_probe(self.settings(self.pack_flags("repack")), self.progress)
        self.results["probe"] = {
            "rows": [r.to_dict() for r in report.rows],
            "n_train": report.n_train,
            "n_eval": report.n_eval,
            "num_classes": report.num_classes,
            "pca_explained": report.pca_explained,
            "table": report.table(),
        }


# ---------------------------------------------------------------------------- the job pool


def job_name(latent: str, repa: bool, seed: int) -> str:
    return f"{LATENTS[latent]}{'-repa' if repa else ''}-seed{seed}"


def job_list(study: Study) -> list[str]:
    """The refiner first (the longest job), then every DiT arm × seed."""
    seeds = [study.seed + k for k in range(study.plan.seeds)]
    dits = [job_name(lat, repa, s) for s in seeds for lat in LATENTS for repa in (False, True)]
    return ["refine", *dits]


def parse_job(name: str) -> tuple[str, bool, int]:
    kind, _, seed = name.rpartition("-seed")
    repa = kind.endswith("-repa")
    kind = kind.removesuffix("-repa")
    latent = {v: k for k, v in LATENTS.items()}.get(kind)
    if latent is None or not seed.isdigit():
        raise ConfigError(f"unknown job {name!r}", "e.g. repack-repa-seed0 or refine")
    return latent, repa, int(seed)


def run_one_job(study: Study, name: str) -> None:
    """One job of the pool, its result as ``jobs/<name>.json`` (written atomically)."""
    t0 = time.perf_counter()
    if name == "refine":
        result = study.refine_job()
    else:
        result = study.run_job(*parse_job(name))
    result["wall_s"] = time.perf_counter() - t0
    path = study.out / "jobs" / f"{name}.json"
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)


def claim(out: Path, name: str) -> bool:
    """Take job ``name`` for this worker (an exclusive ``jobs/<name>.claim`` file)."""
    try:
        os.close(os.open(out / "jobs" / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def worker(out: Path, progress: ProgressFactory) -> None:
    """A worker process of the pool: takes the next unclaimed job until none is left."""
    study = Study.from_state(out, progress)
    study.load_judge()
    for name in job_list(study):
        if not (out / "jobs" / f"{name}.json").is_file() and claim(out, name):
            console.print(f"job {name}")
            run_one_job(study, name)


def run_pool(study: Study, jobs: int) -> dict[str, dict[str, Any]]:
    """Run every job not yet done in ``jobs`` worker processes (one CPU thread each)."""
    out = study.out
    (out / "jobs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for name in job_list(study):  # claims of jobs a killed run left unfinished (ours to remove)
        if not (out / "jobs" / f"{name}.json").is_file():
            (out / "jobs" / f"{name}.claim").unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = []
    for k in range(jobs):
        cmd = [sys.executable, __file__, "--out", str(out), "--worker", "--quiet"]
        log = open(out / "logs" / f"worker{k}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    while any(p.poll() is None for p in procs):
        time.sleep(0.2)
        failed = [k for k, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            log = out / "logs" / f"worker{failed[0]}.log"
            raise RepackError(
                f"a worker of the study failed:\n{log.read_text()[-2000:]}",
                f"see {log}; rerun the same command to resume",
            )
    missing = [n for n in job_list(study) if not (out / "jobs" / f"{n}.json").is_file()]
    if missing:
        raise RepackError(f"jobs without a result: {', '.join(missing)}", f"see {out / 'logs'}")
    return {n: json.loads((out / "jobs" / f"{n}.json").read_text()) for n in job_list(study)}


def collect(study: Study, jobs: dict[str, dict[str, Any]]) -> None:
    """Per-arm lists over seeds: FD and accuracy at each checkpoint, times; figure strips."""
    fd: dict[str, dict[str, list[float]]] = {}
    acc: dict[str, dict[str, list[float]]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, job in jobs.items():
        if name == "refine":
            continue
        arm = job["arm"]
        runs.setdefault(arm, []).append({k: job[k] for k in ("seed", "run", "params",
                                         "latent_shape", "train_s", "sample_s", "steps_per_s")})  # fmt: skip
        for step, sc in job["scores"].items():
            fd.setdefault(arm, {}).setdefault(step, []).append(sc["fd"])
            acc.setdefault(arm, {}).setdefault(step, []).append(sc["acc"])
        if job["seed"] == study.seed:
            strip = study.out / "jobs" / f"{Path(job['run']).name}-strip.npy"
            study.strips[arm] = np.load(strip)
    study.results |= {"fd": fd, "acc": acc, "dit": runs}


# ---------------------------------------------------------------------------- verdicts


def compare(a: list[float], b: list[float]) -> str:
    """``"lower"`` / ``"higher"`` when every seed agrees and the mean paired gap b − a exceeds two
    standard errors of the paired gaps; otherwise ``"tie"`` (a and b are per-seed, same seeds)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) < 2:  # no spread to judge a gap by: with one seed any gap "held"
        return "tie"
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    if (d > 0).all() and d.mean() > 2 * se:
        return "lower"
    if (d < 0).all() and -d.mean() > 2 * se:
        return "higher"
    return "tie"


def verdict_word(hits: int, total: int) -> str:
    if hits == total:
        return "holds"
    return "does not hold" if hits == 0 else "partly holds"


def representation_verdict(results: dict[str, Any]) -> tuple[str, str, str]:
    fd = results["fd"]
    steps = list(fd["RePack"])
    wins = [s for s in steps if all(compare(fd["RePack"][s], fd[o][s]) == "lower"
                                    for o in ("PCA", "pixels"))]  # fmt: skip
    last = steps[-1]
    v = "holds" if last in wins else ("partly holds" if wins else "does not hold")
    ev = f"RePack lower than both at {len(wins)}/{len(steps)} checkpoints; at {last} steps FD " + (
        ", ".join(f"{a} {pm(fd[a][last])}" for a in LATENTS)
    )
    return ("RePack latents beat PCA and pixels for generation at equal steps", v, ev)


def repa_verdicts(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    fd, acc = results["fd"], results["acc"]
    out = []
    for latent in LATENTS:
        plain, repa = fd[latent], fd[arm_name(latent, True)]
        steps = list(plain)
        cmp = {s: compare(repa[s], plain[s]) for s in steps}
        better = [s for s in steps if cmp[s] == "lower"]
        worse = [s for s in steps if cmp[s] == "higher"]
        v = verdict_word(len(better), len(steps))
        if worse and not better:
            v = "does not hold (REPA worse)"
        last = steps[-1]
        claim = f"REPA speeds up convergence — {latent}" + (
            " (positive control)" if latent == "pixels" else ""
        )
        ev = "; ".join(f"{s} steps FD {pm(repa[s])} vs {pm(plain[s])} ({cmp[s]})" for s in steps)
        ev += f"; class accuracy at {last}: {pm(acc[arm_name(latent, True)][last], 1, 100)} % vs "
        ev += f"{pm(acc[latent][last], 1, 100)} %"
        out.append((claim, v, ev))
    return out


def refiner_verdict(results: dict[str, Any]) -> tuple[str, str, str]:
    ref = results["refiner"]
    rec, smp = ref["recon_val"], ref["samples"]
    hf_down = rec["refined"]["hf_error"] < 0.8 * rec["decoded"]["hf_error"]
    fd_down = rec["refined"]["fd"] < 0.95 * rec["decoded"]["fd"]
    psnr_kept = rec["refined"]["psnr"] >= rec["decoded"]["psnr"] - 0.1
    smp_down = smp["refined"]["fd"] < 0.95 * smp["decoded"]["fd"]
    hits = int(hf_down) + int(fd_down and psnr_kept) + int(smp_down)
    hf = 100 * (1 - rec["refined"]["hf_error"] / rec["decoded"]["hf_error"])
    ev = (
        f"held-out: high-frequency error {abs(hf):.1f}% {'lower' if hf >= 0 else 'higher'} "
        f"(goal ≥ 20% lower), FD "
        f"{fmt(rec['decoded']['fd'])} → {fmt(rec['refined']['fd'])}, PSNR "
        f"{fmt(rec['decoded']['psnr'])} → {fmt(rec['refined']['psnr'])} dB; samples FD "
        f"{fmt(smp['decoded']['fd'])} → {fmt(smp['refined']['fd'])}"
    )
    return ("The refiner restores detail and improves fidelity", verdict_word(hits, 3), ev)


def probe_verdict(results: dict[str, Any]) -> tuple[str, str, str]:
    rows = results["probe"]["rows"]
    top = [r["top1"] for r in rows]  # raw, PCA-d, RePack-d
    pairs = int(top[0] > top[1]) + int(top[1] > top[2])
    return (
        "Linear probe: raw tokens > PCA-d > RePack-d (the paper's ordering)",
        verdict_word(pairs, 2),
        " > ".join(f"{r['name'].split(' (')[0]} {100 * r['top1']:.1f}%" for r in rows),
    )


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for each claim of the two papers."""
    return [
        representation_verdict(results),
        *repa_verdicts(results),
        refiner_verdict(results),
        probe_verdict(results),
    ]


# ---------------------------------------------------------------------------- report


def generation_table(results: dict[str, Any]) -> list[str]:
    p, fd, acc, floors = results["plan"], results["fd"], results["acc"], results["floors"]
    steps = list(fd["RePack"])
    head = " | ".join(f"FD @ {s}" for s in steps)
    lines = [
        f"| DiT on | {head} | class acc. % @ {steps[-1]} | decoder floor FD | train s / run |",
        "|---|" + "---:|" * (len(steps) + 3),
    ]
    for arm in ARMS:
        floor = floors[arm.split(" + ")[0]]
        cells = [pm(fd[arm][s]) for s in steps]
        train_s = np.mean([r["train_s"] for r in results["dit"][arm]])
        lines.append(
            f"| {arm} | " + " | ".join(cells) + f" | {pm(acc[arm][steps[-1]], 1, 100)} | "
            f"{fmt(floor['fd'])} | {train_s:.0f} |"
        )
    real = floors["real images"]
    lines.append(
        "| (real train images) | " + " | " * len(steps) + f"{100 * real['acc']:.1f} | "
        f"{fmt(real['fd'])} | |"
    )
    lines += [
        "",
        f"Mean ± std over {p['seeds']} seeds; {p['samples']} samples each (Euler "
        f"{p['sample_steps']} steps, no guidance, class-balanced labels) against "
        f"{p['val_images']} real val images. Judge: val accuracy "
        f"{100 * results['judge']['val_accuracy']:.1f}% on real images.",
    ]
    return lines


def refiner_table(results: dict[str, Any]) -> list[str]:
    ref = results["refiner"]
    lines = [
        "| | held-out FD | held-out class acc. % | held-out PSNR dB | SSIM | high-freq. error "
        "×1e3 | sample FD | sample class acc. % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ("decoded", "refined"):
        r, smp = ref["recon_val"][k], ref["samples"][k]
        lines.append(
            f"| {k} | {fmt(r['fd'])} | {100 * r['acc']:.1f} | {fmt(r['psnr'])} | "
            f"{fmt(r['ssim'], 3)} | {fmt(1e3 * r['hf_error'])} ({fmt(1e3 * r['hf_energy'])}; "
            f"{fmt(1e3 * r['hf_energy_reference'])}) | {fmt(smp['fd'])} | "
            f"{100 * smp['acc']:.1f} |"
        )
    return lines


def markdown(results: dict[str, Any], png_name: str) -> str:
    """The report as markdown."""
    p = results["plan"]
    lines = [
        "# Small-scale reproduction of RePack then Refine and REPA",
        "",
        f"`{results['command']}` — {results['finished']}, wall time "
        f"**{results['wall_s'] / 60:.1f} min** on {results['machine']}.",
        "",
        f"![figures]({png_name})",
        "",
        "## Verdicts",
        "",
        "| claim | verdict | evidence |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in results["verdicts"]]
    lines += ["", "## 1–2. Generation: judge FD and class accuracy after equal steps", ""]
    lines += generation_table(results)
    lines += ["", "## 3. Refiner (RePack pack, held-out val; samples of RePack + REPA)", ""]
    lines += refiner_table(results)
    pr = results["probe"]
    lines += [
        "",
        f"## 4. Linear probe (train {pr['n_train']}, val {pr['n_eval']}, "
        f"{pr['num_classes']} classes; PCA-d explains {100 * pr['pca_explained']:.1f}% of the "
        "token variance)",
        "",
        pr["table"],
        "",
        "## Sizes",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in p.items()]
    lines += ["", "## Time per stage and job", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["timings"].items()]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], strips: dict[str, np.ndarray], path: Path) -> None:
    """FD and accuracy vs steps, refiner and probe bars, one sample per class of each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd, acc = results["fd"], results["acc"]
    steps = list(fd["RePack"])
    fig = plt.figure(figsize=(16, 12))
    grid = fig.add_gridspec(2, 4, height_ratios=[1, 1.6])
    colors = {"pixels": "C2", "PCA": "C1", "RePack": "C0"}
    for col, (data, label, scale) in enumerate(((fd, "judge FD", 1), (acc, "class acc. %", 100))):
        ax = fig.add_subplot(grid[0, col])
        for arm in ARMS:
            lat = arm.split(" + ")[0]
            ms = [mean_std([scale * v for v in data[arm][s]]) for s in steps]
            ax.errorbar([int(s) for s in steps], [m for m, _ in ms], [e for _, e in ms],
                        fmt="o-" if arm == lat else "s--", c=colors[lat], label=arm, capsize=3)  # fmt: skip
        if col == 0:
            for key, c in (("RePack", "C0"), ("PCA", "C1"), ("real images", "k")):
                ax.axhline(results["floors"][key]["fd"], ls=":", c=c, lw=1)
            ax.set_yscale("log")
        ax.set(xlabel="DiT steps", ylabel=label, title=f"{label} vs steps (mean ± std)")
        ax.legend(fontsize=7)
    ref = results["refiner"]
    ax = fig.add_subplot(grid[0, 2])
    rec = ref["recon_val"]
    vals = [rec["decoded"]["hf_error"], rec["refined"]["hf_error"]]
    ax.bar([0, 1], [v / vals[0] for v in vals], color=["C0", "C4"])
    fds = [rec["decoded"]["fd"], rec["refined"]["fd"], ref["samples"]["decoded"]["fd"],
           ref["samples"]["refined"]["fd"]]  # fmt: skip
    ax.bar([2.5, 3.5], [fds[1] / fds[0], fds[3] / fds[2]], color="C4")
    ax.axhline(1.0, c="k", lw=1)
    ax.set_xticks([0, 1, 2.5, 3.5], ["HF err\ndecoded", "HF err\nrefined", "FD recon\nratio",
                                     "FD samples\nratio"])  # fmt: skip
    ax.set(title="Refiner (refined / decoded)", ylabel="ratio")
    ax = fig.add_subplot(grid[0, 3])
    rows = results["probe"]["rows"]
    ax.bar(range(len(rows)), [100 * r["top1"] for r in rows], color=["C7", "C1", "C0"])
    ax.set_xticks(range(len(rows)), [f"{r['name'].split(' (')[0]}\n{r['dims']}-d" for r in rows])
    ax.set(ylabel="top-1 %", title="Linear probe (val)")
    order = ["real", "RePack recon", "PCA recon", *ARMS, "RePack val recon",
             "RePack val recon + refiner", "RePack + REPA + refiner"]  # fmt: skip
    order = [k for k in order if k in strips]
    ax = fig.add_subplot(grid[1, :])
    rows_img = []
    for k in order:
        pad = np.full((strips[k].shape[1], 2, 3), 255, np.uint8)
        rows_img.append(np.concatenate([np.concatenate([im, pad], 1) for im in strips[k]], 1))
    width = max(r.shape[1] for r in rows_img)
    rows_img = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                for r in rows_img]  # fmt: skip
    ax.imshow(np.concatenate(rows_img, 0))
    h = rows_img[0].shape[0]
    ax.set_yticks([h * (i + 0.5) for i in range(len(order))], order)
    ax.set_xticks([])
    ax.set_title(f"one sample per class (first seed, final checkpoint, step {steps[-1]})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def notes(plan: Plan) -> list[str]:
    return [
        f"FD and class accuracy come from an independent judge: a CNN (4 conv stages, width "
        f"{plan.judge_width}, GroupNorm) trained {plan.judge_steps} steps on the real training "
        "images, deterministic, cached in `judge/`. It shares nothing with the built-in ViT that "
        "RePack packs and REPA aligns to, but it was trained on the same data, so its features "
        "weigh what separates the built-in classes (shape, colour) more than fine texture.",
        "A gap counts only when every seed agrees and the mean paired gap exceeds two standard "
        f"errors ({plan.seeds} seeds; the same seed gives the same init, data order and noise in "
        f"both arms of a pair). With {plan.seeds} seeds this is a loose test: a 'tie' means not "
        "shown at this scale, not shown equal.",
        f"DiT: REPA's recipe (`--preset repa`: SiT, uniform t, velocity MSE, AdamW β = (0.9, "
        f"0.999), clip 1, label dropout 0.1) at a custom shape: SiT-S/"
        f"{plan.dit_patch} with {plan.dit_depth} blocks, width {plan.dit_width}, "
        f"{plan.dit_heads} heads; REPA λ {plan.repa_weight} after block {plan.repa_depth} of "
        f"{plan.dit_depth}, projector width {4 * plan.dit_width} (REPA: 2048 at width 1152). "
        f"Deviations for the budget: lr {plan.dit_lr} (REPA 1e-4), batch {plan.dit_batch} (256), "
        f"{plan.dit_steps} steps, EMA 0.9999 with warm-up (without it the EMA would still be "
        "the initial weights), posterior means instead of samples for every arm (pixel and PCA "
        "latents are deterministic; RePack's posterior std is tiny at KL weight 1e-6).",
        "REPA's target is the built-in encoder's final tokens. The RePack and PCA latents are "
        "projections of these very tokens, so the alignment has less to add there than on pixels; "
        "REPA's published gains are on SD-VAE latents, which pixels stand in for here.",
        f"The pack decoders are the small preset trained {plan.pack_steps} steps; their floors "
        "bound what a DiT on their latents can reach, while the pixel arm's decoder is exact.",
        f"Refiner: L1 + weights-free perceptual term (`refine.feature_weight "
        f"{plan.refine_feature_weight}`, in place of LPIPS weight 1, which has no weights "
        "offline: unit-normalised activations of the stem and of every block of the frozen "
        "built-in encoder, without LPIPS's learned channel weights) + 0.5 hinge PatchGAN from "
        "step 0, Adam (0.5, 0.9), EMA; "
        f"{plan.refine_channels} base channels (official 128: the largest that fits the budget "
        f"on a CPU), {plan.refine_steps} steps, batch {plan.refine_batch}, `{plan.refine_output}` "
        "head (the official tanh image head had not learned to copy its input at the earlier "
        "300-step budget). High-frequency error (`repackctl.metrics.detail`): mean absolute "
        "difference of the 3×3 Laplacians of the image and the real image, in [0, 1] units.",
    ]


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/reproduce-small", help="output folder (reused)")
    ap.add_argument("--steps", type=int, default=None, help="DiT steps of every arm")
    ap.add_argument(
        "--checkpoints", default=None, help="comma list of steps to score (last = --steps)"
    )
    ap.add_argument("--samples", type=int, default=None, help="samples per FD (also the floors)")
    ap.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per DiT arm (≥ 2: a verdict needs the spread of the paired gaps)",
    )
    ap.add_argument("--jobs", type=int, default=None, help="parallel worker processes")
    ap.add_argument("--seed", type=int, default=0, help="first seed (data subset, judge, noise)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--smoke", action="store_true", help="every stage at a toy size (tests)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per process (1: on a shared 2-core machine two threads per "
        "process oversubscribe the cores)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a pool process
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def resolve_plan_args(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke() if args.smoke else Plan()
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps {args.steps} must be ≥ 1", "e.g. --steps 2000")
        plan = replace(plan, dit_steps=args.steps)
        if args.checkpoints is None:
            args.checkpoints = f"{max(1, args.steps // 2)},{args.steps}"
    if args.checkpoints is not None:
        plan = replace(plan, checkpoints=parse_checkpoints(args.checkpoints, plan.dit_steps))
    if args.samples is not None:
        if args.samples < 10:
            raise ConfigError(f"--samples {args.samples} is too few", "use ≥ 10 (≥ 2000 for FD)")
        plan = replace(
            plan, samples=args.samples, sample_batch=min(plan.sample_batch, args.samples)
        )
    # a verdict needs the spread of the paired gaps: at least two seeds
    for key, least in (("seeds", 2), ("jobs", 1)):
        value = getattr(args, key)
        if value is not None:
            if value < least:
                raise ConfigError(f"--{key} {value} must be ≥ {least}", f"e.g. --{key} 2")
            plan = replace(plan, **{key: value})
    return plan


#: What a finished or started study holds in its folder (one without plan.json predates it).
STUDY_FILES = ("state.json", "results.json", "judge", "runs")


def plan_record(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    """What decides the study's figures (its ``plan.json``): every size, the first seed and the
    device; not the number of seeds (more seeds may be added to a folder) nor of processes."""
    sizes = {k: v for k, v in asdict(plan).items() if k not in ("seeds", "jobs")}
    return {**sizes, "seed": args.seed, "device": args.device}


def prepare(study: Study) -> None:
    """Data, latents, judge and floors (the main process, before the pool)."""
    with stage("extract (train + val)", study.timings):
        study.extract_splits()
    with stage("pack train + encode (RePack, PCA) + pixel latents", study.timings):
        study.packs()
    study.save_state()
    with stage("judge (train once) + floors", study.timings):
        study.load_judge(train=True)
        study.floors()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from repackctl.cli.common import rich_progress

    plan = resolve_plan_args(args)
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be ≥ 1", "e.g. --threads 1")
    resolve_device(args.device)  # an unknown or absent device: refused before the folder is made
    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock_pipeline(out, "benchmarks/reproduce_small.py")  # a second study here: refused at once
    keep_plan(out, "python benchmarks/reproduce_small.py", plan_record(plan, args), STUDY_FILES,
              STUDY_RESTART)  # fmt: skip
    progress = null_progress if args.quiet else rich_progress
    study = Study(plan, out, args.seed, args.device, progress)
    load_start, t0 = load_average(), time.perf_counter()
    prepare(study)
    with stage(f"DiT runs ({len(ARMS)} arms × {plan.seeds} seeds) + refiner, "
               f"{plan.jobs} processes", study.timings):  # fmt: skip
        jobs = run_pool(study, plan.jobs)
        collect(study, jobs)
    for name, job in jobs.items():
        study.timings[f"  job {name} (in a worker)"] = job["wall_s"]
    with stage("refiner: held-out recon + samples", study.timings):
        study.refiner_eval(jobs)
    with stage("linear probe", study.timings):
        study.probe()
    results = study.results
    results["wall_s"] = time.perf_counter() - t0
    results["timings"] = study.timings
    results["command"] = "python benchmarks/reproduce_small.py " + " ".join(sys.argv[1:])
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other work, torch "
        f"{torch.__version__} ({args.threads} thread per process, {plan.jobs} processes), device "
        f"{args.device}, load average (1 / 5 / 15 min) {load_start} at start / {load_average()} "
        "at end"
    )
    results["verdicts"] = verdicts(results)
    results["notes"] = notes(plan)
    png = out / "reproduce_small.png"
    figure(results, study.strips, png)
    (out / "reproduce_small.md").write_text(markdown(results, png.name))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    for claim, v, ev in results["verdicts"]:
        console.print(f"[bold]{claim}[/bold]: {v} — {ev}")
    console.print(f"wall time {results['wall_s'] / 60:.1f} min; report in {out}")
    return results


@script_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        torch.set_num_threads(max(1, args.threads))
        out = Path(args.out).expanduser().resolve()
        worker(out, null_progress if args.quiet else _progress())
    else:
        run(args)
    return 0


def _progress() -> ProgressFactory:
    from repackctl.cli.common import rich_progress

    return rich_progress


if __name__ == "__main__":
    sys.exit(main())
