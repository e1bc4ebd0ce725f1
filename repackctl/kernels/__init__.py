"""Fused Triton kernels for the hot non-matmul ops of a DiT / REPA training step.

The matmuls and attention of a LightningDiT block already run in cuBLAS / SDPA kernels; what is
left are chains of small element-wise and row-wise ops that eager PyTorch runs as one kernel
each, every one reading and writing the whole activation (memory-bound). Fused here, each chain
reads its inputs once and writes its outputs once, forward and backward:

* :func:`rmsnorm_modulate` — ``modulate(RMSNorm(x), shift, scale)``
  (``repackctl/models/layers.py``; LightningDiT, Yao et al. 2025; adaLN of DiT, Peebles & Xie
  2023): ~7 eager kernels → 1.
* :func:`rope_2d` — EVA-02 2-D rotary embedding on q or k (``Rope2d``; Fang et al. 2023):
  the float cast, pair rotation, two products, sum and cast back → 1.
* :func:`swiglu_gate` — ``silu(a) * b`` on the ``w12`` output (``SwiGLU``; Shazeer 2020):
  chunk + silu + product → 1, no copies of the halves.
* :func:`cosine_loss` — ``1 − cos`` per token over channels for REPA
  (``repackctl/models/repa.py``, Yu et al. 2025) and the velocity direction term
  (``repackctl/transport/loss.py``).

Each op takes ``backend="auto" | "triton" | "eager"``; the eager path is
``repackctl.kernels.reference`` (the model's own code, operation for operation). ``"auto"``
picks Triton for CUDA tensors when Triton imports. ``import repackctl.kernels`` never needs
Triton; the kernel modules are imported on first Triton use.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from repackctl.errors import ConfigError
from repackctl.kernels import reference
from repackctl.kernels._triton import interpret_enabled, triton_module

__all__ = [
    "BACKENDS",
    "available",
    "fused",
    "select",
    "selected",
    "cosine_loss",
    "resolve_backend",
    "rmsnorm_modulate",
    "rope_2d",
    "swiglu_gate",
]

BACKENDS = ("auto", "triton", "eager")
Backend = Literal["triton", "eager"]


_selected = "eager"  # what the models use; `--kernels` sets it for a run (select)


def select(name: str) -> None:
    """Choose the backend the models use for every fused op: auto, triton or eager."""
    global _selected
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown kernel backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}"
        )
    _selected = name


def selected() -> str:
    """The backend chosen with :func:`select` (``eager`` unless a run chose another)."""
    return _selected


def fused(device: torch.device) -> bool:
    """Whether the models should call the fused ops for tensors on ``device``."""
    return _selected != "eager" and resolve_backend(_selected, device) == "triton"


def available() -> bool:
    """Whether Triton imports (kernels can then run on CUDA, or on CPU under the interpreter)."""
    return triton_module() is not None


def resolve_backend(name: str, device: torch.device | str) -> Backend:
    """``"auto"`` → ``"triton"`` on CUDA with Triton installed, else ``"eager"``.

    ``"triton"`` is checked: it needs Triton, and a CUDA device unless ``TRITON_INTERPRET=1``
    (Triton's CPU interpreter, for tests). Raises ``ConfigError`` otherwise.
    """
    device = torch.device(device)
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown kernel backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}"
        )
    if name == "eager":
        return "eager"
    if name == "auto":
        return "triton" if device.type == "cuda" and available() else "eager"
    if not available():
        raise ConfigError(
            "kernel backend 'triton' requested but triton is not installed",
            hint="pip install triton (Linux + CUDA), or use backend 'auto' / 'eager'",
        )
    if device.type != "cuda" and not interpret_enabled():
        raise ConfigError(
            f"kernel backend 'triton' needs a CUDA tensor, got one on {device.type}",
            hint="use backend 'auto' / 'eager' on the CPU (or set TRITON_INTERPRET=1 to test)",
        )
    return "triton"


def rmsnorm_modulate(
    x: Tensor,
    weight: Tensor | None,
    shift: Tensor | None,
    scale: Tensor,
    *,
    eps: float = reference.RMS_EPS,
    backend: str = "auto",
) -> Tensor:
    """``RMSNorm(x)·weight·(1 + scale) + shift``.

    x (B, T, D); weight (D,) or None; shift (B, D) or None (no-shift adaLN); scale (B, D).
    """
    if resolve_backend(backend, x.device) == "eager":
        return reference.rmsnorm_modulate(x, weight, shift, scale, eps)
    from repackctl.kernels.norm_modulate import rmsnorm_modulate_triton

    return rmsnorm_modulate_triton(x, weight, shift, scale, eps)


def rope_2d(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor, *, backend: str = "auto") -> Tensor:
    """2-D RoPE of q or k (B, H, T, Dh) with ``Rope2d``'s (T, Dh) cos/sin tables (no grad)."""
    if resolve_backend(backend, x.device) == "eager":
        return reference.rope_2d(x, freqs_cos, freqs_sin)
    from repackctl.kernels.rope import rope_2d_triton

    return rope_2d_triton(x, freqs_cos, freqs_sin)


def swiglu_gate(x12: Tensor, *, backend: str = "auto") -> Tensor:
    """``silu(a) * b`` of the ``w12`` output x12 = [a | b] (..., 2F) → (..., F)."""
    if resolve_backend(backend, x12.device) == "eager":
        return reference.swiglu_gate(x12)
    from repackctl.kernels.swiglu import swiglu_gate_triton

    return swiglu_gate_triton(x12)


def cosine_loss(
    pred: Tensor,
    target: Tensor,
    *,
    dim: int = -1,
    norm_floor: float | None = None,
    eps: float | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """``1 − cos(pred, target)`` over channel ``dim`` per token, reduced (float32).

    ``norm_floor=None`` is ``F.cosine_similarity``'s rule (REPA); ``norm_floor=0.01`` with the
    default eps is ``velocity_loss``'s. See :func:`repackctl.kernels.reference.cosine_loss`.
    """
    if pred.shape != target.shape:
        raise ConfigError(
            f"cosine_loss shapes {tuple(pred.shape)} and {tuple(target.shape)} differ",
            hint="pass prediction and target of the same shape",
        )
    if reduction not in reference.REDUCTIONS:
        raise ConfigError(
            f"unknown reduction {reduction!r}", hint=f"use one of {', '.join(reference.REDUCTIONS)}"
        )
    kw = {"dim": dim, "norm_floor": norm_floor, "eps": eps, "reduction": reduction}
    if resolve_backend(backend, pred.device) == "eager":
        return reference.cosine_loss(pred, target, **kw)
    from repackctl.kernels.cosine import cosine_loss_triton

    return cosine_loss_triton(pred, target, **kw)
