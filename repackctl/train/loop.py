"""The one training loop of repackctl: packing autoencoder (+ GAN), DiT (+ REPA) and refiner.

A stage implements ``TrainTask`` (modules, optimizers, data access, one training step); ``train``
does everything else: processes and precision (accelerate), sample order (``sampler.py``),
gradient accumulation, multi-optimizer updates, clipping, lr schedules, EMA, the non-finite guard,
logging and atomic checkpoints with bit-identical resume (DESIGN.md §6; the official RePack code
overwrote its EMA on resume and shrank the batch under accumulation, ``reference/methods.md``).

How one step works, for ``A = grad_accum`` micro-batches on each of ``W`` processes:

1. Indices of the next ``global_batch`` samples come from the sampler; this process reads its
   contiguous ``1/W`` share, split into ``A`` micro-batches, through ``task.get_batch``.
2. For each micro-batch, ``task.training_step`` returns one scalar loss per optimizer, in the order
   to apply them (e.g. ``{"gen": ..., "disc": ...}``). Each loss, divided by ``A``, is
   back-propagated into that optimizer's **own** gradient accumulator: before each backward the
   loop puts the optimizer's accumulated grads back on its parameters and clears all others.
   So grads that an earlier loss leaks into other modules (the generator loss flows through the
   discriminator) are zeroed before that module's own backward and never reach its update.
3. After the last micro-batch, for each optimizer in order: all-reduce (average) its grads across
   processes, unscale (fp16), clip, check finite; then step every optimizer, update the EMA of
   ``"model"``, and step every scheduler.

Gradients are all-reduced by the loop once per step rather than by wrapping modules in DDP: a GAN
step calls the discriminator several times before its backward passes, which DDP's reducer
rejects, and accumulation needs a single reduction per step anyway. The price is no overlap of
communication with the backward pass.

Since every optimizer steps only after all losses were back-propagated, a loss must not depend on
parameters that an earlier optimizer of the same step updates in place through a retained graph;
the discriminator loss should use the detached generator output, as usual.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from repackctl.errors import CheckpointError, ConfigError, TrainingError
from repackctl.files import write_json_atomic
from repackctl.progress import ProgressFactory, null_progress
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.config import TrainConfig
from repackctl.train.ema import EMA
from repackctl.train.logging import MetricsLogger, plot_curves
from repackctl.train.sampler import BlockSampler, Position, local_micro_batches
from repackctl.train.schedule import make_scheduler

NAN_HINT = (
    "lower the learning rate (--lr), set clip_grad (e.g. 1.0), enable qk-norm in the model "
    "(the known fix for NaN losses in long DiT runs), or train in bf16 instead of fp16"
)
# settings that change the order of samples: a run cannot resume with other values
ORDER_KEYS = ("seed", "block", "buffer_blocks")


@dataclass
class OptimizerSpec:
    """Which named modules one AdamW updates; ``None`` fields fall back to the TrainConfig."""

    modules: tuple[str, ...] = ("model",)
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None


@dataclass
class StepOutput:
    """What ``training_step`` returns: one scalar loss per optimizer (in order) and extra logs."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class TrainTask(Protocol):
    """What a training stage implements. Optional hooks (looked up with ``getattr``):

    * ``optimizers() -> dict[str, OptimizerSpec]`` (default ``{"model": OptimizerSpec()}``)
    * ``on_images(modules, ema_module, step, run_dir)``: write an image grid; main process only,
      every ``image_every`` steps, so it must not use collectives.
    * ``state_extra() -> dict``: JSON-safe data stored in ``state.json`` (latent stats, cache ids);
      ``load_state_extra(extra)`` gets it back on resume.
    """

    def build(self) -> dict[str, nn.Module]:
        """Named modules; ``"model"`` is required (it gets the EMA)."""
        ...

    def num_samples(self) -> int:
        """Size of the training set; indices run over ``range(num_samples())``."""
        ...

    def get_batch(self, indices: np.ndarray, step: int, generator: np.random.Generator) -> Any:
        """Read the samples ``indices`` (tensors, or dicts/lists of them).

        Runs in a background thread when ``config.prefetch``: take randomness (flips, crops) only
        from ``generator``, derived from (seed, step, position of the micro-batch in the global
        batch).
        """
        ...

    def training_step(
        self, modules: dict[str, nn.Module], batch: Any, step: int
    ) -> StepOutput | tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Forward one micro-batch; return mean-reduced losses per optimizer, in order."""
        ...


@dataclass
class TrainResult:
    """Summary of a finished ``train`` call."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    resumed_from: int | None
    bad_steps: int
    last_logs: dict[str, float]
    steps_per_s: float


# --------------------------------------------------------------------------- helpers


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision]
    try:
        acc = Accelerator(cpu=config.cpu, mixed_precision=mixed)
    except ValueError:
        # accelerate keeps one global state per process; a second train() call in the same
        # process with another precision must reset it (the process group stays)
        AcceleratorState._reset_state()
        acc = Accelerator(cpu=config.cpu, mixed_precision=mixed)
    if config.precision == "fp16" and acc.device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA GPU", "use --precision bf16 or fp32")
    return acc


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_generator(seed: int, step: int, start: int) -> np.random.Generator:
    """Generator of the micro-batch that starts ``start`` samples into the global batch.

    Keyed by position, not by process: W processes x A micro-batches and 1 process x W*A
    micro-batches hand the same slices with the same generators to ``get_batch``.
    """
    return np.random.default_rng([seed, step, start, 0x5EED])


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _unpack(out: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    if isinstance(out, StepOutput):
        return out.losses, out.logs
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping):
        return dict(out[0]), dict(out[1])
    raise TrainingError(
        f"training_step returned {type(out).__name__}",
        "return StepOutput(losses={'model': loss}, logs={...}) or a (losses, logs) tuple",
    )


def _all_reduce_mean(tensors: list[torch.Tensor], world: int, bucket: int = 2**25) -> None:
    """Average tensors across processes in place, flattened into buckets of one dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        start = 0
        while start < len(group):
            end, size = start, 0
            while end < len(group) and (size == 0 or size + group[end].numel() <= bucket):
                size += group[end].numel()
                end += 1
            chunk = group[start:end]
            flat = torch.cat([t.reshape(-1) for t in chunk])  # (size,)
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for t in chunk:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            start = end


def _apply_hparams(
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    hp: tuple[float, tuple[float, float], float],
) -> bool:
    """Put the configured lr / betas / weight decay on a resumed optimizer; True if changed.

    With unchanged settings every number is recomputed exactly as the scheduler would, so an
    uninterrupted and a resumed run stay bit-identical.
    """
    lr, betas, wd = hp
    changed = False
    for i, g in enumerate(opt.param_groups):
        changed |= sched.base_lrs[i] != lr or tuple(g["betas"]) != betas or g["weight_decay"] != wd
        g["initial_lr"], g["betas"], g["weight_decay"] = lr, betas, wd
        g["lr"] = lr * sched.lr_lambdas[i](sched.last_epoch)
    sched.base_lrs = [lr] * len(opt.param_groups)
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return changed


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class _Window:
    """Running sums of losses and logs between two log steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.pending: list[tuple[str, torch.Tensor]] = []  # losses kept as tensors (no sync)
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, key: str, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            self.pending.append((key, value.detach().float()))
            return
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        for key, value in self.pending:
            self.add(key, float(value))
        self.pending.clear()
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


# --------------------------------------------------------------------------- the loop


def train(
    task: TrainTask, config: TrainConfig, progress: ProgressFactory = null_progress
) -> TrainResult:
    """Train ``task`` as ``config`` says, resuming from the run's newest complete checkpoint."""
    config.validate()
    acc = _make_accelerator(config)
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    main = acc.is_main_process
    run_dir = Path(config.run_dir).expanduser()
    A = config.grad_accum
    if config.global_batch % (world * A):
        raise ConfigError(
            f"global_batch {config.global_batch} is not divisible by "
            f"{world} processes x {A} micro-batches",
            "change global_batch, grad_accum or the number of processes",
        )

    # identical initial weights on every process; per-process streams start after the build
    _seed_everything(config.seed)
    modules = task.build()
    if "model" not in modules:
        raise ConfigError("the task's build() must return a module named 'model'", "rename it")
    for name in modules:
        if not name.isidentifier() or name in ckpt_io.RESERVED:
            raise ConfigError(
                f"module name {name!r} cannot be a checkpoint file name",
                f"use an identifier other than {sorted(ckpt_io.RESERVED)}",
            )
    for m in modules.values():
        m.to(device).train()
    if world > 1:
        with torch.no_grad():
            for m in modules.values():
                for t in [*m.parameters(), *m.buffers()]:
                    dist.broadcast(t.data, src=0)
    model = modules["model"]
    ema = EMA(model, config.ema_decay, config.ema_warmup)

    # optimizers: each parameter belongs to at most one
    get_specs = getattr(task, "optimizers", None)
    specs: dict[str, OptimizerSpec] = get_specs() if get_specs else {"model": OptimizerSpec()}
    if not specs:
        raise ConfigError("the task declares no optimizer", "return at least one OptimizerSpec")
    owner: dict[int, str] = {}
    params: dict[str, list[nn.Parameter]] = {}
    hparams: dict[str, tuple[float, tuple[float, float], float]] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for oname, spec in specs.items():
        plist = []
        for mname in spec.modules:
            if mname not in modules:
                raise ConfigError(
                    f"optimizer {oname!r} names unknown module {mname!r}",
                    f"modules are: {', '.join(modules)}",
                )
            for p in modules[mname].parameters():
                if p.requires_grad:
                    if id(p) in owner:
                        raise ConfigError(
                            f"a parameter of {mname!r} is in optimizers {owner[id(p)]!r} "
                            f"and {oname!r}",
                            "give each module to exactly one optimizer",
                        )
                    owner[id(p)] = oname
                    plist.append(p)
        params[oname] = plist
        hparams[oname] = (
            spec.lr if spec.lr is not None else config.lr,
            tuple(spec.betas if spec.betas is not None else config.betas),
            spec.weight_decay if spec.weight_decay is not None else config.weight_decay,
        )
        lr, betas, wd = hparams[oname]
        optimizers[oname] = torch.optim.AdamW(plist, lr=lr, betas=betas, weight_decay=wd)
    all_params = [p for m in modules.values() for p in m.parameters()]
    schedulers = {n: make_scheduler(o, config) for n, o in optimizers.items()}
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    sampler = BlockSampler(task.num_samples(), config.seed, config.block, config.buffer_blocks)

    # resume
    step, position, bad_total, resumed_from = 0, Position(), 0, None
    messages: list[str] = []
    if main:
        ckpt_io.remove_stale_temporaries(run_dir)
    acc.wait_for_everyone()
    latest = ckpt_io.latest_checkpoint(run_dir)
    if latest is not None:
        state = ckpt_io.read_state(latest)
        saved = state.get("config", {})
        changed = [k for k in ORDER_KEYS if k in saved and saved[k] != getattr(config, k)]
        if changed:
            raise CheckpointError(
                f"{run_dir} was trained with other {', '.join(changed)}; resuming would change "
                "the order of samples",
                "use the same settings or a new run directory",
            )
        try:
            for name, m in modules.items():
                m.load_state_dict(ckpt_io.load_weights(latest, name))
            ema.load_state_dict(ckpt_io.load_weights(latest, "ema"), state["ema_updates"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{latest} does not fit the task's modules: {e}",
                "resume with the same model settings or use a new run directory",
            ) from e
        optim_state = ckpt_io.load_optim(latest)
        missing = [n for n in optimizers if n not in optim_state.get("optimizers", {})]
        if missing:
            raise CheckpointError(
                f"{latest} has no state for optimizers {missing}",
                "resume with the same task settings or use a new run directory",
            )
        for name, opt in optimizers.items():
            opt.load_state_dict(optim_state["optimizers"][name])
            schedulers[name].load_state_dict(optim_state["schedulers"][name])
            # the checkpoint's hyper-parameters would silently win; the current settings do
            if _apply_hparams(opt, schedulers[name], hparams[name]):
                messages.append(f"optimizer {name!r}: new lr / betas / weight decay applied")
        if optim_state.get("scaler"):
            scaler.load_state_dict(optim_state["scaler"])
        step = int(state["step"])
        position = Position(int(state["epoch"]), int(state["offset"]))
        bad_total = int(state.get("bad_steps_total", 0))
        rngs = state["rng"]
        if rank < len(rngs):
            ckpt_io.set_rng_state(rngs[rank])
        else:
            _seed_everything(hash((config.seed, step, rank)) % 2**31)
            messages.append(f"process {rank} has no saved RNG state; reseeded")
        if state.get("world_size") != world:
            messages.append(f"resuming a {state.get('world_size')}-process run on {world}")
        load_extra = getattr(task, "load_state_extra", None)
        if load_extra is not None:
            load_extra(state.get("extra", {}))
        resumed_from = step
        messages.append(f"resumed from {latest} (step {step})")
    else:
        _seed_everything(config.seed * world + rank)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", config.to_dict())
    if config.compile:
        model.compile()  # in place: state_dict keys stay those of the plain module

    logger = MetricsLogger(run_dir, resume_step=step) if main else None
    last_ckpt = latest
    last_logs: dict[str, float] = {}
    consecutive_bad = 0
    window = _Window()
    t_start, step_start = time.perf_counter(), step
    pool = concurrent.futures.ThreadPoolExecutor(1) if config.prefetch else None
    pending: tuple[int, concurrent.futures.Future] | None = None

    def load(s: int, micro: list[np.ndarray]) -> list[Any]:
        size = config.global_batch // (world * A)
        return [
            task.get_batch(idx, s, _batch_generator(config.seed, s, (rank * A + i) * size))
            for i, idx in enumerate(micro)
        ]

    def save(s: int) -> Path:
        weights = {name: _state_dict_cpu(m) for name, m in modules.items()}
        weights["ema"] = _state_dict_cpu(ema.module)
        for name, sd in weights.items():
            if not ckpt_io.all_finite(sd):
                raise TrainingError(
                    f"the {name} weights hold non-finite values at step {s}; not saving them",
                    NAN_HINT,
                )
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, ckpt_io.rng_state())
        else:
            rngs = [ckpt_io.rng_state()]
        path = ckpt_io.checkpoints_dir(run_dir) / ckpt_io.step_dir_name(s)
        if main:
            extra_fn = getattr(task, "state_extra", None)
            state = {
                "epoch": position.epoch,
                "offset": position.offset,
                "rng": rngs,
                "config": config.to_dict(),
                "extra": extra_fn() if extra_fn else {},
                "ema_updates": ema.updates,
                "bad_steps_total": bad_total,
                "world_size": world,
                "optimizers": list(optimizers),
                "torch": torch.__version__,
            }
            optim = {
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "schedulers": {n: s_.state_dict() for n, s_ in schedulers.items()},
                "scaler": scaler.state_dict(),
            }
            path = ckpt_io.save_checkpoint(run_dir, s, weights, optim, state, config.keep_last)
            plot_curves(run_dir)
        acc.wait_for_everyone()
        return path

    def update(batches: list[Any], s: int) -> bool:
        """Forward/backward every micro-batch, then step the optimizers; False if skipped."""
        stash: dict[str, list[torch.Tensor | None] | None] = {n: None for n in optimizers}
        order: list[str] | None = None
        nonfinite = torch.zeros((), device=device)  # a tensor: no host sync per micro-batch
        for batch in batches:
            batch = _to_device(batch, device)
            with acc.autocast():
                losses, logs = _unpack(task.training_step(modules, batch, s))
            if order is None:
                order = list(losses)
            if list(losses) != order:
                raise TrainingError(
                    f"training_step returned losses {list(losses)} after {order}",
                    "return the same optimizers in the same order for every micro-batch",
                )
            for oname, loss in losses.items():
                if oname not in optimizers:
                    raise TrainingError(
                        f"training_step returned a loss for unknown optimizer {oname!r}",
                        f"optimizers are: {', '.join(optimizers)}",
                    )
                if loss.ndim != 0:
                    raise TrainingError(
                        f"loss {oname!r} has shape {tuple(loss.shape)}",
                        "reduce each loss to a scalar (mean over the micro-batch)",
                    )
                window.add(f"loss/{oname}", loss)
                nonfinite += (~torch.isfinite(loss.detach())).float()
                # this optimizer's accumulator back on its params; grads leaked by earlier
                # losses into any module are dropped here, before this loss's backward
                for p in all_params:
                    p.grad = None
                if stash[oname] is not None:
                    for p, g in zip(params[oname], stash[oname], strict=True):
                        p.grad = g
                scaler.scale(loss / A).backward()
                stash[oname] = [p.grad for p in params[oname]]
            for k, v in logs.items():
                window.add(k, v)
        for p in all_params:
            p.grad = None

        # all processes must agree: a NaN on one would otherwise desynchronise the updates
        if world > 1:
            dist.all_reduce(nonfinite)
        stepped = [n for n in order or [] if stash[n] is not None]
        if bool(nonfinite.item()) or not stepped:
            return not bool(nonfinite.item())
        norms = []
        for oname in stepped:
            grads = []
            for p, g in zip(params[oname], stash[oname], strict=True):
                # a parameter unused by this micro-batch still joins the reduction
                p.grad = g if g is not None else torch.zeros_like(p)
                grads.append(p.grad)
            if world > 1:
                _all_reduce_mean(grads, world)
            scaler.unscale_(optimizers[oname])
            if config.clip_grad is not None:
                norms.append(torch.nn.utils.clip_grad_norm_(params[oname], config.clip_grad))
            else:
                norms.append(torch.nn.utils.get_total_norm(grads))
        norm_values = torch.stack(norms).tolist()  # one host sync for all optimizers
        for oname, v in zip(stepped, norm_values, strict=True):
            window.add(f"grad_norm/{oname}", v)
        # grads are identical on every process after the reduction: the same decision everywhere
        ok = all(math.isfinite(v) for v in norm_values)
        if ok:
            for oname in stepped:
                scaler.step(optimizers[oname])
            ema.update(model)
        scaler.update()  # fp16: backs the scale off after an overflow
        for p in all_params:
            p.grad = None
        return ok

    bar_factory = progress if main else null_progress
    try:
        with bar_factory("train", total=config.steps, completed=step, unit="step") as bar:
            for msg in messages:
                bar.log(msg)
            while step < config.steps:
                indices, next_position = sampler.take(position, config.global_batch)
                micro = local_micro_batches(indices, rank, world, A)
                if pending is not None and pending[0] == step:
                    batches = pending[1].result()
                else:
                    batches = load(step, micro)
                pending = None
                if pool is not None and step + 1 < config.steps:
                    nxt, _ = sampler.take(next_position, config.global_batch)
                    pending = (
                        step + 1,
                        pool.submit(load, step + 1, local_micro_batches(nxt, rank, world, A)),
                    )

                good = update(batches, step)
                if good:
                    consecutive_bad = 0
                else:
                    bad_total += 1
                    consecutive_bad += 1
                    bar.log(f"step {step}: non-finite loss or gradient, update skipped")
                    if consecutive_bad >= config.max_bad_steps:
                        raise TrainingError(
                            f"{consecutive_bad} training steps in a row had a non-finite loss or "
                            f"gradient (up to step {step})",
                            NAN_HINT,
                        )
                lrs = {n: o.param_groups[0]["lr"] for n, o in optimizers.items()}  # this update's
                with warnings.catch_warnings():
                    # schedules follow the global step even when an optimizer did not step
                    # (a skipped non-finite step, a discriminator before its start step)
                    warnings.filterwarnings(
                        "ignore", "Detected call of `lr_scheduler.step", UserWarning
                    )
                    for sched in schedulers.values():
                        sched.step()
                step += 1
                position = next_position
                window.steps += 1

                # ---- logs, images, checkpoints
                fields: dict[str, float] = {}
                if step % config.log_every == 0 or step == config.steps:
                    means = window.means()
                    if world > 1:
                        gathered: list[dict[str, float]] = [{}] * world
                        dist.all_gather_object(gathered, means)
                        keys = {k for g in gathered for k in g}
                        means = {
                            k: sum(g[k] for g in gathered if k in g)
                            / sum(1 for g in gathered if k in g)
                            for k in keys
                        }
                    dt = max(time.perf_counter() - window.t0, 1e-9)
                    sps = window.steps / dt
                    record = {"step": step, "epoch": position.epoch}
                    record.update({f"lr/{n}": v for n, v in lrs.items()})
                    record.update(sorted(means.items()))
                    record.update(
                        {
                            "steps/s": sps,
                            "samples/s": sps * config.global_batch,
                            "bad_steps": bad_total,
                        }
                    )
                    if logger is not None:
                        logger.log(record)
                    last_logs = {k: float(v) for k, v in record.items()}
                    fields = {k: v for k, v in means.items() if k.startswith("loss/")}
                    fields["steps/s"] = sps
                    window = _Window()
                bar.advance(1, **fields)
                if main and config.image_every and step % config.image_every == 0:
                    hook = getattr(task, "on_images", None)
                    if hook is not None:
                        hook(modules, ema.module, step, run_dir)
                        for m in modules.values():
                            m.train()
                if step % config.ckpt_every == 0 or step == config.steps:
                    last_ckpt = save(step)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if logger is not None:
            logger.close()

    if main and resumed_from is not None and resumed_from >= config.steps:
        plot_curves(run_dir)
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        run_dir=run_dir,
        step=step,
        checkpoint=Path(last_ckpt) if last_ckpt is not None else None,
        resumed_from=resumed_from,
        bad_steps=bad_total,
        last_logs=last_logs,
        steps_per_s=(step - step_start) / elapsed if elapsed > 0 else 0.0,
    )


__all__ = ["OptimizerSpec", "StepOutput", "TrainResult", "TrainTask", "train"]
