"""Precision, math backends and compilation of a training run.

* fp32 weights and optimizer state always; ``bf16`` / ``fp16`` mean autocast (accelerate's
  ``mixed_precision``), with a ``GradScaler`` only for fp16.
* On CUDA, TF32 matmuls/convolutions are on (``set_float32_matmul_precision("high")``) unless
  the run's ``tf32`` is False: then PyTorch's defaults hold (strict fp32 matmuls, TF32 cuDNN
  convolutions), as in the official RePack stage 2, which sets no TF32 flag. The flash /
  memory-efficient / cuDNN SDPA kernels are allowed either way; nothing changes on CPU.
* ``compile`` compiles each transformer/residual block on its own (regional compilation: the
  blocks share one compiled graph, so compile time does not grow with depth) instead of the whole
  model; ``state_dict`` keys stay those of the plain module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from repackctl.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

_ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(precision: str, cpu: bool) -> Accelerator:
    """An ``Accelerator`` with repackctl's precision (already resolved against the launcher)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = _ACCELERATE_NAMES[precision]
    try:
        acc = Accelerator(cpu=cpu, mixed_precision=mixed)
    except ValueError:
        # accelerate keeps one global state per process; a second run in the same process with
        # another precision must reset it (the process group stays)
        AcceleratorState._reset_state()
        acc = Accelerator(cpu=cpu, mixed_precision=mixed)
    if precision == "fp16" and acc.device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA GPU", "use --precision bf16 or fp32")
    return acc


def enable_fast_math(device: torch.device, tf32: bool = True) -> None:
    """TF32 (if ``tf32``) and the fused SDPA backends on CUDA (Ampere and newer); a no-op
    elsewhere."""
    if device.type != "cuda":
        return
    set_tf32(tf32)
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(True)


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls and cuDNN convolutions on, or PyTorch's defaults (strict fp32 matmuls,
    ``cudnn.allow_tf32`` True). Set both ways, not only switched on: the flags are global, so an
    earlier run in the same process must not leave TF32 on for a run that asked for it off."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, and TF32 convolutions when on


def compile_blocks(model: nn.Module) -> int:
    """Compile every block of ``model`` in place; returns how many were compiled.

    Blocks are the children of ``ModuleList``s named ``blocks`` (DiT); a model without them is
    compiled as a whole. ``nn.Module.compile`` keeps parameters and ``state_dict`` keys.
    """
    count = 0
    for name, child in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(child, nn.ModuleList):
            for block in child:
                block.compile()
                count += 1
    if count == 0:
        model.compile()
        count = 1
    return count
