"""`repackctl sample`: DiT checkpoint → latents → pack decoder → (refiner) → PNGs, ADM npz, card.

The generation path of RePack then Refine (guanfangdong/RePack-then-Refine
``stage2/inference_batch.py`` then ``stage3/refine_batch.py``), rebuilt around the things its
users could not reproduce (``reference/methods.md``):

- **Per-index seeds.** Sample ``i`` draws its initial noise and every SDE noise from its own
  ``torch.Generator`` seeded from ``(seed, i)`` (``index_seed``), so an image does not depend on
  the batch size or on the number of processes (the official code drew one batch of noise per
  process and step).
- **Labels** are class-balanced by default (N/classes per class, in class order), or seeded
  random, or given classes; the official sampler drew them uniformly at random.
- **Latent stats come from the DiT checkpoint** (``extra["latent_stats"]``): sampling never reads
  the cache (the official sampler recomputed them from the training latents). The de-normalised,
  *raw* packed latent is what the pack decoder and the refiner see, and what ``latents.npy``
  stores for ``refine apply``.
- **Resumable, several processes.** Process r of W owns the contiguous index range
  ``[N·r/W, N·(r+1)/W)``; ``000123.png`` is written atomically after its latent and is the
  "done" marker, so a killed run redoes only indices without a PNG. ``samples.npz`` (ADM layout),
  ``latents.npy`` and ``grid.png`` are assembled from the per-index files at the end.
- **Imported official DiTs** (``repackctl import official``) run in the opposite time
  convention with the opposite velocity sign; their checkpoint says so
  (``extra["velocity_convention"] == "official"``) and ``model_velocity`` wraps them:
  ``v_ours(x, t) = −v_theirs(x, 1 − t)``. Their sampling settings arrive as defaults through the
  run's ``sampling.json``.

Output (DESIGN.md §7): ``samples/<run>--<ckpt>--<sampler>-<steps>--cfg<s>--seed<k>/`` with
``000000.png …``, ``samples.npz``, ``latents.npy``, ``grid.png`` and ``protocol.json`` (the
generation half of ``metrics.protocol.ProtocolCard``; ``evaluate`` adds the scoring half).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.dit.load import load_dit_for_sampling
from repackctl.dit.t2i_load import checkpoint_stage
from repackctl.errors import ConfigError, DataError
from repackctl.files import to_uint8, write_json_atomic, write_npy_atomic, write_png_atomic
from repackctl.pack.load import load_decoder
from repackctl.paths import PROTOCOL_JSON, local_path, run_root_of
from repackctl.progress import ProgressFactory, null_progress
from repackctl.runs import chained_run
from repackctl.runtime import DistInfo, resolve_device
from repackctl.sample.folder import (
    LATENTS_DIR,
    aligned_batches,
    assemble,
    claim_folder,
    generation_card,
    missing_indices,
    owned_range,
    png_path,
    sample_folder_name,
)
from repackctl.sample.generate import generate_raw_latents, guided_velocity, model_velocity
from repackctl.sample.plan import (
    label_scheme_name,
    make_labels,
    network_evaluations,
    read_sampling_defaults,
    resolve_plan,
)
from repackctl.settings import Settings


@dataclass
class SampleResult:
    """What a sampling call did, for the CLI to render."""

    out_dir: Path
    num: int
    written: int
    already_done: int
    nfe: int
    image_shape: tuple[int, ...]
    seconds: float
    protocol: dict[str, Any]
    refined: bool = False

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Seeds and labels


# --------------------------------------------------------------------------------------------
# Model → velocity, guidance, NFE


# --------------------------------------------------------------------------------------------
# Runs and checkpoints


# --------------------------------------------------------------------------------------------
# Files of a samples folder


# --------------------------------------------------------------------------------------------
# The command


def run_sample(
    settings: Settings, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
) -> SampleResult:
    """Generate (or finish generating) ``settings.sample.num`` samples of a DiT run."""
    cfg = settings.sample
    dist = dist or DistInfo.from_env()
    if not cfg.run:
        stage = "t2i" if cfg.prompt or cfg.prompts else "dit"
        cfg = cfg.model_copy(update={"run": chained_run(settings.runs, stage, "--run")})
        settings = settings.model_copy(update={"sample": cfg})
    if checkpoint_stage(settings.runs, cfg.run, cfg.checkpoint) == "t2i":
        from repackctl.sample.t2i import run_t2i_sample

        return run_t2i_sample(settings, progress, dist)
    if cfg.prompt or cfg.prompts:
        raise ConfigError(
            f"run {cfg.run} is class-conditional: prompts apply to text-to-image runs",
            "drop --prompt/--prompts, or pass a run trained with `repackctl train t2i`",
        )
    device = resolve_device(settings.device, dist.local_rank)
    autocast = settings.precision != "fp32" and device.type == "cuda"

    dit = load_dit_for_sampling(settings.runs, cfg.run, cfg.checkpoint, cfg.weights)
    extra = dit.extra
    plan = resolve_plan(cfg, read_sampling_defaults(Path(dit.checkpoint)))
    if plan.legacy_channels and cfg.guide:
        raise ConfigError("legacy CFG channels do not apply to autoguidance", "drop --cfg-channels")
    model = dit.model.to(device).eval()
    main_fn = model_velocity(model, extra, autocast)
    guide_fn = None
    guide_info = None
    if cfg.guide:
        guide = load_dit_for_sampling(settings.runs, cfg.guide, cfg.guide_checkpoint, cfg.weights)
        if list(guide.extra["latent_shape"]) != list(extra["latent_shape"]) or guide.extra[
            "pack"
        ].get("pack_id") != extra["pack"].get("pack_id"):
            raise ConfigError(
                "the guide model was trained on other latents than the main model",
                "autoguidance needs a weaker DiT of the same pack model and latent shape",
            )
        guide_fn = model_velocity(guide.model.to(device).eval(), guide.extra, autocast)
        guide_info = {"checkpoint": str(guide.checkpoint), "sha256": guide.sha256}
    velocity = guided_velocity(main_fn, plan, int(extra["num_classes"]), guide_fn)
    nfe = network_evaluations(plan.spec, plan, guide_fn is not None)

    pack = load_decoder(settings.runs, extra)
    decoder = pack.model.to(device).eval()
    refiner = None
    if cfg.refiner:
        from repackctl.refine.load import load_refiner

        refiner = load_refiner(settings.runs, cfg.refiner, pack.pack_id)
        refiner.model.to(device).eval()

    ckpt = Path(dit.checkpoint)
    run_name = run_root_of(ckpt).name
    latent_shape = tuple(int(s) for s in extra["latent_shape"])
    labels = make_labels(cfg.num, int(extra["num_classes"]), cfg.labels, settings.seed)
    folder = (
        Path(cfg.out).expanduser().resolve()
        if cfg.out
        else local_path(settings.samples)
        / sample_folder_name(run_name, ckpt.name, plan, settings.seed, cfg.weights, cfg.refiner)
    )
    fingerprint = {
        "checkpoint_sha256": dit.sha256,
        "weights": cfg.weights,
        "num": cfg.num,
        "labels": cfg.labels,
        "seed": settings.seed,
        "sampler": plan.spec.to_dict(),
        "cfg": [plan.cfg, plan.t_lo, plan.t_hi, plan.legacy_channels],
        "guide": guide_info,
        "refiner": None if refiner is None else refiner.sha256,
        "precision": settings.precision,
    }
    claim_folder(folder, fingerprint)

    mine = owned_range(cfg.num, dist.rank, dist.world)
    todo = missing_indices(folder, mine)
    missing = set(todo)
    if todo:
        (folder / LATENTS_DIR).mkdir(exist_ok=True)
    already = len(mine) - len(todo)
    t0 = time.perf_counter()
    written = 0
    with progress(f"sample {run_name}", total=len(todo), unit="img") as bar:
        if already:
            bar.log(f"resuming: {already} samples of this process were already written")
        for idx in aligned_batches(mine, set(todo), cfg.batch_size):
            with torch.no_grad():
                raw = generate_raw_latents(
                    velocity, plan, extra, labels, settings.seed, idx, device
                )  # (B, d, h, w)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    images = to_uint8(decoder.decode(raw))  # (B, H, W, 3)
                if refiner is not None:
                    images = refiner.refine(images, raw)  # (B, H, W, 3)
            raw_np = raw.cpu().numpy().astype(np.float32)
            new = [(j, i) for j, i in enumerate(idx) if i in missing]
            for j, i in new:
                # the latent first: a PNG (the done marker) implies its latent is on disk
                write_npy_atomic(folder / LATENTS_DIR / f"{i:06d}.npy", raw_np[j])
                write_png_atomic(png_path(folder, i), images[j])
            written += len(new)
            bar.advance(len(new))
    seconds = time.perf_counter() - t0

    dist.barrier()
    protocol = generation_card(
        plan=plan,
        nfe=nfe,
        label_scheme=label_scheme_name(cfg.labels),
        seed=settings.seed,
        precision=settings.precision,
        checkpoint=ckpt,
        checkpoint_sha256=dit.sha256,
        num=cfg.num,
        extra={
            "weights": cfg.weights,
            "dit_run": run_name,
            "pack": {"checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
            "latent_shape": list(latent_shape),
            "latent_convention": "raw",
            "velocity_convention": extra.get("velocity_convention", "ours"),
            "guide": guide_info,
            "refiner": None
            if refiner is None
            else {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256},
            "labels": labels.tolist(),
        },
    )
    image_shape: tuple[int, ...] = ()
    if dist.rank == 0:
        lost = missing_indices(folder, range(cfg.num))
        if lost:
            raise DataError(
                f"{len(lost)} samples are missing after sampling (e.g. {lost[:3]})",
                "run the same command again to finish them",
            )
        image_shape = assemble(folder, labels, cfg.grid, latent_shape)
        write_json_atomic(folder / PROTOCOL_JSON, protocol)
    dist.barrier()
    return SampleResult(
        out_dir=folder,
        num=cfg.num,
        written=written,
        already_done=already,
        nfe=nfe,
        image_shape=image_shape,
        seconds=seconds,
        protocol=protocol,
        refined=refiner is not None,
    )
