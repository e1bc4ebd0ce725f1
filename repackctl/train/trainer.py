"""The one training engine of repackctl: ``Trainer`` (build → resume → step → log → save).

A stage implements ``TrainTask`` (``protocol.py``: modules, optimizers, data access, one training
step); the Trainer does everything else: processes and precision (accelerate), sample order
(``sampler.py``), gradient accumulation, multi-optimizer updates, clipping, lr schedules, EMA, the
non-finite guard, logging and atomic checkpoints with bit-identical resume (DESIGN.md §6).

How one step works, for ``A = grad_accum`` micro-batches on each of ``W`` processes:

1. Indices of the next ``global_batch`` samples come from the sampler; this process reads its
   contiguous ``1/W`` share, split into ``A`` micro-batches, through ``task.get_batch``.
2. For each micro-batch, ``task.training_step`` returns one scalar loss per optimizer, in the order
   to apply them (e.g. ``{"gen": ..., "disc": ...}``). Each loss, divided by ``A``, is
   back-propagated into that optimizer's **own** gradient accumulator: before each backward the
   trainer puts the optimizer's accumulated grads back on its parameters and clears all others,
   so grads that an earlier loss leaks into other modules (the generator loss flows through the
   discriminator) never reach that module's update.
3. Gradients are averaged over processes by DDP (one wrapper per module; bucketed all-reduce
   overlapped with the backward of the last micro-batch, ``no_sync`` on the others). A module of
   an optimizer declared ``overlap=False`` (a discriminator, called several times per backward,
   which DDP's reducer cannot follow) is averaged once per step after the backward passes.
4. Then for each optimizer: unscale (fp16), clip, check finite — one host sync per step for all
   of them; step every optimizer, update the EMA of ``"model"``, step every scheduler.

DDP averages gradients like the former hand-made all-reduce: each process back-propagates
``loss / A`` and the reduction divides by ``W``, so W processes x A micro-batches equal one process
x W·A micro-batches (bit for bit when W and A are powers of two).

Save policy: a checkpoint is written only when every weight is finite and no step since the last
save point (every ``ckpt_every`` steps) had a non-finite loss or gradient; otherwise the save is skipped with a warning, so a
diverging run never pushes its last good checkpoints out of ``keep_last``. After
``max_nonfinite_steps`` non-finite steps in a row the run stops with ``TrainingError``, and so
does a command that trained steps but saved no checkpoint (each of its save points skipped).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from repackctl.crash import crash_point
from repackctl.eager_adamw import EagerAdamW
from repackctl.errors import CheckpointError, ConfigError, TrainingError
from repackctl.files import write_json_atomic
from repackctl.progress import ProgressFactory, null_progress
from repackctl.progress import warn as progress_warn
from repackctl.run_files import CONFIG_HISTORY, CONFIG_SHA256, check_new_run_folder, json_sha256
from repackctl.run_lock import lock_run, release_run
from repackctl.runtime import header_line
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.config import TrainConfig
from repackctl.train.distributed import (
    all_reduce_mean,
    broadcast_modules,
    gather_objects,
    mean_over_processes,
)
from repackctl.train.ema import EMA
from repackctl.train.logging import MetricsLogger, plot_curves, remove_images_after
from repackctl.train.precision import compile_blocks, enable_fast_math, make_accelerator
from repackctl.train.protocol import OptimizerSpec, TrainResult, TrainTask, unpack_step_output
from repackctl.train.sampler import BlockSampler, Position, local_reads
from repackctl.train.schedule import make_scheduler, unfinished_warmup
from repackctl.train.sharding import (
    full,
    full_optim_state,
    full_state_dict,
    is_sharded,
    set_gradient_sync,
    shard_module,
    shard_optim_state,
)

NAN_HINT = (
    "lower the learning rate (lr), set clip_grad (e.g. 1.0), or train in bf16 instead of fp16"
)
#: the flags of each stage's training command that help a run whose loss or gradients go
#: non-finite (``TrainConfig.extra["stage"]``), besides --lr: one hint for every stage named
#: clip_grad, which `refine train` has no flag for, and DiT qk-norm to pack and refiner runs
NAN_FLAGS = {
    "pack": ("--clip-grad 1.0",),
    "refine": (),
    "dit": ("--clip-grad 1.0", "--qk-norm (the known fix for NaN losses in long DiT runs)"),
    "t2i": ("--clip-grad 1.0", "--qk-norm (the known fix for NaN losses in long DiT runs)"),
}


def nan_hint(stage: str | None, precision: str = "fp16") -> str:
    """What to change when steps of a ``stage`` run in ``precision`` go non-finite, naming only
    the flags of that stage's command (bf16 only for an fp16 run); :data:`NAN_HINT` (the
    settings' names) for a stage without a command."""
    if stage not in NAN_FLAGS:
        return NAN_HINT
    flags = ["a lower learning rate (--lr)", *NAN_FLAGS[stage]]
    flags += ["--precision bf16 instead of fp16"] if precision == "fp16" else []
    return "train with " + (f"{', '.join(flags[:-1])} or {flags[-1]}" if flags[1:] else flags[0])


# settings that change the order of samples: a run cannot resume with other values
ORDER_KEYS = ("seed", "block", "buffer_blocks")
HEADER = "header.json"
#: the note of ``parallel = "fsdp"`` on one process, which trains as ddp does
FSDP_ALONE = (
    "Note: --parallel fsdp on one process: FSDP has nothing to shard the model across, so it "
    "trains unsharded, with the same weights as --parallel ddp (header.json: parallel_used "
    "none); launch several processes (accelerate launch / torchrun) to shard it"
)
CURVES_EVERY_S = 60.0  # a drawing of curves.png costs ~0.3 s: at checkpoints, once a minute at most


def _reading(block: int) -> str:
    """How a run with sampler ``block`` reads its data (1: held in memory)."""
    if block == 1:
        return "held in memory and shuffled sample by sample"
    return f"read in chunk blocks of {block} rows"


def order_changed(run_dir: Path, changed: dict[str, tuple[Any, Any]]) -> CheckpointError:
    """The refusal of a resume whose sample order would differ from the checkpoint's:
    ``changed`` maps each of :data:`ORDER_KEYS` that differs to (checkpoint's, now). Each is
    named with the setting that gives it back; ``--allow-change`` does not apply to them (the
    order of the steps already done and the position in the epoch come from them)."""
    what, fixes = [], []
    for key, (was, now) in changed.items():
        if key == "seed":
            what.append(f"seed {was} (now {now})")
            fixes.append(f"--seed {was}")
        elif key == "block":
            what.append(f"its data {_reading(was)} (now {_reading(now)})")
            if 1 in (was, now):  # in_memory, or memory_gb deciding it
                fixes.append("--in-memory" if was == 1 else "--no-in-memory")
            else:
                fixes.append("the same cache entry (its chunk size)")
        else:
            what.append(f"a shuffle window of {was} chunks ({key}, now {now})")
            fixes.append(f"--buffer-blocks {was}")
    return CheckpointError(
        f"{run_dir} was trained with {'; '.join(what)}: resuming would change the order of "
        "samples, which cannot change on resume (--allow-change does not apply to it)",
        f"resume with {' and '.join(fixes)}, or start a new run with another --name",
    )


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_generator(seed: int, step: int, start: int) -> np.random.Generator:
    """Generator of the micro-batch that starts ``start`` samples into the global batch.

    Keyed by position, not by process: W processes x A micro-batches and 1 process x W*A
    micro-batches hand the same slices with the same generators to ``get_batch``.
    """
    return np.random.default_rng([seed, step, start, 0x5EED])


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def apply_hparams(
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


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full weights on the CPU (gathered from the shards under FSDP: call on every process)."""
    return full_state_dict(module)


class Window:
    """Running sums of losses and logs between two log steps (tensors kept: no host sync).

    Rows are cut at absolute steps (multiples of ``log_every``), but a checkpoint may fall inside
    a window: ``state`` (saved in the checkpoint) and ``from_state`` carry its sums and counts
    over a resume, so the next row averages the same steps, to the bit, as without the kill.
    ``steps`` and ``t0`` (the rate of this process's own steps) are not carried."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, key: str, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            self.pending.append((key, value.detach().float()))
            return
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _flush(self) -> None:
        if self.pending:  # one host sync for the whole window
            values = torch.stack([v.reshape(()) for _, v in self.pending]).tolist()
            for (key, _), value in zip(self.pending, values, strict=True):
                self.add(key, value)
        self.pending.clear()

    def means(self) -> dict[str, float]:
        self._flush()
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def state(self) -> dict[str, dict[str, Any]]:
        """The sums and counts so far, JSON-safe (Python floats: they round-trip exactly)."""
        self._flush()  # the same additions in the same order: a resumed run sums alike
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> Window:
        """A window holding a checkpoint's sums and counts (an empty one for None)."""
        window = cls()
        if state is not None:
            window.sums = {k: float(v) for k, v in state["sums"].items()}
            window.counts = {k: int(v) for k, v in state["counts"].items()}
        return window


def make_adamw(
    params: list[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> EagerAdamW:
    """AdamW with PyTorch's fused kernel where every parameter allows it (floating point, on
    a CPU or a GPU), else PyTorch's default implementation.

    The same update, computed in one kernel instead of a loop of small ops per tensor. On a
    2-core Xeon, the forward, backward and AdamW of the demo's DiT (3 blocks of width 128, patch
    2, batch 32, one thread) took 33.0 instead of 39.5 ms; its whole training step, 5 % less
    (600 steps 30.4 against 31.9 s), the demo's pack step (two threads) 2 % less. A resumed run
    keeps the implementation it started with: ``load_state_dict`` takes the ``fused`` flag of
    the checkpoint's optimizer state, so a run started before optimizers were fused goes on
    with the default loop and continues bit-identically."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return EagerAdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


class Optimizers:
    """One AdamW (+ lr schedule) per ``OptimizerSpec``; each parameter belongs to at most one."""

    def __init__(
        self, specs: dict[str, OptimizerSpec], modules: dict[str, nn.Module], config: TrainConfig
    ) -> None:
        if not specs:
            raise ConfigError("the task declares no optimizer", "return at least one OptimizerSpec")
        self.specs = specs
        self.params: dict[str, list[nn.Parameter]] = {}
        self.hparams: dict[str, tuple[float, tuple[float, float], float]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        owner: dict[int, str] = {}
        for oname, spec in specs.items():
            plist = []
            for mname in spec.modules:
                if mname not in modules:
                    raise ConfigError(
                        f"optimizer {oname!r} names unknown module {mname!r}",
                        f"modules are: {', '.join(modules)}",
                    )
                for p in modules[mname].parameters():
                    if not p.requires_grad:
                        continue
                    if id(p) in owner:
                        raise ConfigError(
                            f"a parameter of {mname!r} is in optimizers {owner[id(p)]!r} "
                            f"and {oname!r}",
                            "give each module to exactly one optimizer",
                        )
                    owner[id(p)] = oname
                    plist.append(p)
            self.params[oname] = plist
            self.hparams[oname] = (
                spec.lr if spec.lr is not None else config.lr,
                tuple(spec.betas if spec.betas is not None else config.betas),
                spec.weight_decay if spec.weight_decay is not None else config.weight_decay,
            )
            lr, betas, wd = self.hparams[oname]
            self.optimizers[oname] = make_adamw(plist, lr, betas, wd)
        self.schedulers = {n: make_scheduler(o, config) for n, o in self.optimizers.items()}
        self.quiet_schedules = False

    def lrs(self) -> dict[str, float]:
        return {n: o.param_groups[0]["lr"] for n, o in self.optimizers.items()}

    def step_schedules(self) -> None:
        if self.quiet_schedules:
            for sched in self.schedulers.values():
                sched.step()
            return
        with warnings.catch_warnings():
            # schedules follow the global step even when an optimizer did not step (a skipped
            # non-finite step, a discriminator before its start step); torch warns about that
            # on a scheduler's first step only, so later steps skip this (costly) guard
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            for sched in self.schedulers.values():
                sched.step()
        self.quiet_schedules = True

    def state_dict(self, scaler: torch.amp.GradScaler) -> dict[str, Any]:
        return {
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], where: Path) -> list[str]:
        """Restore optimizers and schedules, then apply the current hyper-parameters."""
        missing = [n for n in self.optimizers if n not in state.get("optimizers", {})]
        if missing:
            raise CheckpointError(
                f"{where} has no state for optimizers {missing}",
                "resume with the same task settings or use a new run directory",
            )
        messages = []
        for name, opt in self.optimizers.items():
            try:
                opt.load_state_dict(state["optimizers"][name])
            except ValueError as e:  # another set or shape of parameters than the checkpoint's
                raise CheckpointError(
                    f"{where} does not fit optimizer {name!r}: {e}",
                    "resume with the same model settings or use a new run directory",
                ) from e
            self.schedulers[name].load_state_dict(state["schedulers"][name])
            # the checkpoint's hyper-parameters would silently win; the current settings do
            if apply_hparams(opt, self.schedulers[name], self.hparams[name]):
                messages.append(f"optimizer {name!r}: new lr / betas / weight decay applied")
        return messages


#: below this loss scale an fp16 overflow counts as a non-finite step: gradients that overflow
#: even unscaled are divergence, not the GradScaler probing a larger scale
MIN_OVERFLOW_SCALE = 1.0


def scaler_overflow(scaler: torch.amp.GradScaler) -> bool:
    """Whether a step whose loss was finite but whose gradients were not is the GradScaler's
    overflow (fp16): it starts at a scale of 2¹⁶ and doubles it every 2000 good steps, so
    overflows are expected, and it halves the scale and skips the update. They were counted as
    non-finite steps: each one since a save point skipped the checkpoint (a long fp16 run kept
    almost none), and the first steps' run of them could stop the run."""
    return scaler.is_enabled() and scaler.get_scale() >= MIN_OVERFLOW_SCALE


class Trainer:
    """Trains one ``TrainTask`` as a ``TrainConfig`` says; ``fit()`` runs to ``config.steps``."""

    def __init__(
        self,
        task: TrainTask,
        config: TrainConfig,
        progress: ProgressFactory = null_progress,
        lines: Sequence[str] = (),
    ) -> None:
        """``lines``: what the stage's resume changed (``resume: setting: old → new``), logged
        (in ``log.txt`` too) with the run's first lines once the checkpoint was accepted: a
        resume the engine refuses (``order_changed``, another precision) logs none."""
        config.validate()
        self.task, self.config, self.progress = task, config, progress
        self.acc = make_accelerator(config.precision, config.cpu)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device, self.main = self.acc.device, self.acc.is_main_process
        enable_fast_math(self.device, config.tf32)
        self.run_dir = Path(config.run_dir).expanduser()
        self.A = config.grad_accum
        if config.global_batch % (self.world * self.A):
            raise ConfigError(
                f"global_batch {config.global_batch} is not divisible by "
                f"{self.world} processes x {self.A} micro-batches",
                "change global_batch, grad_accum or the number of processes",
            )
        self.modules = self._build_modules()
        self.model = self.modules["model"]
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.sampler = BlockSampler(
            task.num_samples(), config.seed, config.block, config.buffer_blocks
        )
        self.step_count, self.position, self.bad_total = 0, Position(), 0
        self.overflowed = False  # the last step was an fp16 overflow (``scaler_overflow``)
        self.resumed_from: int | None = None
        self.messages: list[str] = []
        self.saved_window: dict[str, Any] | None = None  # the checkpoint's, for this process
        self.last_ckpt = self._resume()
        self.consecutive_bad = 0
        self.bad_since_save = 0
        self.saves = 0  # checkpoints this command wrote
        self.said_in_use: set[str] = set()  # checkpoints rotation kept as others use them
        self.compiled = compile_blocks(self.model) if config.compile else 0
        # FSDP replaces the parameters: the optimizers are built over the sharded ones
        self.fsdp = self._shard_modules()
        get_specs = getattr(task, "optimizers", None)
        self.opt = Optimizers(
            get_specs() if get_specs else {"model": OptimizerSpec()}, self.modules, config
        )
        # a single loss per step may keep unsharded grads until the last micro-batch (FSDP's
        # no_sync); several losses swap grads between backward passes, so each one is reduced
        self.fsdp_accumulate = bool(self.fsdp) and len(self.opt.optimizers) == 1
        self.all_params = [p for m in self.modules.values() for p in m.parameters()]
        if self.last_ckpt is not None:
            self._resume_optimizers(self.last_ckpt)
        self.wrapped = self._wrap_modules()
        self.header = self._write_header()
        self.messages += lines  # after every refusal of the resume
        self.window = Window.from_state(self.saved_window)
        self.last_logs: dict[str, float] = {}
        self.lrs: dict[str, float] = {}
        self.logger: MetricsLogger | None = None
        prefetch = self.device.type != "cpu" if config.prefetch is None else config.prefetch
        self.pool = concurrent.futures.ThreadPoolExecutor(1) if prefetch else None
        self.pending: tuple[int, concurrent.futures.Future] | None = None

    # ------------------------------------------------------------------ build and resume

    def _build_modules(self) -> dict[str, nn.Module]:
        """The task's modules, identical on every process, on the device, in train mode."""
        seed_everything(self.config.seed)  # per-process streams start after the build
        modules = self.task.build()
        if "model" not in modules:
            raise ConfigError("the task's build() must return a module named 'model'", "rename it")
        for name in modules:
            if not name.isidentifier() or name in ckpt_io.RESERVED:
                raise ConfigError(
                    f"module name {name!r} cannot be a checkpoint file name",
                    f"use an identifier other than {sorted(ckpt_io.RESERVED)}",
                )
        for m in modules.values():
            m.to(self.device).train()
        if self.world > 1:
            broadcast_modules(modules)
        return modules

    def _wrap_modules(self) -> dict[str, nn.Module]:
        """What ``training_step`` calls: DDP wrappers for the overlapped modules (W > 1)."""
        self.ddp: list[DistributedDataParallel] = []
        self.calls = {}
        self.manual: list[str] = []  # optimizers whose grads the trainer averages itself
        if self.world == 1 or self.fsdp:  # sharded modules reduce their own grads
            return dict(self.modules)
        overlap = {m for spec in self.opt.specs.values() if spec.overlap for m in spec.modules}
        used = {m for s in self.opt.specs.values() if s.every_parameter_used for m in s.modules}
        wrapped: dict[str, nn.Module] = {}
        for name, m in self.modules.items():
            if name in overlap and any(p.requires_grad for p in m.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                with warnings.catch_warnings():
                    # torch ≥ 2.13 deprecates `broadcast_buffers` for `forward_sync_buffers`, whose
                    # False still syncs buffers at init; its own advice is to keep
                    # broadcast_buffers=False until `init_sync_buffers` exists: nothing to act on
                    warnings.filterwarnings(
                        "ignore", "`broadcast_buffers` is deprecated", FutureWarning
                    )
                    wrapped[name] = _DDP(
                        m,
                        device_ids=ids,
                        broadcast_buffers=False,
                        find_unused_parameters=name not in used,
                    )
                self.ddp.append(wrapped[name])
                m.register_forward_pre_hook(self._count_call(name))
            else:
                wrapped[name] = m
        self.manual = [n for n, s in self.opt.specs.items() if not s.overlap or not self.ddp]
        return wrapped

    def _count_call(self, name: str):
        """A pre-hook that refuses a second call of a DDP module within one backward."""
        self.calls: dict[str, int] = {}

        def hook(module: nn.Module, args: Any) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1 and torch.is_grad_enabled():
                raise TrainingError(
                    f"module {name!r} was called twice in one training step; DDP reduces a "
                    "module's gradients once per forward",
                    "declare its optimizer with OptimizerSpec(..., overlap=False)",
                )

        return hook

    def _resume(self) -> Path | None:
        """Load the newest complete checkpoint, if any; returns it.

        A run that has not started refuses a folder holding files repackctl did not write
        (checked on every process before any writes, so all of them stop). The main process
        holds the run's training lock (``repackctl.run_lock``; ``train`` gives it up at the end)
        before it writes: the temporaries it removes are not another training's."""
        check_new_run_folder(self.run_dir)
        if self.main:
            lock_run(self.run_dir, create=True)
            ckpt_io.remove_stale_temporaries(self.run_dir)
        self.acc.wait_for_everyone()
        # a run whose every checkpoint fails starts over here; `train dit` / `train t2i` refuse
        # it before (``dit.run.resume_and_train``, ``checkpoint_to_resume``)
        latest = ckpt_io.latest_checkpoint(self.run_dir, warn=self._skipped_warning)
        if latest is None:
            seed_everything(self.config.seed * self.world + self.rank)
            return None
        state = ckpt_io.read_state(latest)
        saved = state.get("config", {})
        changed = [k for k in ORDER_KEYS if k in saved and saved[k] != getattr(self.config, k)]
        if changed:
            raise order_changed(
                self.run_dir, {k: (saved[k], getattr(self.config, k)) for k in changed}
            )
        self._check_precision(saved)
        try:
            for name, m in self.modules.items():
                m.load_state_dict(ckpt_io.load_weights(latest, name))
            self.ema.load_state_dict(ckpt_io.load_weights(latest, "ema"), state["ema_updates"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{latest} does not fit the task's modules: {e}",
                "resume with the same model settings or use a new run directory",
            ) from e
        self.step_count = int(state["step"])
        self.position = Position(int(state["epoch"]), int(state["offset"]))
        self.bad_total = int(state.get("bad_steps_total", 0))
        rngs = state["rng"]
        if self.rank < len(rngs):
            ckpt_io.set_rng_state(rngs[self.rank])
        else:
            seed_everything(hash((self.config.seed, self.step_count, self.rank)) % 2**31)
            self.messages.append(f"process {self.rank} has no saved RNG state; reseeded")
        if state.get("world_size") != self.world:
            self.messages.append(
                f"resuming a {state.get('world_size')}-process run on {self.world}"
            )
        load_extra = getattr(self.task, "load_state_extra", None)
        if load_extra is not None:
            load_extra(state.get("extra", {}))
        self.saved_window = self._saved_window(state, latest)
        self.resumed_from = self.step_count
        self.messages.append(f"resumed from {latest} (step {self.step_count})")
        return latest

    def _skipped_warning(self, message: str) -> None:
        """A newer checkpoint that resume skipped, and why: a line of the bar (so in log.txt,
        beside the ``resumed from`` line), or on stderr where the bar shows nothing."""
        if self.progress is null_progress:
            progress_warn(message)
        else:
            self.messages.append(f"Warning: {message}")

    def _saved_window(self, state: dict[str, Any], latest: Path) -> dict[str, Any] | None:
        """This process's running metrics window at the checkpoint, so the first metrics row
        after the resume averages the same steps as an uninterrupted run. A checkpoint written
        before windows were saved, or by another number of processes, gives none: that row then
        averages only the steps after the checkpoint (the former behaviour), as a note says."""
        windows = state.get("metrics_window")
        if windows is not None and len(windows) == self.world:
            return windows[self.rank]
        step, saved, every = self.step_count, state.get("config", {}), self.config.log_every
        if windows is None:  # the window was empty when the checkpoint fell on a metrics row
            cut = step % saved.get("log_every", every) != 0 and step != saved.get("steps")
            why = "holds no metrics window (written by an older version)"
        else:
            cut = any(w["counts"] for w in windows)
            why = f"holds the metrics windows of {len(windows)} processes, not {self.world}"
        if cut and step < self.config.steps:
            row = min((step // every + 1) * every, self.config.steps)
            self.messages.append(
                f"{latest.name} {why}: the metrics row of step {row} averages only steps "
                f"{step + 1}-{row}, unlike an uninterrupted run's"
            )
        return None

    def _check_precision(self, saved: dict[str, Any]) -> None:
        """Refuse to go on in another precision than the run trained in when it comes from the
        launcher (``accelerate launch --mixed_precision``) or the default: the settings layer
        compares what repackctl's own settings give (and ``--allow-change precision`` passes it),
        not what the launcher gives."""
        was, now = saved.get("precision"), self.config.precision
        if was is None or was == now or self.config.precision_source not in ("launcher", "default"):
            return
        by = "the launcher" if self.config.precision_source == "launcher" else "default"
        raise CheckpointError(
            f"{self.run_dir} trained in {was} ({saved.get('precision_source', 'default')}); "
            f"this process would go on in {now} ({by})",
            f"resume it under the same launcher setting, or pass --precision {was} (add "
            "--allow-change precision where the run's settings record another one)",
        )

    def _shard_modules(self) -> list[nn.Module]:
        """With ``parallel = "fsdp"`` on several processes: shard every trainable module and the
        EMA copy (FSDP2); returns the sharded modules. On one process nothing is sharded (the
        run trains as with ddp, the same weights), as a note says and ``parallel_used``
        records. Plain CPU copies are kept for the images hook, which runs on the main process
        only (a sharded forward is a collective)."""
        if self.config.parallel != "fsdp":
            return []
        if self.world == 1:  # the same weights as ddp: said, not refused (a laptop's try)
            self.messages.append(FSDP_ALONE)
            return []
        if self.config.precision == "fp16":
            raise ConfigError(
                "fp16 with a GradScaler is not supported with parallel = fsdp",
                "train in bf16 (--precision bf16) or use --parallel ddp",
            )
        trainable = [
            n for n, m in self.modules.items() if any(p.requires_grad for p in m.parameters())
        ]
        self.shells: dict[str, nn.Module] = {}
        if self.config.image_every and getattr(self.task, "on_images", None) is not None:
            self.shells = {n: copy.deepcopy(m).cpu() for n, m in self.modules.items()}
            self.shells["ema"] = copy.deepcopy(self.ema.module).cpu()
        for name in trainable:
            shard_module(self.modules[name])
        shard_module(self.ema.module)
        return [self.modules[n] for n in trainable]

    def _resume_optimizers(self, latest: Path) -> None:
        """Optimizer, schedule and scaler state of the checkpoint (cut into shards under FSDP)."""
        optim_state = ckpt_io.load_optim(latest)
        if self.fsdp:
            optim_state = dict(optim_state)
            optim_state["optimizers"] = {
                n: shard_optim_state(s, self.opt.params[n]) if n in self.opt.params else s
                for n, s in optim_state.get("optimizers", {}).items()
            }
        self.messages[-1:-1] = self.opt.load_state_dict(optim_state, latest)
        if optim_state.get("scaler"):
            self.scaler.load_state_dict(optim_state["scaler"])

    def _write_header(self) -> dict[str, Any]:
        """The run header: world size, device, precision and its source, seed, version."""
        from repackctl import __version__

        header = {
            "world_size": self.world,
            "device": str(self.device),
            "precision": self.config.precision,
            "precision_source": self.config.precision_source,
            "seed": self.config.seed,
            "repackctl": __version__,
            "torch": torch.__version__,
            "compiled_blocks": self.compiled,
            "tf32": self.config.tf32 and self.device.type == "cuda",  # in effect, not just asked
            "ddp_modules": [n for n, m in self.wrapped.items() if m is not self.modules[n]],
            "parallel": self.config.parallel,
            "fsdp_modules": [n for n, m in self.modules.items() if any(m is f for f in self.fsdp)],
            # what the run did: "fsdp" (sharded), "ddp" (replicated) or "none" (one process)
            "parallel_used": "fsdp" if self.fsdp else ("ddp" if self.world > 1 else "none"),
            "step": self.step_count,
        }
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(self.run_dir / "config.json", *self._config_record())
            write_json_atomic(self.run_dir / HEADER, header)
        self.messages.insert(0, header_line(header))
        return header

    def _config_record(self) -> tuple[dict[str, Any], list | None]:
        """``config.json``: the config, with the precision the launcher chose written into the
        settings record (a resume keeps it, with or without the launcher); and the changes this
        resume allowed (``settings.resume``), taken out of the record. A resumed run's record
        gets back the sources its kept values started with (:func:`_as_started`), in the
        checkpoints' config too."""
        record = self.config.extra.get("settings")
        allowed = record.pop("allowed", None) if isinstance(record, dict) else None
        if isinstance(record, dict) and STARTED_SOURCES in record:
            self.config.extra["settings"] = _as_started(record)
        config = self.config.to_dict()
        record = config["extra"].get("settings")
        if self.config.precision_source == "launcher" and isinstance(record, dict):
            record.setdefault("values", {})["precision"] = self.config.precision
            record.setdefault("sources", {})["precision"] = "launcher"
        return config, allowed

    # ------------------------------------------------------------------ one step

    def step(self) -> bool:
        """One optimizer step over ``global_batch`` samples; False if it was skipped."""
        s = self.step_count
        indices, next_position = self.sampler.take(self.position, self.config.global_batch)
        batches = self._batches(s, indices, next_position)
        stash, order, nonfinite = self._backward(batches, s)
        self.overflowed = False
        good = self._update(stash, order, nonfinite)
        # an fp16 overflow the GradScaler backed off from is no sign of divergence: it neither
        # counts towards the stop nor skips the next checkpoint (``scaler_overflow``)
        bad = not good and not self.overflowed
        self.consecutive_bad = 0 if good else self.consecutive_bad + bad
        self.bad_total += bad
        self.bad_since_save += bad
        # the lr of this update, for the log line: 0 for an optimizer that got no loss this step
        # (a discriminator before gan_start), since it did not step: its schedule's lr is moot
        self.lrs = {n: lr if n in order else 0.0 for n, lr in self.opt.lrs().items()}
        self.opt.step_schedules()
        self.step_count += 1
        self.position = next_position
        self.window.steps += 1
        return good

    def _batches(self, s: int, indices: np.ndarray, next_position: Position) -> list[Any]:
        """This process's micro-batches of step ``s``; queues the next step's read."""
        local = self._reads(indices)
        if self.pending is not None and self.pending[0] == s:
            batches = self.pending[1].result()
        else:
            batches = self._load(s, local)
        self.pending = None
        if self.pool is not None and s + 1 < self.config.steps:
            nxt, _ = self.sampler.take(next_position, self.config.global_batch)
            self.pending = (s + 1, self.pool.submit(self._load, s + 1, self._reads(nxt)))
        return batches

    def _reads(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return local_reads(indices, self.rank, self.world, self.A)

    def _load(self, s: int, micro: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        size = self.config.global_batch // (self.world * self.A)
        return [
            self.task.get_batch(
                idx,
                s,
                batch_generator(self.config.seed, s, (self.rank * self.A + i) * size),
                repeats=rep,
            )
            for i, (idx, rep) in enumerate(micro)
        ]

    def _backward(self, batches: list[Any], s: int):
        """Forward/backward every micro-batch into per-optimizer gradient stashes."""
        stash: dict[str, list[torch.Tensor | None] | None] = {n: None for n in self.opt.optimizers}
        order: list[str] | None = None
        nonfinite = torch.zeros((), device=self.device)  # a tensor: no host sync per micro-batch
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            self.calls = {}
            with contextlib.ExitStack() as stack:
                if not sync:
                    for d in self.ddp:
                        stack.enter_context(d.no_sync())
                if self.fsdp_accumulate:
                    set_gradient_sync(self.fsdp, sync)
                with self.acc.autocast():
                    out = self.task.training_step(self.wrapped, to_device(batch, self.device), s)
                losses, logs = unpack_step_output(out)
                order = self._check_losses(losses, order)
                for oname, loss in losses.items():
                    self.window.add(f"loss/{oname}", loss)
                    nonfinite += (~torch.isfinite(loss.detach())).float()
                    if len(losses) > 1:
                        self._swap_in(oname, stash[oname])
                    self.scaler.scale(loss / self.A).backward()
                    stash[oname] = [p.grad for p in self.opt.params[oname]]
            for k, v in logs.items():
                self.window.add(k, v)
        for p in self.all_params:
            p.grad = None
        return stash, order or [], nonfinite

    def _swap_in(self, oname: str, grads: list[torch.Tensor | None] | None) -> None:
        """Put this optimizer's accumulator back on its params and clear every other grad, so
        grads leaked by earlier losses into any module are dropped before this loss's backward.
        (With a single loss per step the grads simply accumulate: nothing to swap.)"""
        for p in self.all_params:
            p.grad = None
        if grads is not None:
            for p, g in zip(self.opt.params[oname], grads, strict=True):
                p.grad = g

    def _check_losses(self, losses: dict[str, torch.Tensor], order: list[str] | None) -> list[str]:
        if order is not None and list(losses) != order:
            raise TrainingError(
                f"training_step returned losses {list(losses)} after {order}",
                "return the same optimizers in the same order for every micro-batch",
            )
        for oname, loss in losses.items():
            if oname not in self.opt.optimizers:
                raise TrainingError(
                    f"training_step returned a loss for unknown optimizer {oname!r}",
                    f"optimizers are: {', '.join(self.opt.optimizers)}",
                )
            if loss.ndim != 0:
                raise TrainingError(
                    f"loss {oname!r} has shape {tuple(loss.shape)}",
                    "reduce each loss to a scalar (mean over the micro-batch)",
                )
        return list(losses)

    def _update(self, stash: dict, order: list[str], nonfinite: torch.Tensor) -> bool:
        """Average, unscale, clip and check the grads; step the optimizers if all is finite."""
        stepped = [n for n in order if stash[n] is not None]
        if not stepped:
            return self._agree_finite(nonfinite)
        norms = []
        for oname in stepped:
            grads = []
            for p, g in zip(self.opt.params[oname], stash[oname], strict=True):
                # a parameter unused by this micro-batch still joins the reduction
                p.grad = g if g is not None else torch.zeros_like(p)
                grads.append(p.grad)
            if self.world > 1 and oname in self.manual:
                all_reduce_mean(grads, self.world)
            self.scaler.unscale_(self.opt.optimizers[oname])
            if self.config.clip_grad is not None:
                norms.append(
                    torch.nn.utils.clip_grad_norm_(self.opt.params[oname], self.config.clip_grad)
                )
            else:
                norms.append(torch.nn.utils.get_total_norm(grads))
        # one host sync per step: the (process-reduced) loss check and every grad norm
        values = torch.stack([self._reduced(nonfinite), *map(full, norms)]).tolist()
        for oname, v in zip(stepped, values[1:], strict=True):
            self.window.add(f"grad_norm/{oname}", v)
        # grads are identical on every process after the reduction: the same decision everywhere
        ok = values[0] == 0 and all(math.isfinite(v) for v in values[1:])
        if ok:
            for oname in stepped:
                self.scaler.step(self.opt.optimizers[oname])
            self.ema.update(self.model)
        self.overflowed = not ok and values[0] == 0 and scaler_overflow(self.scaler)
        self.scaler.update()  # fp16: backs the scale off after an overflow
        for p in self.all_params:
            p.grad = None
        return ok

    def _reduced(self, nonfinite: torch.Tensor) -> torch.Tensor:
        # all processes must agree: a NaN on one would otherwise desynchronise the updates
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(nonfinite)
        return nonfinite

    def _agree_finite(self, nonfinite: torch.Tensor) -> bool:
        return not bool(self._reduced(nonfinite).item())

    # ------------------------------------------------------------------ log, save, fit

    def log(self) -> dict[str, float]:
        """Write the metrics line of the window that ends now; returns the progress fields."""
        means = mean_over_processes(self.window.means(), self.world)
        sps = self.window.steps / max(time.perf_counter() - self.window.t0, 1e-9)
        record: dict[str, Any] = {"step": self.step_count, "epoch": self.position.epoch}
        record.update({f"lr/{n}": v for n, v in self.lrs.items()})
        record.update(sorted(means.items()))
        record.update(
            {
                "steps/s": sps,
                "samples/s": sps * self.config.global_batch,
                "bad_steps": self.bad_total,
            }
        )
        if self.logger is not None:
            self.logger.log(record)
        self.last_logs = {k: float(v) for k, v in record.items()}
        self.window = Window()
        fields = {k: v for k, v in means.items() if k.startswith("loss/")}
        fields["steps/s"] = sps
        return fields

    def save(self, bar: Any) -> Path | None:
        """Write a checkpoint of the current step if the save policy allows; returns the newest."""
        s = self.step_count
        weights = {name: state_dict_cpu(m) for name, m in self.modules.items()}
        weights["ema"] = state_dict_cpu(self.ema.module)
        bad = [name for name, sd in weights.items() if not ckpt_io.all_finite(sd)]
        recent_bad, self.bad_since_save = self.bad_since_save, 0  # the next window starts now
        if bad or recent_bad:  # identical on every process: all skip or none
            why = (
                f"the {', '.join(bad)} weights hold non-finite values"
                if bad
                else f"{recent_bad} step(s) since the last save point were non-finite"
            )
            bar.log(
                f"step {s}: checkpoint skipped, {why}; the last good one is {self.last_ckpt or 'none yet'}"
            )
            return self.last_ckpt
        rngs = gather_objects(ckpt_io.rng_state(), self.world)
        windows = gather_objects(self.window.state(), self.world)  # the metrics row in progress
        optim = self.opt.state_dict(self.scaler)
        if self.fsdp:  # gathered on every process; only the main one writes
            optim["optimizers"] = {n: full_optim_state(o) for n, o in optim["optimizers"].items()}
        path = ckpt_io.checkpoints_dir(self.run_dir) / ckpt_io.step_dir_name(s)
        if self.main:
            extra_fn = getattr(self.task, "state_extra", None)
            state = {
                "epoch": self.position.epoch,
                "offset": self.position.offset,
                "rng": rngs,
                "config": self.config.to_dict(),
                "extra": extra_fn() if extra_fn else {},
                "ema_updates": self.ema.updates,
                "bad_steps_total": self.bad_total,
                "metrics_window": windows,
                "world_size": self.world,
                "optimizers": list(self.opt.optimizers),
                "torch": torch.__version__,
            }
            path = ckpt_io.save_checkpoint(self.run_dir, s, weights, optim, state)
            self._rotate(bar, path)
            if s < self.config.steps and time.monotonic() - self.last_plot >= CURVES_EVERY_S:
                plot_curves(self.run_dir)  # fit draws the last one
                self.last_plot = time.monotonic()
        self.acc.wait_for_everyone()
        self.last_ckpt = path
        self.saves += 1  # on every process: all of them write or skip together
        return path

    def _rotate(self, bar: Any, path: Path) -> None:
        """Prune to the newest ``keep_last`` checkpoints (main process), keeping those the task
        says other runs use (its optional ``checkpoints_in_use(run_dir)`` hook: a pack run's
        decoders), named in the log the first time rotation keeps them for that reason."""
        keep_last = self.config.keep_last
        if keep_last <= 0:
            return
        hook = getattr(self.task, "checkpoints_in_use", None)
        try:
            used = dict(hook(self.run_dir)) if hook is not None else {}
        except OSError as e:  # another run removed while read: nothing deleted this time
            bar.log(
                f"Warning: step {self.step_count}: no checkpoint rotated, as the runs that use "
                f"them could not be read ({e}); the next checkpoint rotates them"
            )
            return
        rotation = ckpt_io.rotate(self.run_dir, keep_last, keep=path, protect=used)
        new = [p.name for p in rotation.in_use if p.name not in self.said_in_use]
        if not new:
            return
        self.said_in_use.update(new)
        named = "; ".join(f"{n} by {', '.join(used[n])}" for n in new)
        bar.log(
            f"step {self.step_count}: kept beside the newest {keep_last} (--keep-last), since "
            f"other runs or cached latents decode with them: {named}"
        )

    def _check_streak(self, bar: Any) -> None:
        if self.consecutive_bad == 0:
            return
        # steps are counted as the metrics rows and checkpoints count them: step N is the N-th
        bar.log(f"step {self.step_count}: non-finite loss or gradient, update skipped")
        if self.consecutive_bad >= self.config.max_nonfinite_steps:
            raise TrainingError(
                f"{self.consecutive_bad} training steps in a row had a non-finite loss or "
                f"gradient (up to step {self.step_count}); the last good checkpoint is "
                f"{self.last_ckpt}",
                nan_hint(self.config.extra.get("stage"), self.config.precision),
            )

    def _check_saved(self, step_start: int) -> None:
        """Refuse a command that trained but saved no checkpoint: every save point it reached
        came after non-finite steps (the save policy), so what it trained is lost, and a script
        going on (``train … && sample …``) would use no checkpoint, or an older one, unaware."""
        trained = self.step_count - step_start
        if trained <= 0 or self.saves:
            return
        before = (
            f"its newest checkpoint is still {self.last_ckpt.name}, where it resumed"
            if self.last_ckpt is not None
            else "the run has no checkpoint"
        )
        message = (
            f"run {self.run_dir.name} trained {trained} step(s), to step {self.step_count}, "
            f"but saved no checkpoint: each save point had non-finite values ({self.bad_total} "
            f"non-finite step(s) in all; see {self.run_dir / 'log.txt'}); {before}"
        )
        hint = nan_hint(self.config.extra.get("stage"), self.config.precision)
        raise TrainingError(
            message,
            f"{hint}; to train this run again with a changed setting, name it in "
            "--allow-change (e.g. `--lr 1e-4 --allow-change lr`), or train a new --name",
        )

    def _after_step(self, bar: Any) -> None:
        """Streak check, log line, image grid and checkpoint of the step just taken."""
        cfg, s = self.config, self.step_count
        self._check_streak(bar)
        fields = self.log() if s % cfg.log_every == 0 or s == cfg.steps else {}
        bar.advance(1, **fields)
        # every run, however short, ends with at least one picture (unless image_every = 0)
        if cfg.image_every and (s % cfg.image_every == 0 or s == cfg.steps):
            self._images(s)  # every process: the FSDP weights are gathered for it
        if s % cfg.ckpt_every == 0 or s == cfg.steps:
            self.save(bar)
        crash_point(f"train-step-{s}")  # crash tests: killed after step s, between checkpoints

    def _images(self, s: int) -> None:
        """The task's picture of step ``s`` (grid, reconstructions), mirrored to TensorBoard."""
        hook = getattr(self.task, "on_images", None)
        if hook is None or not (self.main or self.fsdp):
            return
        modules, ema = self._plain_modules()
        if not self.main:
            return
        path = hook(modules, ema, s, self.run_dir)
        for m in self.modules.values():
            m.train()
        if self.fsdp:
            for shell in self.shells.values():
                shell.cpu()
        if path is not None and self.logger is not None:
            self.logger.image("images", Path(path), s)

    def _plain_modules(self) -> tuple[dict[str, nn.Module], nn.Module]:
        """The modules and the EMA as plain modules; under FSDP the CPU copies, loaded with the
        gathered weights on the main process (the gather is a collective)."""
        if not self.fsdp:
            return self.modules, self.ema.module
        sources = {**self.modules, "ema": self.ema.module}
        for name, m in sources.items():
            weights = full_state_dict(m) if is_sharded(m) else None
            if self.main:
                shell = self.shells[name]
                if weights is not None:
                    shell.load_state_dict(weights)
                shell.to(self.device).train(m.training)
        ema = self.shells["ema"]
        return {n: s for n, s in self.shells.items() if n != "ema"}, ema

    def fit(self) -> TrainResult:
        """Train until ``config.steps``; returns the summary."""
        self.logger = (
            MetricsLogger(self.run_dir, resume_step=self.step_count) if self.main else None
        )
        if self.logger is not None and self.step_count == 0:
            self.logger.config(self.config.to_dict())
        if self.main:  # pictures of the steps the metrics and events above dropped
            self.messages += remove_images_after(self.run_dir, self.step_count)
        t_start, step_start, in_steps = time.perf_counter(), self.step_count, 0.0
        self.last_plot = time.monotonic()  # checkpoints redraw the curves once a minute at most
        bar_factory = self.progress if self.main else null_progress
        try:
            with bar_factory(
                "train", total=self.config.steps, completed=self.step_count, unit="step"
            ) as bar:
                for msg in self.messages:
                    bar.log(msg)
                warmup = unfinished_warmup(self.config)
                if warmup is not None and self.step_count < self.config.steps:
                    bar.log(warmup)
                while self.step_count < self.config.steps:
                    t_step = time.perf_counter()
                    self.step()
                    in_steps += time.perf_counter() - t_step
                    self._after_step(bar)
                self._check_saved(step_start)
        finally:
            self.close()
            if self.main:  # every run ends with its curves, a failed one too
                plot_curves(self.run_dir)
                release_run(self.run_dir)  # the last write: other processes may train it now
        # wall time of the whole fit, checkpoint writes, image grids and plot_curves included
        # (the log's and the bar's steps/s are rates over recent steps): shown as "wall speed",
        # beside the rate of the training steps alone
        elapsed, done = time.perf_counter() - t_start, self.step_count - step_start
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step_count,
            checkpoint=Path(self.last_ckpt) if self.last_ckpt is not None else None,
            resumed_from=self.resumed_from,
            bad_steps=self.bad_total,
            last_logs=self.last_logs,
            steps_per_s=done / elapsed if elapsed > 0 else 0.0,
            loop_steps_per_s=done / in_steps if in_steps > 0 else 0.0,
        )

    def close(self) -> None:
        """Stop the prefetch thread and close the metrics files."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()


class _DDP(DistributedDataParallel):
    """DDP that also shows the wrapped module's attributes (``model.config``, ``last_layer``).

    Methods are not forwarded: a loss computed through ``model.method(...)`` would bypass DDP's
    forward, and its gradients would silently stay unreduced.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            value = getattr(self.module, name)
            if callable(value) and not isinstance(value, nn.Module | torch.Tensor):
                raise AttributeError(
                    f"{type(self.module).__name__}.{name} is a method; under DDP call the module "
                    "itself (its forward), or use OptimizerSpec(overlap=False)"
                ) from None
            return value


def train(
    task: TrainTask,
    config: TrainConfig,
    progress: ProgressFactory = null_progress,
    lines: Sequence[str] = (),
) -> TrainResult:
    """Train ``task`` as ``config`` says, resuming from the run's newest complete checkpoint;
    ``lines`` (the stage's resume lines) are logged once the engine accepted the resume.

    The run's training lock (``repackctl.run_lock``), taken when the trainer starts, is given up
    when the training ends, however it ends."""
    try:
        return Trainer(task, config, progress, lines).fit()
    finally:
        release_run(config.run_dir)


#: ``settings.resume.STARTED_SOURCES``: the record's map of each value a resume kept as stored
#: (dotted key) to [value, the source the run recorded for it]
STARTED_SOURCES = "started_sources"


def _dotted(values: dict[str, Any], key: str) -> Any:
    """The value at ``key`` (``pack.lr``, ``seed``) of a record's nested values (a sentinel
    where there is none)."""
    head, _, tail = key.partition(".")
    inner = values.get(head) if tail else values
    return inner.get(tail or head, _dotted) if isinstance(inner, dict) else _dotted


def _as_started(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (a resumed run's settings record) without its :data:`STARTED_SOURCES`, each
    value still as the run stored it given the source it was stored with: within the resume
    such a value reads "stored run config", which written into ``config.json`` made a resume
    that changed nothing rewrite it (another sha256, a ``replaced`` history line)."""
    record = dict(record)
    started = record.pop(STARTED_SOURCES) or {}
    values, sources = record.get("values") or {}, record.get("sources")
    if not isinstance(sources, dict):
        return record
    back = {k: s for k, (v, s) in started.items() if _dotted(values, k) == v and k in sources}
    record["sources"] = {k: back.get(k, s) for k, s in sources.items()}
    return record


def _write_config(path: Path, config: dict[str, Any], allowed: list | None = None) -> None:
    """Write ``config.json``; a different config already there goes to the run's history first,
    with the setting changes a resume allowed (``--allow-change``): written here, when the run
    goes on, not when they were asked for (a resume refused later left them in the history).
    A damaged one (not a JSON object; the resume took its checkpoint's config, with a warning)
    goes there as its text (``replaced_unreadable``), so nothing of it is lost."""
    if allowed:
        with open(path.parent / CONFIG_HISTORY, "a") as f:
            f.write(json.dumps({"time": time.time(), "changes": allowed}, default=str) + "\n")
    body = {k: v for k, v in json.loads(json.dumps(config)).items() if k != CONFIG_SHA256}
    doc = body | {CONFIG_SHA256: json_sha256(body, CONFIG_SHA256)}  # checked by settings.resume
    if path.is_file():
        text = path.read_text(errors="replace")
        try:
            old = json.loads(text)
        except ValueError:
            old = None
        if old == doc:
            return
        if not isinstance(old, dict):  # damaged (a resume used its checkpoint's config): kept
            replaced = {"time": time.time(), "replaced_unreadable": text}
        elif {k: v for k, v in old.items() if k != CONFIG_SHA256} != body:  # not only its seal
            replaced = {"time": time.time(), "replaced": old}
        else:
            replaced = None
        if replaced is not None:
            with open(path.parent / CONFIG_HISTORY, "a") as f:
                f.write(json.dumps(replaced) + "\n")
    write_json_atomic(path, doc)
