"""`repackctl sample`: DiT checkpoint → latents → pack decoder → (refiner) → PNGs, ADM npz, card.

The generation path of RePack then Refine (guanfangdong/RePack-then-Refine
``stage2/inference_batch.py`` then ``stage3/refine_batch.py``), rebuilt around the things its
users could not reproduce (``reference/methods.md``):

- **Per-index seeds.** Sample ``i`` draws its initial noise and every SDE noise from its own
  ``torch.Generator`` seeded from ``(seed, i)`` (``index_seed``), so an image does not depend on
  the batch size or on the number of processes beyond rounding (the official code drew one
  batch of noise per process and step). Batched matmuls round by batch shape: latents differ by
  ~1e-6 and pixels by ±1/255 between batchings, so a folder records its batch size and world
  size (``claim_batching``), refuses an unfinished resume with another ``--batch-size`` and
  recomputes the batches of the job that started it whatever the number of processes now. CPU
  matmuls also round by thread count: a folder made on the CPU records its torch thread count
  (``cpu_threads``), and every later call on the CPU computes its samples with that count
  (``sampling_threads``), whatever ``OMP_NUM_THREADS`` says (on CUDA it changes nothing). CPU
  and CUDA kernels round differently too: a folder records the device type it is made on
  (``device_type``), and a later call on another device type is refused (``check_device``).
- **Labels** are class-balanced by default (N/classes per class, in class order), or seeded
  random, or given classes; the official sampler drew them uniformly at random.
- **Latent stats come from the DiT checkpoint** (``extra["latent_stats"]``): sampling never reads
  the cache (the official sampler recomputed them from the training latents). The de-normalised,
  *raw* packed latent is what the pack decoder and the refiner see, and what ``latents.npy``
  stores for ``refine apply``.
- **Resumable, several processes.** Process r of W owns the contiguous index range
  ``[N·r/W, N·(r+1)/W)``; ``000123.png`` is written atomically after its latent and is the
  "done" marker, so a killed run redoes only indices without a PNG. ``samples.npz`` (ADM layout),
  ``latents.npy`` and ``grid.png`` are assembled from the per-index files at the end. The
  counts a call returns (and the CLI prints) are the whole job's, summed over the processes
  (``_job_totals``): rank 0's own share alone would tell a user half of what was written.
- **Imported official DiTs** (``repackctl import official``) run in the opposite time
  convention with the opposite velocity sign; their checkpoint says so
  (``extra["velocity_convention"] == "official"``) and ``model_velocity`` wraps them:
  ``v_ours(x, t) = −v_theirs(x, 1 − t)``. Their sampling settings arrive as defaults through the
  run's ``sampling.json``.

Output (DESIGN.md §7): ``samples/<run>--<ckpt>--<sampler>-<steps>--cfg<s>--seed<k>/`` (each
setting that changes the images and is not at its default adds a suffix: ``sample_folder_name``)
with ``000000.png …``, ``samples.npz``, ``latents.npy``, ``grid.png`` and ``protocol.json`` (the
generation half of ``metrics.protocol.ProtocolCard``; ``evaluate`` adds the scoring half).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repackctl.dit.load import load_dit_for_sampling
from repackctl.dit.t2i_load import checkpoint_stage
from repackctl.errors import ConfigError, DataError
from repackctl.files import to_uint8, write_json_atomic
from repackctl.pack.load import PackHandle, load_decoder
from repackctl.paths import (
    PROTOCOL_JSON,
    SETTINGS_JSON,
    local_path,
    run_root_of,
)
from repackctl.progress import ProgressBar, ProgressFactory, null_progress
from repackctl.run_lock import released_after
from repackctl.runs import chained_run
from repackctl.runtime import (
    DistInfo,
    amp_autocast,
    check_precision,
    header_line,
    resolve_device,
    run_header,
)
from repackctl.sample.folder import (
    GRID_KEY,
    LATENTS_DIR,
    assemble_recorded,
    check_num,
    claim_batching,
    claim_folder,
    cpu_threads,
    generation_card,
    indices_to_make,
    is_finished,
    job_batches,
    kept_provenance,
    missing_indices,
    named_folder,
    out_hint,
    owned_range,
    plan_fields,
    reopen_finished,
    sampling_threads,
    torch_threads,
    write_samples,
)
from repackctl.sample.generate import (
    generate_raw_latents,
    guided_velocity,
    model_velocity,
    refuse_non_finite,
)
from repackctl.sample.plan import (
    canonical_labels,
    check_null_condition_trained,
    evaluation_times,
    label_scheme_name,
    make_labels,
    network_evaluations,
    read_sampling_defaults,
    resolve_plan,
)
from repackctl.settings import Settings

if TYPE_CHECKING:
    from repackctl.refine.load import RefinerHandle
    from repackctl.settings.sample import SampleSettings


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
    threads: int | None = None  # torch threads per process the samples were made with (CPU)

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


@released_after()  # the samples folder's writer lock (``claim_folder``)
def run_sample(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
    precision_source: str = "settings",
) -> SampleResult:
    """Generate (or finish generating) ``settings.sample.num`` samples of a DiT run.

    ``precision_source``: where the precision came from (flag, env …, default), for the run
    header; a caller without the settings' provenance leaves "settings"."""
    dist = dist or DistInfo.from_env()
    check_num(settings.sample.num)  # before a run is looked up or a folder made
    settings = _canonical_labels(_chain_run(settings))
    cfg = settings.sample
    if checkpoint_stage(settings.runs, cfg.run, cfg.checkpoint) == "t2i":
        from repackctl.sample.t2i import run_t2i_sample

        return _job_totals(run_t2i_sample(settings, progress, dist, precision_source), dist)
    if cfg.prompt or cfg.prompts or cfg.text_weights:
        raise ConfigError(
            f"run {cfg.run} is class-conditional: prompts and --text-weights apply to "
            "text-to-image runs",
            "drop --prompt/--prompts/--text-weights, or pass a run trained with `repackctl "
            "train t2i`",
        )
    device = resolve_device(settings.device, dist.local_rank)
    check_precision(settings.precision, device, "the samples")  # before anything is written
    dit = load_dit_for_sampling(settings.runs, cfg.run, cfg.checkpoint, cfg.weights)
    shape = dit.extra.get("latent_shape")  # (C, H, W): bounds --cfg-channels
    channels = int(shape[0]) if shape else None
    plan = resolve_plan(cfg, read_sampling_defaults(Path(dit.checkpoint)), channels)
    velocity, guide_info, nfe = _velocity(settings, dit, plan, device)
    pack = load_decoder(settings.runs, dit.extra)
    refiner = None
    if cfg.refiner:
        refiner = fitting_refiner(settings.runs, cfg, pack, dit.extra["latent_shape"], device)
    ckpt = Path(dit.checkpoint)
    labels = make_labels(cfg.num, int(dit.extra["num_classes"]), cfg.labels, settings.seed)
    fingerprint = _fingerprint(settings, dit, plan, guide_info, refiner)
    folder = _folder(settings, dit, plan, fingerprint)
    if refiner is not None:  # `sample` then `refine apply` wrote this folder: nothing to make
        done = _applied(folder, settings, dit, plan, labels, guide_info, pack, refiner, dist)
        if done is not None:
            return _job_totals(done, dist)
    else:  # a `refine apply` folder is said to be one, with the --refiner that reuses it
        from repackctl.sample.refine import refuse_apply_folder

        refuse_apply_folder(folder, out_hint(bool(cfg.out)), settings.runs)
    batching, threads = _claim(settings, folder, fingerprint, dist.world, device)
    header = run_header(dist, device, settings.precision, precision_source, settings.seed)
    job = _Job(settings, plan, dit.extra, labels, velocity, pack.model.to(device).eval(), refiner,
               folder, device, header, is_finished(folder), batching, threads)  # fmt: skip
    written, already, seconds = _generate(job, dist, progress, run_root_of(ckpt).name)
    dist.barrier()
    protocol = _protocol(job, nfe, ckpt, dit.sha256, pack, guide_info)
    image_shape = _finish(job, dist, protocol)
    result = SampleResult(
        out_dir=folder,
        num=cfg.num,
        written=written,
        already_done=already,
        nfe=nfe,
        image_shape=image_shape,
        seconds=seconds,
        protocol=protocol,
        refined=refiner is not None,
        threads=threads,
    )
    return _job_totals(result, dist)


def fitting_refiner(
    runs: str,
    cfg: SampleSettings,
    pack: PackHandle,
    latent_shape: Sequence[int],
    device: torch.device,
) -> RefinerHandle:
    """The refiner ``cfg.refiner`` on ``device`` in eval mode, refused before anything is written
    unless it was trained for the samples of ``cfg.run``: their pack model (``pack``, the
    decoder's handle), image side and latent grid (``latent_shape``, (d, h, w)). Shared by
    class-conditional and text-to-image sampling."""
    from repackctl.refine.load import load_refiner

    refiner = load_refiner(runs, cfg.refiner, pack.pack_id)
    dec = pack.model.config.decoder  # the decoder upsamples the DiT's grid by this factor
    side = int(latent_shape[1]) * (dec.resolution // dec.latent_size)
    where = f"the samples of {cfg.run} ({side}x{side} px)"
    pack_ref = {"checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id}
    refiner.check_fits((side, side), latent_shape, pack_ref, where)
    refiner.model.to(device).eval()
    return refiner


def _job_totals(result: SampleResult, dist: DistInfo) -> SampleResult:
    """``result`` with the counts of the whole job (each process wrote its own share) and the
    slowest process's time, on every process."""
    written, already, seconds = dist.job_totals(result.written, result.already_done, result.seconds)
    return replace(result, written=written, already_done=already, seconds=seconds)


def _chain_run(settings: Settings) -> Settings:
    """With no --run, the newest DiT run (t2i when prompts are given); says which it took."""
    cfg = settings.sample
    if cfg.run:
        return settings
    stage = "t2i" if cfg.prompt or cfg.prompts else "dit"
    cfg = cfg.model_copy(update={"run": chained_run(settings.runs, stage, "--run")})
    return settings.model_copy(update={"sample": cfg})


def _canonical_labels(settings: Settings) -> Settings:
    """The label scheme in its one spelling (``--labels "3, 7"`` → ``3,7``), before anything
    records it, names a folder after it or draws labels from it."""
    cfg = settings.sample
    labels = canonical_labels(cfg.labels)
    if labels == cfg.labels:
        return settings
    return settings.model_copy(update={"sample": cfg.model_copy(update={"labels": labels})})


def _velocity(settings: Settings, dit: Any, plan: Any, device: Any):
    """(guided velocity, guide card, network evaluations per sample) of the run (+ its guide)."""
    cfg, extra = settings.sample, dit.extra
    if plan.legacy_channels and cfg.guide:
        raise ConfigError("legacy CFG channels do not apply to autoguidance", "drop --cfg-channels")
    if cfg.guide_checkpoint and not cfg.guide:  # else sampled plainly, the option dropped
        raise ConfigError(
            f"--guide-checkpoint {cfg.guide_checkpoint} names a checkpoint of the guide run, "
            "but no --guide run was given: the samples would be plain, the option unused",
            "add --guide RUN (autoguidance by that run's checkpoint), or drop --guide-checkpoint",
        )
    if cfg.guide and not plan.guided:  # v_guide + 1·(v_main − v_guide) is the main model alone
        raise ConfigError(
            f"--guide {cfg.guide} at --cfg 1 would sample the main model alone (autoguidance at "
            "scale 1 never calls its guide), under a folder named after the guide",
            "pass a guidance scale above 1 (e.g. --cfg 2), or drop --guide",
        )
    if cfg.guide:
        _refuse_guide_alone(plan, cfg)
    else:
        check_null_condition_trained(
            plan, extra, Path(dit.checkpoint), "class_dropout", "null class"
        )
    main_fn = model_velocity(dit.model.to(device).eval(), extra, settings.precision)
    guide_fn = guide_info = None
    if cfg.guide:
        guide = load_dit_for_sampling(settings.runs, cfg.guide, cfg.guide_checkpoint, cfg.weights)
        same_shape = list(guide.extra["latent_shape"]) == list(extra["latent_shape"])
        if not same_shape or guide.extra["pack"].get("pack_id") != extra["pack"].get("pack_id"):
            raise ConfigError(
                "the guide model was trained on other latents than the main model",
                "autoguidance needs a weaker DiT of the same pack model and latent shape",
            )
        if guide.sha256 == dit.sha256:  # v_guide + w·(v_main − v_guide) = v_main
            raise ConfigError(
                f"--guide {cfg.guide} is the main model itself (the same weights, "
                f"{guide.checkpoint}): autoguidance by it changes nothing, under a folder named "
                "after the guide",
                "guide with a weaker model of the same latents: an earlier checkpoint "
                "(--guide-checkpoint step-NNNNNNN) or a smaller run",
            )
        guide_fn = model_velocity(guide.model.to(device).eval(), guide.extra, settings.precision)
        guide_info = {"checkpoint": str(guide.checkpoint), "sha256": guide.sha256}
    velocity = guided_velocity(main_fn, plan, int(extra["num_classes"]), guide_fn)
    return velocity, guide_info, network_evaluations(plan.spec, plan)


def _refuse_guide_alone(plan: Any, cfg: Any) -> None:
    """Refuse autoguidance at ``--cfg 0`` whose interval holds every evaluation time of the
    sampler: ``v_guide + 0·(v_main − v_guide)`` is the guide's velocity at every step, so the
    samples are the guide run's own, byte for byte, under the main checkpoint's folder and
    card (and scored as the main model's by `evaluate fid`)."""
    times = evaluation_times(plan.spec)
    if plan.cfg != 0.0 or not all(plan.t_lo <= t <= plan.t_hi for t in times):
        return
    pick = f" --checkpoint {cfg.guide_checkpoint}" if cfg.guide_checkpoint else ""
    raise ConfigError(
        f"--guide {cfg.guide} at --cfg 0 on every step would sample the guide alone "
        "(autoguidance at scale 0 is the guide's velocity, v_guide + 0·(v_main − v_guide)), "
        f"under a folder and card naming {cfg.run}, whose weights would never be used",
        f"sample the guide itself (`repackctl sample --run {cfg.guide}{pick}`), or pass a "
        "guidance scale above 1 (e.g. --cfg 2)",
    )


def _claim(
    settings: Settings,
    folder: Path,
    fingerprint: dict[str, Any],
    world: int,
    device: torch.device,
) -> tuple[tuple[int, int], int | None]:
    """Claim the samples folder of these settings (``_folder``; a folder of other settings is
    refused, an unfinished one of another batch size too, and one started on another device
    type): the (batch size, world size) its samples are made in (``claim_batching``) and the
    torch thread count they are made with on the CPU (``sampling_threads``; None: the count
    given)."""
    cfg = settings.sample
    fingerprint = _as_recorded(folder, fingerprint)
    hint, threads = out_hint(bool(cfg.out)), cpu_threads(device)
    claim, batch, world = claim_batching(
        folder, fingerprint, cfg.batch_size, world, hint, threads, device
    )
    claim_folder(folder, claim, hint)
    return (batch, world), sampling_threads(claim, device)


def _fingerprint(
    settings: Settings, dit: Any, plan: Any, guide_info: Any, refiner: Any
) -> dict[str, Any]:
    """The settings that fix the samples, as the folder's settings file records them."""
    cfg = settings.sample
    return {
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


def _folder(settings: Settings, dit: Any, plan: Any, fingerprint: dict[str, Any]) -> Path:
    """The samples folder of these settings: ``--out``, or the one named after them."""
    cfg, ckpt = settings.sample, Path(dit.checkpoint)
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    guide = cfg.guide and "-".join(filter(None, (Path(cfg.guide).name, cfg.guide_checkpoint)))
    which = (run_root_of(ckpt).name, ckpt.name, plan, settings.seed, cfg.weights, cfg.refiner)
    return named_folder(
        local_path(settings.samples),
        which,
        fingerprint,
        guide=guide,
        labels=cfg.labels,
        precision=settings.precision,
    )


def _applied(
    folder: Path,
    settings: Settings,
    dit: Any,
    plan: Any,
    labels: np.ndarray,
    guide_info: Any,
    pack: PackHandle,
    refiner: RefinerHandle,
    dist: DistInfo,
) -> SampleResult | None:
    """What `sample --refiner` did when ``folder`` was written by `refine apply --refiner` from
    the samples of these settings (the folder name both give): nothing, the images are there
    (``refined_by_apply``; a lost PNG restored or refused: ``restore_applied``), this process's
    share of them already done; None when ``folder`` is not such a folder. One that holds other
    samples, or is unfinished, is refused by name with nothing changed."""
    from repackctl.sample.refine import (
        image_shape_of,
        refined_by_apply,
        regrid_finished,
        restore_applied,
    )

    cfg = settings.sample
    expected = {  # the fields `_protocol` records that fix the samples (``_GENERATION_KEYS``)
        "checkpoint_sha256": dit.sha256,
        "weights": cfg.weights,
        "seed": settings.seed,
        "sampler_spec": plan.spec.to_dict(),
        **plan_fields(plan),
        "guide": guide_info,
        "labels": labels.tolist(),
        "num_samples": cfg.num,
        "precision": settings.precision,
    }
    expected = json.loads(json.dumps(expected))  # as a card records them (tuples → lists)
    which = (str(cfg.refiner), refiner.sha256)
    hint = out_hint(bool(cfg.out))
    card = refined_by_apply(folder, expected, pack.pack_id, which, hint, settings.runs)
    if card is None:
        return None
    share = restore_applied(folder, card, str(cfg.refiner), dist)
    card = regrid_finished(folder, card, cfg.grid, dist)  # its grid.png: --grid, as our own
    nfe = int(card.get("nfe") or network_evaluations(plan.spec, plan))
    shape = image_shape_of(folder)
    return SampleResult(folder, cfg.num, 0, share, nfe, shape, 0.0, card, refined=True)


def _as_recorded(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` with the label scheme spelled as ``folder`` recorded it, when that is
    another spelling of the same scheme (``"3, 7"``: recorded before schemes were normalised),
    so such a folder is resumed rather than refused."""
    try:
        recorded = json.loads((folder / SETTINGS_JSON).read_text()).get("labels")
        same = canonical_labels(recorded) == fingerprint["labels"]
    except (OSError, ValueError, AttributeError, ConfigError):
        return fingerprint  # no folder yet, or not a scheme: claim_folder decides
    return dict(fingerprint, labels=recorded) if same else fingerprint


@dataclass
class _Job:
    """What the generation loop and the card share."""

    settings: Settings
    plan: Any
    extra: dict[str, Any]
    labels: np.ndarray
    velocity: Any
    decoder: Any
    refiner: Any
    folder: Path
    device: Any
    header: dict[str, Any]  # the run header (world size, device, precision, seed, version)
    finished: bool = False  # the folder was finished before this call (``is_finished``)
    batching: tuple[int, int] = (1, 1)  # (batch size, world size) of its batches: ``job_batches``
    threads: int | None = None  # torch threads to compute with (CPU): ``sampling_threads``


def _generate(job: _Job, dist: DistInfo, progress: ProgressFactory, run_name: str):
    """Write this process's missing samples; (written, already done, seconds)."""
    cfg, folder = job.settings.sample, job.folder
    mine = owned_range(cfg.num, dist.rank, dist.world)
    todo, warnings = indices_to_make(folder, mine, job.finished)
    warnings = dist.all_items(warnings)  # every process's, printed once by rank 0's bar
    missing = set(todo)
    if todo:
        (folder / LATENTS_DIR).mkdir(exist_ok=True)
    already, t0 = len(mine) - len(todo), time.perf_counter()
    with progress(f"sample {run_name}", total=len(todo), unit="img") as bar:
        log_start(bar, job.header, warnings, already)
        with folder_threads(bar, job.threads, bool(todo)):
            written = _make(job, missing, bar)
    return written, already, time.perf_counter() - t0


def _make(job: _Job, missing: set[int], bar: ProgressBar) -> int:
    """Make the ``missing`` samples of this process in the batches of the folder's job; how
    many were written."""
    cfg, written = job.settings.sample, 0
    for idx in job_batches(cfg.num, job.batching[1], missing, job.batching[0]):
        raw, images = _batch(job, idx)
        new = [(j, i) for j, i in enumerate(idx) if i in missing]
        # latents, their manifest, then the PNGs: a PNG (the done marker) implies the rest
        write_samples(job.folder, [(i, raw[j], images[j]) for j, i in new])
        written += len(new)
        bar.advance(len(new))
    return written


def log_start(bar: ProgressBar, header: dict[str, Any], warnings: list[str], already: int) -> None:
    """What a sampling call (class-conditional or text-to-image) prints before its first
    batch: its run header (``run_header``, also stored on the card), the ``Warning:`` lines on
    damaged files, and how many samples of this process were already written."""
    bar.log(header_line(header))
    for line in warnings:
        bar.log(line)
    if already:
        bar.log(f"resuming: {already} samples of this process were already written")


@contextmanager
def folder_threads(bar: ProgressBar, threads: int | None, making: bool) -> Iterator[None]:
    """Compute with the folder's recorded CPU thread count ``threads`` (``sampling_threads``;
    None: the count given), saying so when it overrides another one given to this process and
    samples are ``making``; then with the count there was before (``torch_threads``). Shared by
    class-conditional and text-to-image sampling."""
    given = torch.get_num_threads()
    if making and threads is not None and threads != given:
        bar.log(
            f"computing with {threads} CPU threads per process, the count this samples folder "
            f"was started with (this process was given {given}: OMP_NUM_THREADS), so its "
            "samples round as the rest of the folder"
        )
    with torch_threads(threads):
        yield


def _batch(job: _Job, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw latents (B, d, h, w) and uint8 images (B, H, W, 3) of the samples ``idx``."""
    with torch.no_grad():
        raw = generate_raw_latents(
            job.velocity, job.plan, job.extra, job.labels, job.settings.seed, idx, job.device
        )  # (B, d, h, w)
        refuse_non_finite(raw, "latents", idx, job.settings.precision, job.plan.cfg)
        with amp_autocast(job.settings.precision, job.device):
            decoded = job.decoder.decode(raw)  # (B, 3, H, W)
        refuse_non_finite(decoded, "decoded images", idx, job.settings.precision, job.plan.cfg)
        images = to_uint8(decoded)  # (B, H, W, 3)
        if job.refiner is not None:
            images = job.refiner.refine(images, raw)  # (B, H, W, 3)
    return raw.cpu().numpy().astype(np.float32), images


def _protocol(job: _Job, nfe: int, ckpt: Path, sha: str, pack: Any, guide_info: Any) -> dict:
    """The protocol card of the samples folder."""
    cfg, refiner = job.settings.sample, job.refiner
    return generation_card(
        plan=job.plan,
        nfe=nfe,
        label_scheme=label_scheme_name(cfg.labels),
        seed=job.settings.seed,
        precision=job.settings.precision,
        checkpoint=ckpt,
        checkpoint_sha256=sha,
        num=cfg.num,
        extra={
            "weights": cfg.weights,
            "dit_run": run_root_of(ckpt).name,
            "pack": {"checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
            "latent_shape": [int(s) for s in job.extra["latent_shape"]],
            "latent_convention": "raw",
            "velocity_convention": job.extra.get("velocity_convention", "ours"),
            "guide": guide_info,
            "refiner": refiner_record(refiner),
            "labels": job.labels.tolist(),
            GRID_KEY: cfg.grid,  # how many grid.png shows: `refine apply` shows as many
            "run_header": job.header,
        },
    )


def refiner_record(refiner: Any) -> dict[str, str] | None:
    """What a samples card records of the refiner its images were refined with (None: none):
    its checkpoint and sha256, so a refiner retrained in place is told apart (class-conditional
    and text-to-image cards alike; `refine apply` compares the sha256)."""
    if refiner is None:
        return None
    return {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256}


def _finish(job: _Job, dist: DistInfo, protocol: dict) -> tuple[int, ...]:
    """Rank 0: check every sample is there, assemble npz/latents/grid, write the card (with
    the sha256 and size of samples.npz and latents.npy)."""
    cfg, folder = job.settings.sample, job.folder
    image_shape: tuple[int, ...] = ()
    if dist.rank == 0:
        lost = missing_indices(folder, range(cfg.num))
        if lost:
            raise DataError(
                f"{len(lost)} samples are missing after sampling (e.g. {lost[:3]})",
                "run the same command again to finish them",
            )
        shape = tuple(int(s) for s in job.extra["latent_shape"])
        if job.finished:  # its samples are the recorded ones: so is who made them
            image_shape, files = reopen_finished(folder, job.labels, cfg.grid)
            protocol = kept_provenance(folder, protocol)
        else:
            image_shape, files = assemble_recorded(folder, job.labels, cfg.grid, shape, True)
        write_json_atomic(folder / PROTOCOL_JSON, {**protocol, "files": files})
    dist.barrier()
    return image_shape
