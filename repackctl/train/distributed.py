"""Collectives of the training engine: identical initial weights, gradient and log averaging.

Gradients of modules forwarded once per micro-batch are averaged by DDP (bucketed all-reduce
that overlaps the backward pass; see ``trainer.py``). A module called several times per backward
(a GAN discriminator scores real and fake images, and the generator's loss flows through it) is
reduced here instead, once per step, after the last micro-batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def broadcast_modules(modules: dict[str, nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    with torch.no_grad():
        for m in modules.values():
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, src=0)


def all_reduce_mean(tensors: list[torch.Tensor], world: int, bucket: int = 2**25) -> None:
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


def mean_over_processes(means: dict[str, float], world: int) -> dict[str, float]:
    """Average per-process log means (keys missing on a process are averaged over the others)."""
    if world == 1:
        return means
    gathered: list[dict[str, float]] = [{}] * world
    dist.all_gather_object(gathered, means)
    keys = {k for g in gathered for k in g}
    return {
        k: sum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g) for k in keys
    }


def gather_objects(obj: object, world: int) -> list[object]:
    """``obj`` of every process, in rank order."""
    if world == 1:
        return [obj]
    out: list[object] = [None] * world
    dist.all_gather_object(out, obj)
    return out
