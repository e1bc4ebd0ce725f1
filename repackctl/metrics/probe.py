"""Linear probe: how much class information a representation keeps (the paper's probe table).

A linear classifier (one ``nn.Linear``) on standardised features, trained on one split and scored
(top-1) on another, as in the RePack-then-Refine table (DINOv3 raw 768-d 82.56 %, PCA 32-d
56.13 %, RePack 32-d 42.48 %) and the usual self-supervised linear-evaluation protocol
(e.g. DINO, Caron et al. 2021), without augmentation because the features are cached.

Recipe, fixed so that two representations are compared under the same rules:
- standardise with the training split's per-dimension mean/std (float64, then float32);
- AdamW (lr 1e-2 by default, cosine decay) on cross-entropy, full batch or mini-batches, seeded;
- weight decay chosen from a small grid by top-1 on a held-out 10 % of the training split
  (a seeded random subset), then the classifier is retrained on the whole
  training split with that weight decay and scored once on the evaluation split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repackctl.eager_adamw import EagerAdamW
from repackctl.errors import ConfigError, DataError

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class ProbeResult:
    """Outcome of one linear probe."""

    top1: float  # fraction in [0, 1] on the evaluation split
    num_params: int  # weights + biases of the classifier
    dims: int
    num_classes: int
    weight_decay: float  # chosen on the held-out part
    val_top1: float  # held-out top-1 of the chosen weight decay
    n_train: int
    n_eval: int
    epochs: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(x)).to(dtype)


def _train_linear(
    x: torch.Tensor,  # (N, D) standardised
    y: torch.Tensor,  # (N,)
    num_classes: int,
    weight_decay: float,
    *,
    epochs: int,
    lr: float,
    batch_size: int | None,
    seed: int,
    device: torch.device,
) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # nn.Linear's init draws from the global generator
    model = nn.Linear(x.shape[1], num_classes).to(device)
    torch.random.set_rng_state(torch_state)
    opt = EagerAdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    x, y = x.to(device), y.to(device)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device) if bs < n else None
        for s in range(steps_per_epoch):
            idx = order[s * bs : (s + 1) * bs] if order is not None else slice(None)
            loss = F.cross_entropy(model(x[idx]), y[idx])  # logits (b, K)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def _top1(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    correct = 0
    for start in range(0, x.shape[0], 65536):
        logits = model(x[start : start + 65536].to(device))  # (b, K)
        correct += int((logits.argmax(dim=1).cpu() == y[start : start + 65536]).sum())
    return correct / max(x.shape[0], 1)


def linear_probe(
    train_features: Any,
    train_labels: Any,
    eval_features: Any,
    eval_labels: Any,
    *,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Train a linear classifier on (N, D) train features and report top-1 on the eval split.

    Features may be numpy arrays or tensors of any float dtype (e.g. cached float16); tokens
    (N, T, C) must be pooled by the caller. ``batch_size=None`` trains full-batch.
    """
    xtr, xev = _as_tensor(train_features, torch.float64), _as_tensor(eval_features, torch.float64)
    ytr, yev = _as_tensor(train_labels, torch.long), _as_tensor(eval_labels, torch.long)
    if xtr.ndim != 2 or xev.ndim != 2 or xtr.shape[1] != xev.shape[1]:
        raise DataError(
            f"probe features must be (N, D) with the same D, got {tuple(xtr.shape)} and "
            f"{tuple(xev.shape)}",
            hint="pool token features (N, T, C) to (N, C) first, e.g. mean over T",
        )
    if ytr.shape != (xtr.shape[0],) or yev.shape != (xev.shape[0],):
        raise DataError("there must be one label per feature row")
    if (ytr < 0).any() or (yev < 0).any():
        raise DataError("the probe needs labelled data (labels ≥ 0)", hint="use a labelled split")
    if not 0.0 < val_fraction < 1.0 or not weight_decays:
        raise ConfigError("val_fraction must be in (0, 1) and weight_decays non-empty")
    k = int(num_classes) if num_classes is not None else int(max(ytr.max(), yev.max())) + 1
    device = torch.device(device)

    # Standardise with training statistics only (the eval split must not leak into the probe).
    mean = xtr.mean(dim=0)
    std = xtr.std(dim=0).clamp_min(1e-8)
    xtr = ((xtr - mean) / std).float()  # (N, D)
    xev = ((xev - mean) / std).float()  # (M, D)

    # Choose the weight decay on a held-out part of the training split.
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * xtr.shape[0])))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    if fit_idx.numel() == 0:
        raise DataError(f"{xtr.shape[0]} training samples are too few to hold some out")
    opts = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    scores = []
    for wd in weight_decays:
        m = _train_linear(xtr[fit_idx], ytr[fit_idx], k, float(wd), **opts)
        scores.append(_top1(m, xtr[val_idx], ytr[val_idx], device))
    best = int(np.argmax(scores))  # first best: ties go to the smaller weight decay in the grid

    model = _train_linear(xtr, ytr, k, float(weight_decays[best]), **opts)
    return ProbeResult(
        top1=_top1(model, xev, yev, device),
        num_params=sum(p.numel() for p in model.parameters()),
        dims=xtr.shape[1],
        num_classes=k,
        weight_decay=float(weight_decays[best]),
        val_top1=scores[best],
        n_train=xtr.shape[0],
        n_eval=xev.shape[0],
        epochs=epochs,
        seed=seed,
    )


def format_probe_table(rows: Sequence[Mapping[str, Any] | tuple[str, ProbeResult]]) -> str:
    """Markdown table in the paper's shape: Representation | dims | #params | top-1 %.

    Each row is ``(name, ProbeResult)`` or a mapping with ``name``, ``dims``, ``num_params``
    (or ``params``) and ``top1`` (a fraction in [0, 1]).
    """
    lines = ["| Representation | dims | #params | top-1 % |", "|---|---:|---:|---:|"]
    for row in rows:
        if isinstance(row, tuple):
            name, res = row
            d = {"name": name, **res.to_dict()}
        else:
            d = dict(row)
        params = d.get("num_params", d.get("params"))
        try:
            cells = (str(d["name"]), int(d["dims"]), int(params), 100.0 * float(d["top1"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"probe table row {row!r} lacks name/dims/num_params/top1") from e
        lines.append(f"| {cells[0]} | {cells[1]} | {cells[2]:,} | {cells[3]:.2f} |")
    return "\n".join(lines)
