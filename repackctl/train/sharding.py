"""FSDP2 (``fully_shard``) for the training engine: shard modules, gather and re-shard state.

With ``parallel = "fsdp"`` and more than one process, every trainable module is sharded with
``torch.distributed.fsdp.fully_shard``: each child of a ``blocks`` ``ModuleList`` (the DiT
blocks; the MMDiT's ``joint_blocks``) is its own unit, then the module itself. The EMA copy of ``"model"`` is sharded the same way, so
its update runs on the local shards without communication.

Checkpoints keep the single-file format of DDP runs: weights and optimizer state are gathered into
full tensors on save (``full_state_dict``, ``full_optim_state``; collectives, so every process
calls them), and a resumed run loads the full weights before sharding and cuts the full optimizer
state into its own shards (``shard_optim_state``). A run trained with FSDP therefore resumes with
DDP or on one process, and the other way round.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn


def _is_dtensor(t: object) -> bool:
    """``isinstance(t, DTensor)`` without importing ``torch.distributed.tensor`` (0.8 s, every
    process) when no DTensor can exist yet: a sharded module imports it first."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def shard_module(module: nn.Module) -> nn.Module:
    """Shard ``module`` in place: each block of a ModuleList named ``blocks`` or ``*_blocks``
    (the MMDiT's ``joint_blocks``: as one unit with the module, every process gathered all its
    weights at once, so text-to-image FSDP saved no memory), then the whole module."""
    from torch.distributed.fsdp import fully_shard

    for name, child in module.named_modules():
        last = name.split(".")[-1]
        if (last == "blocks" or last.endswith("_blocks")) and isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(module)
    return module


def is_sharded(module: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in module.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a sharded DTensor: every process must call it)."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with full tensors on the CPU (a collective when sharded)."""
    return {k: full(v).detach().cpu() for k, v in module.state_dict().items()}


def full_optim_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict`` with every DTensor gathered to a full CPU tensor."""
    out = dict(state)
    out["state"] = {
        i: {k: full(v).cpu() if _is_dtensor(v) else v for k, v in s.items()}
        for i, s in state["state"].items()
    }
    return out


def shard_optim_state(state: dict[str, Any], params: list[nn.Parameter]) -> dict[str, Any]:
    """Cut a full optimizer ``state_dict`` into the shards of ``params`` (same order).

    Each process keeps its own slice of the full tensor it read: no communication.
    """
    from torch.distributed.tensor import distribute_tensor

    out = dict(state)
    shards: dict[Any, dict[str, Any]] = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        shards[i] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            if _is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v
            for k, v in s.items()
        }
    out["state"] = shards
    return out


def set_gradient_sync(modules: list[nn.Module], sync: bool) -> None:
    """FSDP's ``no_sync``: keep unsharded gradients locally until the last micro-batch."""
    for m in modules:
        m.set_requires_gradient_sync(sync)  # type: ignore[operator]
