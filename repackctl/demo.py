"""`repackctl demo`: the built-in dataset through every stage, with pictures and numbers.

extract (train + val) → pack train → pack encode → train dit (with REPA) → refine train →
sample (with and without the refiner) → evaluate (FD in the built-in encoder's space, recon
PSNR/SSIM with and without the refiner, linear probe, class accuracy of the samples); with
``pca_arm`` then the paper's PCA baseline with the same recipe (``repackctl.demo_arm``).

Everything goes under one folder (default ``runs/demo``): its own cache, the stage runs, the
samples, and ``report.md``, ``samples.png``, ``recon.png``, ``curves.png``. Every stage is
resumable, so a second run reuses what is complete and says so; ``fresh=True`` starts over.

Threads: the stages that run alone (extract, pack, sample, evaluate) use two torch threads
(``solo_threads``: ``OMP_NUM_THREADS`` when set, else at most the CPU count); the DiT and the
refiner, which train side by side in two processes, get one each. Two threads took pack
training from 245 s to 184 s on an idle 2-core machine (demo 10 min 23 s → 8 min 40 s), but
threads that contend with another job run many times slower (a two-thread demo beside a second
job: 309 s instead of about 25 s for ``--quick``), so on a busy machine set
``OMP_NUM_THREADS=1`` (the test suite does).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from repackctl.demo_arm import ARM_FILES, PCAArm
from repackctl.errors import (
    CheckpointError,
    ConfigError,
    ResumeConflict,
    TrainingError,
    name_items,
)
from repackctl.files import TMP_PREFIX, write_text_atomic
from repackctl.pipeline import (
    PLAN_FILE,
    Pipeline,
    RunReport,
    claim_demo_folder,
    demo_command,
    folder_made_by,
    read_plan,
    scored_samples,
    solo_threads,
)
from repackctl.progress import ProgressFactory, null_progress
from repackctl.run_lock import released_after

#: What the demo writes in its folder (all that ``--fresh`` removes): its cache, the stage runs
#: (the runs folder is the demo folder), the samples and the report files.
DEMO_FILES = (
    "cache",
    "pack",
    "dit",
    "refine",
    "samples",
    "refine.log",
    PLAN_FILE,
    "report.md",
    "metrics.json",
    "samples.png",
    "recon.png",
    "curves.png",
    *ARM_FILES,
)


@dataclass
class DemoPlan:
    """Sizes of every stage, chosen for `make demo`'s budget of 10 minutes on 2 CPU cores
    (issue #13): the step counts below took 6 min 45 s to 7 min 39 s on the 2-core Intel Xeon
    of the last reports (speed index 172 to 166), so a machine a quarter slower (as the AMD
    EPYC of the earlier reports was when its host was loaded) stays under 10 min. The report
    (``benchmarks/results/demo/report.md``) gives the machine's speed index beside the times.
    The sizes of the earlier reports (pack 1100 steps, DiT 4000, refiner 750) reached recon
    19.3 dB and 71.5 % sample accuracy but took 17.6 min there."""

    COMMAND: ClassVar[str] = "repackctl demo"  # how hints name it (``pipeline.demo_command``)
    DEFAULT_OUT: ClassVar[str] = "runs/demo"

    out: Path
    n_train: int = 2000
    n_val: int = 500
    resolution: int = 64
    # The pack is training-bound. The small preset's pixel-shuffle decoder (pack.pixel_shuffle 4:
    # no conv levels at 32² and 64²) trains a step in half the time and reaches more per step:
    # held-out PSNR 18.9 dB at 600 steps (64 s on a 2-core Xeon), 20.7 at 1200 (122 s), where
    # the conv decoder up to 64² reached 16.7 at 600 (127 s). The half it saves went to the
    # DiT (2250 → 3150 steps): on that Xeon, whole demos (200 samples, one seed; before the
    # decoder's ICNR init, which then gave 18.9 dB, 70 %, FD 2.63, 3.8 × its floor) gave pack 600
    # + DiT 3150: 18.9 dB, 69.5 %, FD 1.97 (2.8 × its floor 0.70), colour 1.01 × real; pack
    # 1200 + DiT 2250: 20.7 dB, 64 %, FD 3.11 (7.4 × its floor 0.42), 1.00 ×; pack 600 + DiT
    # 2250: 18.9 dB, 63 %, FD 2.14 (3.1 ×); the conv decoder, 600 + 2250 (its report, on an
    # AMD EPYC): 16.7 dB, 66.5 %, FD 2.48 (2.8 ×), 1.22 ×. The longer pack's richer latent was
    # harder for the DiT.
    # With the conv decoder: 16.7 dB at 600 steps, 19.3 at 1200, 22.0 at 2400 (+2.6 dB per
    # doubling). At 600 steps these moved it by less than the spread of one run
    # (±0.4 dB): Adam betas (0.9, 0.99) 17.0, lr 1.5e-3 / 3e-3 16.3 / 15.6, focal-frequency
    # weight 0 / 2 15.8 / 16.4, a start at posterior std 0.05 (log-variance bias −6) 16.7,
    # batch 8 for the same time 16.6, 16 latent channels 16.8; a decoder twice as wide at the
    # low-resolution levels lost (14.8 dB, 2× slower). With the 10-minute budget (class
    # docstring): pack 500 / DiT 2100 steps took 6 min 40 s (15.7 dB, 67 %) with the host
    # fast, 700 / 2400 took 9.6 min (70 %) with it slow (pack 2.5 against 3.0 steps/s).
    # 1500 pack steps with the DiT at patch 2 (below), where 600 went with patch 1: the patch-2
    # DiT trains its 3150 steps in 167–175 s beside the refiner instead of 249 s, and the pack
    # takes the time (150–159 s; the sum about the same). Whole demos on the Xeon (200 samples,
    # one seed): recon 21.50 dB (was 18.92), decoded val images 93.5 % (89.0), decoder floor
    # 0.37 (0.69), samples 70.0 % (70.0), FD 2.56 (2.63). The 600-step pack under the patch-2
    # DiT at 4500 steps: 70.0 %, FD 2.01; at width 64, 9000 steps: 62.5 %, FD 3.20. Without the
    # pack's feature distance (2.5 × faster steps) 1500 steps gave 21.38 dB but 84 % on decoded
    # val images, floor 1.40 and 62.5 % samples (patch-1 DiT): the term keeps the class in the
    # pixels.
    # At 1500 steps the pack's EMA 0.998 or lr 3e-3 gave 21.35 dB each (one thread: 21.50 is
    # the preset's 0.99 and 2e-3 on two).
    # 2400 pack steps and 3600 DiT steps: the own stages took 5 min 42 s of the 10 minutes on
    # the Xeon, so both got more. Whole demos there (200 samples, one seed): pack 2000 / DiT
    # 3150: 21.97 dB, 72.0 %, FD 2.44 (floor 0.34), 6 min 26 s; pack 2400 / DiT 3600: 22.19
    # dB, decoded val images 95.5 %, 70.0 %, FD 2.26 (floor 0.32), 7 min 8 s. Scratch runs
    # that lost, on the 1500-step pack: 4 latent channels (20.46 dB, 62 %); contrastive flow
    # matching (Stoica et al. 2025, λ 0.05, a negative of another class) 68.0 % against 69.5 %;
    # sampling time shift 2 / 3 69.0 / 68.8 % against 69.2 % (400 samples).
    pack_steps: int = 2400
    # demo-specific pack sizes on top of the `small` preset (None = the preset's value)
    pack_channels: int | None = None
    pack_latent_channels: int | None = None
    # the preset's GAN (from step 400) costs PSNR at this scale; None = the preset's schedule
    pack_gan_weight: float | None = 0.0
    # The DiT is update-bound at this size (class accuracy of 500 samples, one thread beside
    # another job): at the same cost, batch 32 × 3400 steps beat batch 64 × 1700 (65 vs 57 % at
    # lr 4e-3; batch 16 × 6800: 66 %, slower); a 100-step warm-up to lr 2e-3 / 4e-3 beat a
    # constant 1e-3 (55 / 57 vs 49 %); at batch 32, lr 6e-3 matched 4e-3 (68 vs 67 %) and a
    # cosine decay lost (60 %). In about 280 s: 2 blocks of width 64, 4400 steps, 70 % (71 %
    # without REPA); 3 blocks, 3000 steps, 75 %; width 96, 2600 steps, 75 %; 3 blocks of width
    # 96, 1900 steps, 74 %; width 128, 1800 steps, 68 %. Three blocks put REPA's alignment
    # (after block 1) at a third of the depth, as in REPA. Sampler, steps and guidance interval
    # moved nothing (49 ± 1 % on the first DiT).
    # Where the 3600-step DiT loses (pack 2400; 200 val images; scratch, /work/exp/s19): its
    # val latents noised to t0 and denoised by it (CFG 4 for t ≤ 0.8), then decoded, are
    # classified at 97.0 / 96.5 / 94.5 / 85.5 / 77.0 % from t0 0.1 / 0.2 / 0.3 / 0.5 / 0.7, and
    # from pure noise at 69.0 % (decoded val 95.5 %): it draws fine detail well and loses the
    # class where the shape forms, at t 0.3–1. A small CNN trained on the real latents
    # classifies its sample latents at 83.5 % against 88.0 % on val latents, where the pixels
    # lose far more (70.0 against 95.5 %). Muon (torch.optim.Muon's update, lr matched to AdamW's
    # RMS) on its 2-D weights lowered the training MSE at 3600 steps (0.659 against 0.677) but
    # not the samples' (72.5 %, FD 2.75 against 70.0 %, 2.26) at 28 % more time a step.
    # The samples are bound by the DiT's training compute (benchmarks/demo_seeds.py --dit-steps
    # on the report's pack, DiT seeds 0–2; benchmarks/results/demo/dit_steps.md): 3600 steps
    # 70.5 ± 4.1 %, FD 2.38 ± 0.29 (7.0 × the floor 0.34); 7200: 76.7 ± 3.0 %, 1.78 ± 0.22
    # (5.2 ×); 14400: 81.2 ± 3.3 %, 1.57 ± 0.20 (4.6 ×); 5400 (seeds 1 / 2): 68.5 / 73.5 %, FD
    # 1.85 / 2.17. The gains shrink per doubling (+6.2, +4.5 points): 90 % takes 16–64 × the
    # DiT's 186 s. Its step is compute: a profile of 600 steps gave 44 ms a step, 37 of them
    # forward and backward, 2.3 reading the batch, 1.8 AdamW and EMA. Nor is a bigger DiT a
    # shortcut (scratch loop of this recipe, seed 0): at about 4 × the compute, 6 blocks × 7200
    # steps 83.0 %, FD 1.31 against 3 blocks × 14400 80.0 %, 0.99; width 256 × 3600 steps
    # (2.5 × the time) 74.5 %, 1.62 against width 128 × 7200 73.5 %, 1.66.
    # Scratch runs that lost (/work/exp/s20, the report's pack, one seed, 200 samples): its
    # decoder fine-tuned 600 steps on latents with noise σ ~ |N(0, τ²)| × channel std (RAE's
    # noise-augmented decoding, Zheng et al. 2025) decoded the DiT's latents at 65.0 / 63.5 /
    # 65.0 % for τ 0 / 0.3 / 0.8, FD 1.96 / 2.24 / 2.23 (the demo's decoder 67.5 %, 1.90); REG's
    # global token (Wu et al. 2025: the mean-pooled encoder tokens noised and denoised with the
    # latent, loss weight β) 64.0 / 64.5 / 67.0 % for β 0.03 / 0.2 / 1, FD 2.22 / 2.27 / 1.74,
    # against 68.0 %, 2.21 without it, in the same loop.
    dit_steps: int = 3600
    dit_depth: int = 3
    # patch 2 (16 tokens of the 8 × 8 latent) at width 128: 17.5 against 58 ms a step at width
    # 64 for patch 1 (3 blocks, batch 32, one thread), so four times the parameters fit. On the
    # 1500-step pack, lr 3e-3 (half, for twice the width) gave 67.0 %, FD 3.01; time shift 3
    # 68.0 %, FD 3.00 (against 69.5 %, 2.58 plain with these values; one seed each); batch 64
    # × 2000 steps (207 s) 69.5 %, FD 2.23; 4 blocks × 2400 steps (185 s) 65.0 %, FD 2.76
    dit_patch: int = 2
    dit_width: int = 128
    dit_lr: float = 6e-3
    dit_warmup: int = 100
    dit_batch: int = 32
    # SD3's timestep shift in training (t ↦ s·t / (1 + (s − 1)·t), more time at high noise) for
    # this 8 × 8 × 8 latent: 200 samples at CFG 4 (pack 1100 steps, DiT 3400 steps), shift 1:
    # 73.5 %, FD 3.23; 1.5: 72 %, 2.65; 2: 79 %, 2.31; 3: 74.5 %, 2.90; 0.5: 54.5 %, 5.86. At
    # shift 2: without REPA 73 %, 2.87; REPA weight 1: 76.5 %, 2.73; posterior samples instead of
    # means 78 %, 2.91; 4200 steps 83 %, 2.13 (the pack's spare seconds went to 4000 steps).
    dit_time_shift: float = 2.0
    repa_weight: float = 0.5
    # REPA's projector (D → 4·D → 4·D → E for tiny widths) costs about as much as a 2-block DiT;
    # 2·D trained 13 % faster to the same accuracy (67 vs 65 %).
    repa_hidden: int = 128
    # width 32 ran at 7 s/step on a loaded 2-core machine (56 min for 500 steps): width 16 fits.
    # It trains beside the DiT on the second core, at 0.3 to 0.6 s a step (by the host's load,
    # after ~30 s of start-up): 450 steps use that core for the DiT's steps without making it
    # wait (145 s beside the DiT's 3600 steps in 179 s on the Xeon; 158 s beside its earlier
    # 240 s; with the conv decoder's 600-step pack, 500 steps gave +0.57 dB where 255 gave
    # +0.27; the high-frequency error did not move).
    # On the 2400-step pack, 450 steps at lr 1e-3 or 3e-3 (the preset's 1e-4 here) left the
    # loss where it started and the high-frequency error within 0.1 %; triplets decoded from
    # latents with noise σ 0.5 / 1.0 (refine.noise, raw units; channel std about 2) moved the
    # samples' accuracy by 0 / −1 point. The pack keeps no texture (recon.png), so the refiner
    # has none to restore.
    refine_steps: int = 450
    refine_channels: int = 16
    # the weights-free perceptual term (refine.feature_weight: built-in encoder feature distance)
    refine_feature_weight: float = 0.1
    # the default EMA (0.999) keeps 74 % of the initial (identity) refiner after 300 steps: the
    # refined images came out equal to the decoded ones
    refine_ema_decay: float = 0.99
    # The paper's 0.5 × hinge GAN needs LPIPS (no weights offline) and far more steps: at this
    # scale it lowered val PSNR (16.87 → 16.71 dB) where L1 alone kept it (→ 16.90 dB).
    refine_gan_weight: float = 0.0
    samples: int = 200
    sample_steps: int = 50
    cfg: float = 4.0
    # Guidance only for t ≤ 0.8, off at the highest noise (Kynkäänniemi et al. 2024, "Applying
    # Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion
    # Models"; the official LightningDiT recipe guides t ≤ 0.89). It trades about one point of
    # accuracy for a quarter of the FD. On the three DiTs of the seed spread, 600 plain samples
    # each (sampling seed 5; accuracy % / FD, floor 0.25 at n = 600): CFG 4 on all steps 75.3 /
    # 2.22, 74.2 / 2.62, 76.0 / 2.29; for t ≤ 0.8 74.7 / 1.79, 72.2 / 1.78, 74.7 / 1.80. With
    # 200 samples (sampling seed 0; mean of the three): all steps 75.3 / 2.74, t ≤ 0.9 76.0 /
    # 2.37, t ≤ 0.8 76.2 / 1.97, t ≤ 0.7 73.7 / 1.70, CFG 3 for t ≤ 0.8 75.0 / 1.63. On seed
    # 0, 200 samples, these lost accuracy or moved it by less than the spread: CFG 5 / 6
    # for t ≤ 0.8 73.0 / 2.20, 72.5 / 2.48; CFG 6 for t ≤ 0.7 70.5 / 1.85, for t ≥ 0.3 71.0 /
    # 3.58; the SDE sampler 76.5 / 2.66; Heun 25 steps 74.5 / 2.69; raw weights instead of the
    # EMA 68.0 / 4.63; autoguidance by the step-2000 EMA at scale 3 / 5 / 8 65.5 / 2.66,
    # 69.0 / 2.31, 58.5 / 2.94. A longer EMA (decay (n + 1) / (n + 1 + γ), γ 2 / 4, the EMA
    # warm-up is γ ≈ 9): 74.0 / 2.92, 72.5 / 2.68.
    # On the patch-2 DiT of the 1500-step pack (400 samples, sampling seed 0): CFG 2 / 3 / 4 /
    # 6 / 8 / 10 for t ≤ 0.8 gave 61.3 / 66.5 / 69.2 / 63.5 / 59.5 / 57.5 %, FD 1.95 / 1.91 /
    # 2.38 / 3.82 / 5.01 / 6.34; CFG 4 / 6 on all steps 67.0 / 59.5 %, FD 3.30 / 5.12.
    cfg_t_hi: float = 0.8
    eval_images: int = 200
    # the PCA arm (``repackctl.demo_arm``): the paper's baseline with the same recipe, after the
    # demo's own stages; about doubles the run time
    pca_arm: bool = False
    seed: int = 0
    solo_threads: int = field(default_factory=solo_threads)
    side_threads: int = 1  # the DiT here and the refiner in its process, at the same time

    @classmethod
    def quick(cls, out: Path) -> DemoPlan:
        """A reduced plan (tests): same stages and files, far fewer steps and images."""
        return cls(
            out=out,
            n_train=120,
            n_val=60,
            resolution=32,
            pack_steps=12,
            pack_channels=8,
            dit_steps=30,
            dit_width=64,
            dit_warmup=5,
            refine_steps=10,
            refine_channels=8,
            samples=20,
            sample_steps=4,
            eval_images=40,
        )

    def record(self) -> dict[str, Any]:
        """What decides the demo's results (``plan.json``): every size and the seed; not the
        folder, the threads, nor ``pca_arm`` (the arm may be added to a finished demo)."""
        skip = {"out", "solo_threads", "side_threads", "pca_arm"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @classmethod
    def of_demo(cls, out: Path) -> DemoPlan:
        """The plan the demo in ``out`` was started with (its ``plan.json``), all of it: a
        record naming other settings than this version's is refused, as ``repackctl demo``
        refuses it."""
        made_by = folder_made_by(out)
        if made_by not in (None, "demo"):  # its plan would read as another version's
            raise ConfigError(
                f"{out} is a `repackctl {made_by}` folder, not one of `repackctl demo`",
                "give the folder of a class-conditional demo (`repackctl demo --out DIR`)",
            )
        recorded = read_plan(out, f"run `repackctl demo --out {out}` first")
        expected = set(cls(out=out).record())
        other = [f"{k} (not in this version)" for k in sorted(set(recorded) - expected)]
        other += [f"{k} (not recorded)" for k in sorted(expected - set(recorded))]
        if other:
            raise ConfigError(
                f"{out / PLAN_FILE} records another version's plan: {name_items(other)}",
                "use the repackctl version that made the demo, or run "
                f"`repackctl demo --fresh --out {shlex.quote(str(out))}`",
            )
        return cls(out=out, **recorded)


@dataclass
class _RealSets:
    """Real images of the demo's splits, labels, and mean-pooled encoder features (N, C)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    train_x: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    val_x: np.ndarray


class _Demo(PCAArm, Pipeline):
    """The demo's stages: the shared pipeline runner with the demo's sizes, in ``plan.out``."""

    def __init__(
        self,
        plan: DemoPlan,
        progress: ProgressFactory,
        log: Callable[[str], None],
        runs: Path | None = None,
    ):
        samples = None if runs is None else runs / "samples"
        super().__init__(
            plan.out, runs=runs, samples=samples, seed=plan.seed, progress=progress, log=log
        )
        self.plan = plan
        self.report = RunReport(out=plan.out, stages=self.stages)
        self.load_start = _load()
        self.machine = _machine(plan)

    def stage(self, name: str, fn: Callable[[], Any], threads: int | None = None) -> Any:
        """A stage whose earlier run cannot be resumed (made by an older version with other
        presets or another recipe, or damaged) points to ``--fresh``: the demo has no flags to
        match it with."""
        try:
            return super().stage(name, fn, threads)
        except (CheckpointError, ResumeConflict) as e:
            raise CheckpointError(
                f"{self.out} holds a {name} run that this version cannot resume: {e.message}",
                f"run `{demo_command(self.plan, '--fresh')}` to start over (it removes only "
                "what the demo wrote)",
            ) from None

    # ---- stages ---------------------------------------------------------------------------------
    def extract_split(self, split: str, num: int) -> tuple[bool, str]:
        return self.extract(split, num, self.plan.resolution, shard=256, chunk=32)

    def pack_train_stage(self, run: str = "pack", method: str = "repack") -> tuple[bool, str]:
        """The pack run ``run``: the packing autoencoder, or (``method="pca"``, the PCA arm) the
        same decoder recipe on a frozen PCA projection."""
        p = self.plan
        every = max(p.pack_steps // 2, 1)
        extra = {"ch": p.pack_channels, "latent_channels": p.pack_latent_channels}
        extra["gan_weight"] = p.pack_gan_weight
        flags = {k: v for k, v in extra.items() if v is not None}
        if method != "repack":
            flags["method"] = method
        return self.pack_train(
            run, p.pack_steps, image_every=every, ckpt_every=every, preset="small", **flags
        )

    def pack_encode_stage(self, run: str = "pack") -> tuple[bool, str]:
        reused, detail, _ = self.pack_encode(run)
        return reused, detail

    def dit(self, run: str = "dit", pack_run: str = "pack") -> tuple[bool, str]:
        p = self.plan
        reused = self.finished(run, p.dit_steps)
        self.dit_train(
            run,
            p.dit_steps,
            pack_run=pack_run,
            size="tiny",
            depth=p.dit_depth,
            patch=p.dit_patch,
            width=p.dit_width,
            lr=p.dit_lr,
            schedule="warmup",
            warmup_steps=p.dit_warmup,
            global_batch=p.dit_batch,
            time_shift=p.dit_time_shift,
            repa_weight=p.repa_weight,
            repa_hidden=p.repa_hidden,
            ckpt_every=max(p.dit_steps // 2, 1),
            image_every=max(p.dit_steps // 2, 1),
        )
        return reused, (
            f"tiny LightningDiT, {p.dit_depth} blocks of width {p.dit_width}, patch "
            f"{p.dit_patch}, + REPA (λ {p.repa_weight}, projector "
            f"width {p.repa_hidden}), "
            f"{p.dit_steps} steps of batch {p.dit_batch}, lr {p.dit_lr:g}, time shift "
            f"{p.dit_time_shift:g}"
        )

    def refine_command(self) -> list[str]:
        """The arguments of `repackctl refine train` for the demo's pack run (run beside the DiT)."""
        p = self.plan
        return [
            "refine",
            "train",
            "--pack-run",
            "pack",
            "--name",
            "refine",
            "--steps",
            str(p.refine_steps),
            "--base-channels",
            str(p.refine_channels),
            # the discriminator's width only with the GAN on (with it off, refine train refuses
            # it as an option that would be ignored): the same training either way
            *(["--disc-channels", str(p.refine_channels)] if p.refine_gan_weight > 0 else []),
            "--ckpt-every",
            str(max(p.refine_steps // 2, 1)),
            "--output",
            "residual",
            "--gan-weight",
            str(p.refine_gan_weight),
            "--feature-weight",
            str(p.refine_feature_weight),
            "--ema-decay",
            str(p.refine_ema_decay),
            "--cache",
            str(self.out / "cache"),
            "--runs",
            str(self.out),
            "--seed",
            str(p.seed),
            "--device",
            "cpu",
        ]

    def start_refine(self) -> None:
        """Train the refiner in a second process while the DiT trains here: both need only the
        pack run."""
        self.refine_reused = self.finished("refine", self.plan.refine_steps)
        self.start_side("refine", self.refine_command(), self.plan.side_threads)

    def refine(self) -> tuple[bool, str]:
        seconds = self.wait_side("refine", TrainingError, f"`{demo_command(self.plan)}` to resume")
        took = f"{seconds:.0f} s"
        if self.refine_reused:  # a finished run is only checked: not the refiner's training time
            took = f"finished before, checked in {took}"
        return self.refine_reused, (
            f"Latent-Guided Refiner (residual, width {self.plan.refine_channels}, GAN weight "
            f"{self.plan.refine_gan_weight}, feature weight {self.plan.refine_feature_weight}), "
            f"{self.plan.refine_steps} steps, {took} in a parallel process"
        )

    def sample_flags(self) -> dict[str, Any]:
        """The sampling settings of the demo (the PCA arm samples with the same)."""
        p = self.plan
        return {
            "num": p.samples,
            "steps": p.sample_steps,
            "cfg": p.cfg,
            "cfg_t_hi": p.cfg_t_hi,
            "batch_size": 50,
        }

    def sample_stage(self) -> tuple[bool, str]:
        p = self.plan
        common = self.sample_flags()
        *_, plain_dir, plain_reused = self.sample("dit", **common)
        *_, refined_dir, refined_reused = self.sample("dit", refiner="refine", **common)
        self.sample_dirs = {"plain": plain_dir, "refined": refined_dir}
        reused = plain_reused and refined_reused
        return reused, (
            f"{p.samples} class-balanced samples, Euler {p.sample_steps}, CFG {p.cfg:g} "
            f"for t ≤ {p.cfg_t_hi:g}"
        )

    def evaluate(self) -> tuple[bool, str]:
        torch.manual_seed(self.plan.seed)
        m = self.report.metrics
        m.update(self._sample_scores())
        m.update(self._recon_scores())
        m["probe"] = self._probe()
        return False, (
            f"FD {m['fd_plain']:.2f} → {m['fd_refined']:.2f} with refiner; "
            f"sample class accuracy {100 * m['class_accuracy']:.0f} %"
        )

    # ---- evaluation -----------------------------------------------------------------------------
    def _encoder(self):
        """The built-in encoder, built once (FD and the class-accuracy judge both use it)."""
        if getattr(self, "_enc", None) is None:
            from repackctl.encoders.load import make_encoder

            p = self.plan
            self._enc = make_encoder("builtin", None, None, p.resolution, p.seed).eval()
        return self._enc

    def _pooled(self, images: np.ndarray) -> np.ndarray:
        enc = self._encoder()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 100):
                x = torch.from_numpy(images[i : i + 100]).permute(0, 3, 1, 2).float() / 127.5 - 1
                out.append(enc(x)[0].mean(1).numpy())  # (B, C) mean-pooled patch tokens
        return np.concatenate(out)

    @cached_property
    def _val_recon(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``eval_images`` val images through the pack, once for both evaluations:
        ``(latents, decoded in [-1, 1])``."""
        return self.reconstruct("pack", "val", self.plan.eval_images)

    @cached_property
    def _real(self) -> _RealSets:
        """The real train and val images of the plan with their pooled features (read once)."""
        p = self.plan
        val_images, val_labels = self.images("val", p.n_val)
        train_images, train_labels = self.images("train", p.n_train)
        return _RealSets(
            train_images,
            train_labels,
            self._pooled(train_images),
            val_images,
            val_labels,
            self._pooled(val_images),
        )

    def set_scores(self, folder: Path, kind: str) -> tuple[dict[str, float], np.ndarray]:
        """FD, colour distance and class accuracy of the samples in ``folder`` (keys
        ``fd_<kind>``, ``colour_<kind>``, ``class_accuracy_<kind>``) and their labels."""
        from repackctl.metrics.adm import read_samples_npz
        from repackctl.metrics.colour import class_colour_distance
        from repackctl.metrics.probe import linear_probe

        r = self._real
        images, labels = read_samples_npz(folder / "samples.npz")
        pooled = self._pooled(images)
        colour = class_colour_distance(images, labels, r.val_images, r.val_labels)
        probe = linear_probe(r.train_x, r.train_labels, pooled, labels, epochs=50)
        scores = {
            f"fd_{kind}": _fd(pooled, r.val_x),
            f"colour_{kind}": colour.mean,
            f"class_accuracy_{kind}": float(probe.top1),
        }
        return scores, labels

    def _refiner_change(self) -> dict[str, Any]:
        """How the refiner changed the samples: ``refiner_sample_change``, the mean
        |refined − plain| of their pixel values (0–255; 0 means the refined columns repeat the
        plain ones, a refiner whose weights barely moved, as in ``--quick``), and
        ``refiner_changed_pixels`` of ``refiner_pixels`` (a pixel: any of its channels)."""
        from repackctl.metrics.adm import read_samples_npz

        plain, _ = read_samples_npz(self.sample_dirs["plain"] / "samples.npz")
        refined, _ = read_samples_npz(self.sample_dirs["refined"] / "samples.npz")
        diff = np.abs(refined.astype(np.int16) - plain.astype(np.int16))  # (N, H, W, 3)
        return {
            "refiner_sample_change": float(diff.mean()),
            "refiner_changed_pixels": int(diff.any(axis=-1).sum()),
            "refiner_pixels": int(np.prod(diff.shape[:-1])),
        }

    def decoder_floor(self, pack_run: str, labels: np.ndarray) -> tuple[float, float]:
        """FD and colour distance of as many training images as ``labels`` has (with its class
        counts) through ``pack_run``'s autoencoder: the best a perfect DiT could reach."""
        from repackctl.files import to_uint8
        from repackctl.metrics.colour import class_colour_distance

        r = self._real
        pick = _matching(r.train_labels, labels)
        _, decoded = self.reconstruct(pack_run, "train", int(pick.max()) + 1)
        recon = to_uint8(decoded)[pick]
        colour = class_colour_distance(recon, r.train_labels[pick], r.val_images, r.val_labels)
        return _fd(self._pooled(recon), r.val_x), colour.mean

    def _sample_scores(self) -> dict[str, Any]:
        """FD, colour distance and class accuracy of the samples, next to their floors."""
        from repackctl.files import to_uint8
        from repackctl.metrics.colour import class_colour_distance
        from repackctl.metrics.probe import linear_probe

        r = self._real
        scores: dict[str, Any] = {}
        for kind, folder in self.sample_dirs.items():
            more, labels = self.set_scores(folder, kind)
            scores |= more
        # floors: as many training images as samples, with the samples' label counts
        pick = _matching(r.train_labels, labels)
        scores["fd_real"] = _fd(r.train_x[pick], r.val_x)
        scores["colour_real"] = class_colour_distance(
            r.train_images[pick], r.train_labels[pick], r.val_images, r.val_labels
        ).mean
        scores["fd_decoder"], scores["colour_decoder"] = self.decoder_floor("pack", labels)
        scores |= self._refiner_change()
        real = linear_probe(r.train_x, r.train_labels, r.val_x, r.val_labels, epochs=50)
        scores["class_accuracy"] = scores["class_accuracy_refined"]
        scores["class_accuracy_real_val"] = float(real.top1)
        # the decoder's ceiling: held-out val images through the packing autoencoder
        _, decoded_val = self._val_recon
        n_dec = len(decoded_val)
        dec = linear_probe(
            r.train_x,
            r.train_labels,
            self._pooled(to_uint8(decoded_val)),
            r.val_labels[:n_dec],
            epochs=50,
        )
        scores["class_accuracy_decoded_val"] = float(dec.top1)
        scores["n_samples"] = int(len(labels))
        scores["n_reference"] = int(len(r.val_images))
        return scores

    @torch.no_grad()
    def _recon_scores(self) -> dict[str, Any]:
        from repackctl.demo_report import recon_grid
        from repackctl.files import to_uint8
        from repackctl.metrics.detail import hf_error
        from repackctl.metrics.recon import psnr, ssim
        from repackctl.refine.load import load_refiner

        refiner = load_refiner(str(self.out), "refine", pack_id=None).model
        real, _ = self.images("val", self.plan.eval_images)
        latent, decoded = self._val_recon
        refined = refiner(decoded, latent).clamp(-1, 1)  # (N, 3, H, W)
        rec, ref = to_uint8(decoded), to_uint8(refined)
        path = recon_grid(real, rec, ref, self.runs / "recon.png")  # runs = out but in a seed run
        self.report.files["recon.png"] = str(path)
        hf_rec, hf_ref = hf_error(rec, real), hf_error(ref, real)
        psnr_rec, psnr_ref = psnr(real, rec).to_dict(), psnr(real, ref).to_dict()
        return {
            # the mean over the inexact images (None: every one exact), as `evaluate recon`
            "recon_psnr": psnr_rec["psnr"],
            "recon_psnr_exact": psnr_rec["n_identical"],  # reconstructions with PSNR = inf
            "recon_ssim": float(ssim(real, rec)),
            "refined_psnr": psnr_ref["psnr"],
            "refined_psnr_exact": psnr_ref["n_identical"],
            "refined_ssim": float(ssim(real, ref)),
            "recon_hf_error": hf_rec.error,
            "refined_hf_error": hf_ref.error,
            "hf_energy": {
                "real": hf_rec.reference_energy,
                "recon": hf_rec.energy,
                "refined": hf_ref.energy,
            },
            "n_recon": int(len(real)),
        }

    def _probe(self) -> dict[str, Any]:
        from repackctl.evaluate.pack import evaluate_probe

        s = self.settings({"pack.run": "pack", "pack.eval_entry": self.entries["val"]})
        report = evaluate_probe(s, self.progress)
        return {"table": report.table(), "rows": [r.to_dict() for r in report.rows]}

    # ---- pictures and report --------------------------------------------------------------------
    def pictures(self) -> None:
        from PIL import Image

        from repackctl.data.builtin import CLASS_NAMES
        from repackctl.demo_report import class_rows_grid
        from repackctl.metrics.adm import read_samples_npz

        images, labels = read_samples_npz(self.sample_dirs["refined"] / "samples.npz")
        class_rows_grid(images, labels, CLASS_NAMES, self.out / "samples.png")
        self.report.files["samples.png"] = str(self.out / "samples.png")
        if getattr(self, "arm_dir", None) is not None:
            self.arm_picture()
        self._curves()
        Image.open(self.out / "samples.png").verify()

    def _curves(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from repackctl.train.logging import read_metrics

        skip = (
            "lr/",
            "latent/",
            "grad_norm",
            "steps/s",
            "samples/s",
            "bad_steps",
            "epoch",
            "step",
            "gan_",
        )
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, run in zip(axes, ("pack", "dit", "refine"), strict=True):
            rows = read_metrics(self.out / run)
            keys = sorted({k for r in rows for k in r if not k.startswith(skip)})
            for key in keys:
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=key)
            ax.set_title(run)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = self.out / f"{TMP_PREFIX}curves.png"  # the demo's own temporary (a kill leaves it)
        fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        tmp.replace(self.out / "curves.png")
        self.report.files["curves.png"] = str(self.out / "curves.png")

    def write_report(self) -> None:
        from repackctl.demo_report import (
            dit_steps_line,
            link_to_study,
            meaning,
            pca_arm_lines,
            probe_note,
            refiner_change_line,
            results_table,
            settings_block,
        )

        m = self.report.metrics
        p = self.plan
        timed = {s.name: s.seconds for s in self.report.stages if not s.reused}
        cost = (
            f"about {timed['pack train'] + timed['train dit']:.0f} s"
            if "pack train" in timed and "train dit" in timed
            else "about as much time as the demo's pack and DiT stages take (not timed here: this "
            "run reused them)"
        )
        lines = [
            "# repackctl demo — the built-in dataset through every stage",
            "",
            f"{p.n_train} training and {p.n_val} validation images at {p.resolution} px, "
            "built-in encoder (patch 8). Load average at the start "
            f"{self.load_start}, at the end {_load()} (the CPU may be shared).",
            "",
            _machine_line(self.machine),
            "",
            "## Results",
            "",
            *results_table(m),
            "",
            refiner_change_line(m),
            "",
            dit_steps_line(self.out),
            "",
            meaning(m, p.n_train, p.resolution, link_to_study(self.out)),
            "",
            *pca_arm_lines(m, cost, demo_command(replace(p, pca_arm=True))),
            "",
            "Linear probe (train → val, top-1):",
            "",
            m["probe"]["table"],
            "",
            probe_note(m),
            "",
            "## Time per stage",
            "",
            "| stage | seconds | reused | what |",
            "|---|---|---|---|",
            *[
                f"| {s.name} | {s.seconds:.1f} | {'yes' if s.reused else 'no'} | {s.detail} |"
                for s in self.report.stages
            ],
            f"| **total** | **{self.report.seconds:.1f}** | | |",
            "",
            "## Settings",
            "",
            *settings_block(p),
            "",
            "## Files",
            "",
            "`samples.png` (class-conditional samples after the refiner, one labelled row per "
            "class), `recon.png` (original / reconstruction / refined; the last columns enlarge "
            "the centre of the first images), `curves.png` (training losses), and each stage's "
            "own outputs: `cache/`, `pack/`, `dit/`, `refine/`, `samples/`"
            + (
                "; the PCA arm's `samples-pca.png` (its samples, as in `samples.png`), "
                "`pack-pca/` and `dit-pca/`."
                if "fd_pca" in m
                else "." + self.arm_leftovers()
            ),
            "",
        ]
        write_text_atomic(self.out / "report.md", "\n".join(lines))
        self.report.files["report.md"] = str(self.out / "report.md")
        self.write_metrics()

    def arm_leftovers(self) -> str:
        """A sentence naming the PCA arm's files that an earlier ``--pca-arm`` run left in the
        folder, when this run did not score the arm (its figures are not in this report)."""
        left = [
            f"`{n}`"
            for n in ("samples-pca.png", "pack-pca/", "dit-pca/")
            if (self.out / n.rstrip("/")).exists()
        ]
        if not left:
            return ""
        return (
            f" {', '.join(left)} are left from an earlier run with `--pca-arm`: this run did not "
            "score the arm, so none of its figures are above; "
            f"`{demo_command(replace(self.plan, pca_arm=True))}` adds them again."
        )

    def write_metrics(self) -> None:
        """``metrics.json`` (through a temporary file): the scores, the machine, and what each
        sample set was scored from (``scored_plain``, ``scored_refined``, with the PCA arm
        ``scored_pca``: its ``samples.npz``, the checkpoint and refiner that made it, with
        their sha256)."""
        from repackctl.files import write_json_atomic

        sets = dict(self.sample_dirs)
        if getattr(self, "arm_dir", None) is not None:
            sets["pca"] = self.arm_dir
        scored = {f"scored_{kind}": scored_samples(folder) for kind, folder in sets.items()}
        write_json_atomic(
            self.out / "metrics.json", {**self.report.metrics, "machine": self.machine, **scored}
        )


#: What :func:`run_dit_seed` reports of each seed (keys of the demo's metrics).
SEED_METRICS = (
    "class_accuracy_refined",
    "class_accuracy_plain",
    "fd_refined",
    "fd_plain",
    "fd_decoder",
    "colour_refined",
    "colour_real",
)


def check_finished(plan: DemoPlan) -> None:
    """Refuse a demo folder without the cache entries (image counts, resolution) and the pack
    and refiner runs (exact steps) of ``plan``: a full plan does not match a ``--quick`` demo,
    nor the other way round. Checked before anything runs, so a mismatch writes nothing."""
    from repackctl.data.sources import dataset_label, make_source
    from repackctl.paths import entry_name

    for split, n in (("train", plan.n_train), ("val", plan.n_val)):
        source = make_source("builtin", split, n, plan.seed, None)  # as extract_split names it
        name = entry_name(dataset_label(source, n), split, plan.resolution)
        if not (plan.out / "cache" / name).is_dir():
            raise ConfigError(
                f"{plan.out} holds no cache entry {name} of this demo plan",
                "run `repackctl demo` (with the same --out and --quick) first",
            )
    demo = Pipeline(plan.out)
    for run, steps in (("pack", plan.pack_steps), ("refine", plan.refine_steps)):
        if demo.last_step(run) != steps:
            raise ConfigError(
                f"{plan.out} holds no {run} run of this demo plan ({steps} steps)",
                "run `repackctl demo` (with the same --out and --quick) first",
            )


def run_dit_seed(
    plan: DemoPlan,
    seed: int,
    runs: Path,
    log: Callable[[str], None] = print,
    progress: ProgressFactory = null_progress,
) -> dict[str, float]:
    """The demo's DiT trained, sampled and scored again with another ``seed`` (its init, data
    order, time draws and sampling noise), on the cache, pack and refiner of the finished demo
    in ``plan.out``, which it only reads. The DiT run and the samples go to ``runs``, beside
    copies of the pack and refiner runs; a second call resumes or reuses them.

    It measures how far one demo figure moves with the DiT's seed alone
    (``benchmarks/demo_seeds.py`` runs several seeds side by side).
    """
    check_finished(plan)
    runs.mkdir(parents=True, exist_ok=True)
    for run in ("pack", "refine"):
        if not (runs / run).is_dir():  # copied whole, then renamed: a kill leaves no half copy
            partial = runs / f".{run}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(plan.out / run, partial)
            partial.rename(runs / run)
        if _checkpoint_cards(runs / run) != _checkpoint_cards(plan.out / run):
            raise ConfigError(
                f"{runs / run} is a copy of another demo's {run} run than the one in {plan.out} "
                "(its checkpoints differ)",
                f"give the seeds a new folder with --out (or move {runs.parent} away)",
            )
    demo = _Demo(plan, progress, log, runs=runs)
    solo = plan.solo_threads
    demo.stage("extract train", lambda: demo.extract_split("train", plan.n_train), solo)
    demo.stage("extract val", lambda: demo.extract_split("val", plan.n_val), solo)
    demo.stage("pack train", demo.pack_train_stage, solo)
    demo.stage("pack encode", demo.pack_encode_stage, solo)
    if not all(s.reused for s in demo.stages):  # the demo's own cache and pack, never new ones
        raise TrainingError(
            f"the demo in {plan.out} was not reused whole (a stage ran again)",
            f"run `{demo_command(plan)}` to finish it, or give the seeds a new folder with --out",
        )
    demo.seed = seed
    demo.stage("train dit", demo.dit, plan.side_threads)
    demo.stage("sample", demo.sample_stage, solo)
    demo.stage("evaluate", demo.evaluate, solo)
    return {k: float(demo.report.metrics[k]) for k in SEED_METRICS}


def _checkpoint_cards(run: Path) -> dict[str, bytes]:
    """Each checkpoint of ``run`` and its ``state.json`` (which holds the sha256 of every file
    of the checkpoint): equal for a run and its copy, different for another run."""
    from repackctl.train.checkpoint import list_checkpoints

    return {c.name: (c / "state.json").read_bytes() for c in list_checkpoints(run)}


def _load() -> str:
    """The 1/5/15-minute load averages, as text."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _machine(plan: DemoPlan) -> dict[str, Any]:
    """What the run times depend on: CPU, its speed index, threads, torch."""
    from repackctl.runtime import cpu_name, matmul_gflops

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "matmul_gflops_1_thread": round(matmul_gflops(), 1),
        "solo_threads": plan.solo_threads,
        "side_threads": plan.side_threads,
        "torch": torch.__version__,
    }


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']}; "
        f"speed index {machine['matmul_gflops_1_thread']:.0f} GFLOP/s (a 256 × 256 float32 "
        "matmul on one thread, measured at the start: compare run times of two machines only "
        f"together with it). Threads: {machine['solo_threads']} for the stages that run alone, "
        f"{machine['side_threads']} each for the DiT and the refiner side by side."
    )


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians of two feature sets (N, C)."""
    from repackctl.metrics.frechet import frechet_distance

    def gauss(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x.astype(np.float64)
        return x.mean(0), np.cov(x, rowvar=False)

    return float(frechet_distance(*gauss(a), *gauss(b), method="cholesky"))


def _matching(labels: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Indices of the first images of each class in ``labels``, as many as ``wanted`` has."""
    picks = [np.flatnonzero(labels == c)[: int((wanted == c).sum())] for c in np.unique(wanted)]
    return np.sort(np.concatenate(picks))


@released_after()  # the folder's lock (claim_folder) and the stages' run locks
def run_demo(
    plan: DemoPlan,
    progress: ProgressFactory = null_progress,
    log: Callable[[str], None] = print,
    fresh: bool = False,
) -> RunReport:
    """Run (or finish) the demo in ``plan.out``; ``fresh`` deletes the demo's earlier results
    first (only what the demo writes, in a folder the demo made: :func:`claim_folder`)."""
    claim_demo_folder(plan, "demo", DEMO_FILES, fresh, log)
    solo = plan.solo_threads
    demo = _Demo(plan, progress, log)
    demo.stage("extract train", lambda: demo.extract_split("train", plan.n_train), solo)
    demo.stage("extract val", lambda: demo.extract_split("val", plan.n_val), solo)
    demo.stage("pack train", demo.pack_train_stage, solo)
    demo.stage("pack encode", demo.pack_encode_stage, solo)
    demo.start_refine()
    try:
        demo.stage("train dit", demo.dit, plan.side_threads)
    except BaseException:
        demo.kill_sides()
        raise
    demo.stage("refine train (waited for)", demo.refine)
    demo.stage("sample", demo.sample_stage, solo)
    demo.stage("evaluate", demo.evaluate, solo)
    if plan.pca_arm:
        demo.run_pca_arm(solo)
    demo.pictures()
    demo.write_report()
    return demo.report
