"""Exponential moving average of the model weights (DiT / REPA / LightningDiT: decay 0.9999).

``ema = decay * ema + (1 - decay) * param`` after every optimizer update. With ``warmup`` the decay
is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the TensorFlow / timm ModelEmaV2 ramp),
so a short run is not dominated by the random init. The average is kept in fp32 whatever the
training precision, and buffers are copied (not averaged). Every process keeps the same copy:
gradients are all-reduced, so the updates are identical.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from repackctl.train.sharding import local


def decay_after(decay: float, warmup: bool, updates: int) -> float:
    """The decay of the update that follows ``updates`` updates: one formula for the EMA itself
    and for what ``runs info`` reports (the configured decay is only a cap during the warm-up)."""
    if not warmup:
        return decay
    n = updates
    return min(decay, (1.0 + n) / (10.0 + n))


class EMA:
    """An fp32 shadow copy of a module, updated in place."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).float().eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """Decay used by the next update."""
        return decay_after(self.decay, self.warmup, self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        d = self.current_decay()
        if getattr(self, "_source", None) is not model:
            self._bind(model)
        # lerp_(p, w) = ema + w * (p - ema) = d * ema + (1 - d) * p
        params = [p.detach().float() for p in self._params] if self._cast else self._params
        torch._foreach_lerp_(self._ema_params, params, 1.0 - d)
        if self._buffers:
            torch._foreach_copy_(self._ema_buffers, self._buffers)
        self.updates += 1

    def _bind(self, model: nn.Module) -> None:
        """Cache both parameter and buffer lists (walking the module tree costs per step)."""
        self._source = model
        # under FSDP both the model and this copy are sharded alike: average the local shards
        self._ema_params = [local(p) for p in self.module.parameters()]
        self._params = [local(p.detach()) for p in model.parameters()]
        self._cast = any(p.dtype != torch.float32 for p in self._params)
        pairs = list(zip(self.module.buffers(), model.buffers(), strict=True))
        self._ema_buffers = [e for e, _ in pairs]
        self._buffers = [b for _, b in pairs]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Same keys as the model's ``state_dict`` (an EMA file loads into a fresh model)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates
