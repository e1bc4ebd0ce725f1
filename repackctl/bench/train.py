"""Training-step benchmark: the step of `repackctl train dit`, its MFU and the engine's overhead.

What is timed is ``Trainer.step()`` of the same ``DiTTask`` + ``Trainer`` that ``train dit``
builds from the ``train`` settings (logit-normal t, velocity + cosine loss, REPA projector and
alignment loss, per-sample generators, gradient norm, non-finite guard, EMA, lr schedule); only
the data source differs: fixed random latents and encoder tokens in memory (``SyntheticLatents``)
instead of a cache entry. The reported parameters say what was really on: compile (regional, per
block), precision, REPA.

With ``--model`` a text-conditioned id (``mmdit-tiny``, ``mmdit-s-2`` …) the step is that of
``repackctl train t2i`` instead: the same ``T2ITask`` (``[t2i]`` settings: caption dropout, REPA
depth 8/24), fed by ``SyntheticCaptionedLatents``, i.e. pre-computed text tokens, mask and
pooled vectors as ``repackctl captions`` caches them. The text encoder never runs in the step.

Rows:
* ``train``: ``Trainer.step()`` plus the per-step bookkeeping of ``fit`` (log window, progress);
  FLOPs of one step from ``torch.utils.flop_counter.FlopCounterMode``; MFU = achieved FLOP/s ÷
  the peak of a large matmul measured in the same run and dtype.
* ``bare step``: the same task, modules, batch source and AdamW without the engine (no grad
  norm, EMA, guard, schedule or log). ``engine overhead`` = train time ÷ bare time − 1 is in the
  JSON (``overhead``) and in the notes; reproduce it with
  ``repackctl benchmark train --size tiny --repeats 20``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repackctl.bench.common import BenchContext, Row, measure, scratch_space, timed_row
from repackctl.data.cached import CachedRows

if TYPE_CHECKING:
    from repackctl.dit.task import DiTTask
    from repackctl.train import Trainer

#: model id, latent channels, latent side, batch, peak-matmul side, REPA token width, and the
#: cached caption features of a text-conditioned model: tokens per caption × width (tiny: the
#: mmdit-tiny default; small: MiniLM, 384; paper: CLIP-L's 77 × 768)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(model="tiny", channels=4, side=8, batch=4, matmul=256, token_dim=32,
                 text_len=8, text_dim=32),
    "small": dict(model="lightningdit-s-2", channels=32, side=16, batch=8, matmul=1024,
                  token_dim=768, text_len=32, text_dim=384),
    "paper": dict(model="lightningdit-xl-1", channels=32, side=16, batch=32, matmul=8192,
                  token_dim=768, text_len=77, text_dim=768),
}  # fmt: skip
NUM_CLASSES = 10  # labels of the synthetic class-conditional data


def is_text_model(model_id: str) -> bool:
    """Whether the registered ``model_id`` is text-conditioned (its factory takes text_dim)."""
    from repackctl.registry import registry

    factory = registry("models").get(model_id)
    return "text_dim" in inspect.signature(factory).parameters


def build_model(p: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The model of shape ``p`` (any registered id, DiT or MMDiT) with its default options."""
    from repackctl.dit.t2i_task import build_mmdit
    from repackctl.dit.task import build_model as build_dit

    size = dict(in_channels=p["channels"], input_size=p["side"])
    if is_text_model(p["model"]):
        return build_mmdit(p["model"], text_dim=p["text_dim"], **size).to(device)
    return build_dit(p["model"], num_classes=NUM_CLASSES, **size).to(device)


class SyntheticLatents(CachedRows):
    """The part of ``LatentData`` a ``DiTTask`` trains from, over fixed random arrays.

    The same dataset class as the cache's (``data.cached.CachedRows``, in memory), over one
    stored flip slot: the per-sample flips are drawn as in training, the rows do not change.
    """

    def __init__(
        self, p: dict[str, Any], tokens: int, n: int = 256, num_classes: int = NUM_CLASSES
    ) -> None:
        rng = np.random.default_rng(0)
        self.shape = (p["channels"], p["side"], p["side"])
        self.num_classes = num_classes
        self.token_shape = (tokens, p["token_dim"])
        self.sampling = "mean"
        x = rng.standard_normal((n, 1, *self.shape), dtype=np.float32)  # (N, 1, d, h, w)
        self.y = rng.integers(0, max(1, num_classes), n)  # (N,) (all 0 without classes)
        tok = rng.standard_normal((n, 1, *self.token_shape), dtype=np.float32)  # (N, 1, T, C)
        super().__init__({"x": x, "tokens": tok}, np.arange(n), chunk=1, in_memory=True)

    def read(self, rows: np.ndarray, rngs: list, with_tokens: bool) -> dict[str, torch.Tensor]:
        flips = np.array([int(r.random() < 0.5) for r in rngs], dtype=np.int64)  # (B,)
        slot = np.zeros(len(rows), dtype=np.int64)  # the one stored slot
        out = {
            "x": torch.from_numpy(self.take_flip("x", rows, slot)),  # (B, d, h, w)
            "y": torch.from_numpy(self.y[rows]),  # (B,)
            "flip": torch.from_numpy(flips),  # (B,)
        }
        if with_tokens:
            out["tokens"] = torch.from_numpy(self.take_flip("tokens", rows, slot))  # (B, T, C)
        return out


class SyntheticCaptionedLatents(SyntheticLatents):
    """The part of ``CaptionedLatentData`` a ``T2ITask`` trains from: K cached captions per
    image (tokens, padding mask, pooled vector, float16 as in the cache) over fixed arrays."""

    def __init__(self, p: dict[str, Any], tokens: int, n: int = 256, captions: int = 2) -> None:
        super().__init__(p, tokens, n, num_classes=0)
        rng = np.random.default_rng(1)
        k, length, width = captions, p["text_len"], p["text_dim"]
        self.max_captions, self.text_len, self.text_dim = k, length, width
        self.text_tokens = rng.standard_normal((n, k, length, width)).astype(np.float16)
        real = rng.integers(1, length + 1, (n, k))  # (N, K) real tokens of each caption
        self.text_mask = np.arange(length) < real[..., None]  # (N, K, L)
        self.text_pooled = rng.standard_normal((n, k, width)).astype(np.float16)  # (N, K, C)
        self.null = {
            "tokens": rng.standard_normal((length, width)).astype(np.float16),
            "mask": np.arange(length) < 2,  # an empty caption: two special tokens
            "pooled": rng.standard_normal(width).astype(np.float16),
        }

    def read(self, rows: np.ndarray, rngs: list, with_tokens: bool) -> dict[str, torch.Tensor]:
        """``SyntheticLatents.read`` plus one caption per sample, drawn from its generator."""
        out = super().read(rows, rngs, with_tokens)
        pick = np.array([int(r.integers(self.max_captions)) for r in rngs])  # (B,)
        at = (np.asarray(rows), pick)
        out["text_tokens"] = torch.from_numpy(self.text_tokens[at].astype(np.float32))
        out["text_mask"] = torch.from_numpy(self.text_mask[at])  # (B, L)
        out["text_pooled"] = torch.from_numpy(self.text_pooled[at].astype(np.float32))
        out["caption"] = torch.from_numpy(pick)
        return out


def build_trainer(
    p: dict[str, Any],
    device: torch.device,
    workdir: Path,
    *,
    compile_: bool = False,
    precision: str | None = None,
    repa: bool = True,
) -> tuple[Trainer, DiTTask]:
    """The ``train dit`` task and Trainer of the default settings for the shape ``p``.

    ``p`` holds ``model`` (a registered id), ``channels``, ``side``, ``batch``, ``token_dim``
    (and ``text_len``/``text_dim`` for a text-conditioned model, whose task is then the
    ``train t2i`` one, with its ``[t2i]`` settings); ``precision`` None means bf16 on CUDA,
    fp32 elsewhere.
    """
    from repackctl.dit.t2i_task import T2ITask, dit_settings_of
    from repackctl.dit.task import DiTTask, build_spec
    from repackctl.settings import Settings
    from repackctl.train import TrainConfig, Trainer

    cuda = device.type == "cuda"
    text = is_text_model(p["model"])
    settings = Settings(
        runs=str(workdir), device=str(device), precision=precision or ("bf16" if cuda else "fp32")
    )
    section = settings.t2i if text else settings.dit
    section.compile = compile_
    section.global_batch = p["batch"]
    if not repa:
        section.repa_weight = 0.0
    spec = build_spec(dit_settings_of(settings) if text else settings, p["model"])
    probe = build_model(p, torch.device("cpu"))
    tokens = probe.config.num_tokens
    if text:
        data: SyntheticLatents = SyntheticCaptionedLatents(p, tokens=tokens)
        task = T2ITask(data, spec, section.caption_dropout)  # type: ignore[arg-type]
    else:
        data = SyntheticLatents(p, tokens=tokens)
        task = DiTTask(data, spec)  # type: ignore[arg-type]
    config = TrainConfig.from_settings(
        settings,
        section,
        workdir / f"bench-{p['model']}",
        sources={"precision": "benchmark"},
        steps=10**9,  # never reached: the benchmark calls step() itself
        ckpt_every=10**9,
        image_every=0,
        cpu=not cuda,
        # the read-ahead thread overlaps data reads with GPU work; on a CPU it competes with
        # the step for the same cores (about +10 % at the tiny size on one thread)
        prefetch=cuda,
    )
    return Trainer(task, config), task


def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure steps/s, samples/s, MFU and the engine's overhead; returns (rows, params, notes)."""
    from torch.utils.flop_counter import FlopCounterMode

    from repackctl.dit.t2i_task import T2ITask
    from repackctl.progress import null_progress

    with scratch_space(ctx.workdir, "train") as tmp:
        p = SHAPES[ctx.size] | ({"model": ctx.model} if ctx.model else {})
        trainer, task = build_trainer(p, ctx.device, Path(tmp), compile_=ctx.compile and ctx.cuda)
        b, text = p["batch"], isinstance(task, T2ITask)
        bar = null_progress("train", total=None).__enter__()

        def step() -> None:
            trainer.step()
            trainer._after_step(bar)

        step()  # warm-up outside the FLOP count (compilation, allocator)
        with FlopCounterMode(display=False) as counter:
            trainer.step()
        step_flops = float(counter.get_total_flops())
        row = timed_row("train", f"{p['model']} Trainer.step (batch {b})", step, ctx,
                        items=b, unit="sample")  # fmt: skip
        bare_fn = _bare_step(trainer, task)
        bare = measure(bare_fn, ctx)
        trainer.close()
    amp = torch.bfloat16 if trainer.config.precision == "bf16" else torch.float32
    peak, peak_row = matmul_peak(ctx, p["matmul"], amp)
    peak_row.ratio = 1.0
    achieved = step_flops / row.median_s
    overhead = row.median_s / bare["median_s"] - 1.0
    row.extra.update(
        steps_per_s=1.0 / row.median_s,
        step_tflop=step_flops / 1e12,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak / 1e12,
        mfu=achieved / peak,
        overhead=overhead,
    )
    row.ratio = achieved / peak
    row.note = (
        f"MFU {100 * achieved / peak:.1f}% ({achieved / 1e12:.3f} of {peak / 1e12:.3f} TFLOP/s)"
    )
    bare_row = Row("train", "bare step (task + AdamW, no engine)", bare["median_s"],
                   per_s=b / bare["median_s"], unit="sample",
                   note=f"engine overhead {100 * overhead:+.1f}%")  # fmt: skip
    notes = [
        "ratio column of the train row = MFU (achieved model FLOP/s ÷ measured matmul peak)",
        f"engine overhead over the bare step: {100 * overhead:+.1f}% (train ÷ bare − 1)",
    ]
    params = {**p, "params_m": round(task.num_params / 1e6, 2),
              "precision": trainer.config.precision, "compile": trainer.compiled > 0,
              "compiled_blocks": trainer.compiled, "repa": task.repa_on,
              "repa_weight": task.spec.repa_weight, "time_dist": task.spec.time.kind,
              "tokens": task.data.token_shape[0],
              "prefetch": trainer.config.prefetch, "cond": "text" if text else "class",
              "task": type(task).__name__}  # fmt: skip
    if not text:
        params = {k: v for k, v in params.items() if k not in ("text_len", "text_dim")}
    return [peak_row, row, bare_row], params, notes


def _bare_step(trainer: Any, task: Any):
    """The task's loss, backward and AdamW on the trainer's modules, with nothing else."""
    from repackctl.train.trainer import batch_generator, make_adamw, to_device

    params = [p for m in trainer.modules.values() for p in m.parameters()]
    opt = make_adamw(params, 1e-6, (0.9, 0.999), 0.01)  # the engine's AdamW
    indices = np.arange(trainer.config.global_batch)
    state = {"s": 0}

    def step() -> None:
        s = state["s"]
        batch = task.get_batch(indices, s, batch_generator(0, s, 0))
        with trainer.acc.autocast():
            out = task.training_step(trainer.modules, to_device(batch, trainer.device), s)
        out.losses["model"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["s"] = s + 1

    return step


def matmul_peak(ctx: BenchContext, n: int, dtype: torch.dtype) -> tuple[float, Row]:
    """Measured FLOP/s of an (n×n)·(n×n) matmul in ``dtype`` on the benchmark device."""
    a = torch.randn(n, n, device=ctx.device).to(dtype)
    b = torch.randn(n, n, device=ctx.device).to(dtype)
    row = timed_row("peak", f"matmul {n}² {str(dtype).replace('torch.', '')}", lambda: a @ b,
                    ctx, items=2 * n**3 / 1e12, unit="TFLOP", baseline=True)  # fmt: skip
    return 2 * n**3 / row.median_s, row
