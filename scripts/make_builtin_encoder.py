"""Train the *previous*, supervised built-in encoder (kept for comparison and for its helpers).

Since issue #13 the shipped ``repackctl/encoders/weights/builtin.safetensors`` is the
self-supervised encoder of ``scripts/ssl_builtin_encoder.py`` (no label used). This script makes
the supervised one that was shipped before (sha256 70b5e3ef…; its scores are kept in
``builtin.json`` under ``previous_encoder``); pass its output to ``--weights`` to compare.

The built-in encoder (``repackctl.encoders.builtin``) stands in for DINOv3 on a laptop, so its
patch tokens must carry what DINO tokens carry in the paper: the image's semantics in every
token, and enough spatial detail for a pixel decoder. Training is supervised on the built-in
dataset at 64 px with three heads that are thrown away afterwards:

- a class head on the CLS token (cross-entropy);
- the *same* linear class head on every patch token (cross-entropy, weight ``--tok-weight``),
  so that each token, and their mean, is linearly separable by class (a linear-probe property);
- a linear pixel head on every patch token that reconstructs the token's own 8×8×3 patch
  (MSE, weight ``--pix-weight``), so that tokens keep colour and local layout.

Augmentation: random horizontal and vertical flips (the classes are rotation-invariant) and a
random translation of up to 4 px (reflect padding, then a 64 px crop). Images are generated on
the fly from ``BuiltinSource(split="train", seed=1)``: the encoder never sees the default dataset
(seed 0), so the probes below, fitted on seed-0 train and scored on seed-0 val, are held out.

Reproduce the previous file (fixed seeds, one CPU thread; the defaults are its settings)::

    python scripts/make_builtin_encoder.py --out builtin-supervised.safetensors

Settings: 1600 steps x batch 64 (102,400 freshly generated images), AdamW lr 2e-3 (100 warm-up
steps, cosine to 0), weight decay 0.05 on matrices, betas (0.9, 0.999), gradient clip 1.0,
loss = CE(cls) + 0.5 CE(tokens) + 1.0 MSE(pixels); weights stored as float16 (0.99 MB).
Its run (torch 2.14.1, 2-core CPU shared with other jobs, load ~7): 1231 s of training at
~83 img/s (about 190 img/s, i.e. ~9 minutes, on a quiet core). Held-out scores, also in
``builtin.json`` (``previous_encoder``): linear probe on mean-pooled patch tokens 95.6 % top-1 on 500 val images
(chance 10 %; fitted on 2000 train images), per-token linear regression of the patch's mean
colour R^2 = 0.974.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from repackctl.data.builtin import GENERATOR_VERSION, BuiltinSource
from repackctl.encoders.builtin import ARCH, PATCH, BuiltinViT, builtin_encoder, save_weights
from repackctl.errors import ConfigError, check_at_least, script_main
from repackctl.files import refuse_foreign_output, sha256_file, write_text_atomic

RESOLUTION = 64
NUM_CLASSES = 10


def render_batch(source: BuiltinSource, indices: range, resolution: int) -> torch.Tensor:
    """Images ``indices`` of ``source`` as float (B, 3, R, R) in [-1, 1]."""
    arr = np.stack([source.load(i, resolution) for i in indices])  # (B, R, R, 3) uint8
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # (B, 3, R, R)
    return x / 127.5 - 1.0


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Random flips (both axes) and a random translation of up to ``shift`` px (reflect pad)."""
    b, _, r, _ = x.shape
    hflip = torch.rand(b, generator=gen) < 0.5
    vflip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(hflip[:, None, None, None], x.flip(-1), x)  # (B, 3, R, R)
    x = torch.where(vflip[:, None, None, None], x.flip(-2), x)  # (B, 3, R, R)
    padded = F.pad(x, (shift,) * 4, mode="reflect")  # (B, 3, R+2s, R+2s)
    offs = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, oy : oy + r, ox : ox + r] for i, (oy, ox) in enumerate(offs)])


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, R, R) → (B, T, p·p·3) with tokens in row-major grid order, like the encoder."""
    b, c, r, _ = x.shape
    g = r // p
    x = x.view(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # (B, g, g, p, p, 3)
    return x.reshape(b, g * g, p * p * c)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args: argparse.Namespace) -> tuple[BuiltinViT, dict]:
    """Train the ViT with its three heads; returns the ViT and the last losses."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net = BuiltinViT()
    net.init_weights(gen)
    cls_head = nn.Linear(net.dim, NUM_CLASSES)  # shared by CLS and patch tokens
    pix_head = nn.Linear(net.dim, PATCH * PATCH * 3)
    params = [*net.parameters(), *cls_head.parameters(), *pix_head.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms: no weight decay (ViT habit)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    source = BuiltinSource(split="train", num=args.steps * args.batch_size, seed=args.data_seed)
    t0 = time.perf_counter()
    last: dict = {}
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = range(step * args.batch_size, (step + 1) * args.batch_size)
        x = augment(render_batch(source, idx, RESOLUTION), gen)  # (B, 3, 64, 64)
        y = torch.tensor([source.label(i) for i in idx])  # (B,)
        tokens, cls = net(x)  # (B, T, D), (B, D)
        loss_cls = F.cross_entropy(cls_head(cls), y)
        logits_tok = cls_head(tokens)  # (B, T, 10)
        loss_tok = F.cross_entropy(logits_tok.flatten(0, 1), y.repeat_interleave(tokens.shape[1]))
        loss_pix = F.mse_loss(pix_head(tokens), patchify(x, PATCH))  # (B, T, 192) vs same
        loss = loss_cls + args.tok_weight * loss_tok + args.pix_weight * loss_pix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        last = {"cls": loss_cls.item(), "tok": loss_tok.item(), "pix": loss_pix.item()}
        if step % 100 == 0 or step == args.steps - 1:
            rate = (step + 1) * args.batch_size / (time.perf_counter() - t0)
            print(
                f"step {step:5d}  loss cls {last['cls']:.3f} tok {last['tok']:.3f} "
                f"pix {last['pix']:.4f}  {rate:.0f} img/s",
                flush=True,
            )
    last["train_seconds"] = round(time.perf_counter() - t0, 1)
    return net, last


@torch.no_grad()
def features(
    weights: Path, source: BuiltinSource, resolution: int = RESOLUTION, batch: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shipped-path features: tokens (N, T, D), labels (N,), per-patch mean colour (N, T, 3)."""
    enc = builtin_encoder(weights=str(weights), resolution=resolution)
    toks, cols = [], []
    for s in range(0, len(source), batch):
        x = render_batch(source, range(s, min(len(source), s + batch)), resolution)
        toks.append(enc(x)[0])  # (b, T, D)
        cols.append(patchify(x, PATCH).view(x.shape[0], -1, PATCH * PATCH, 3).mean(2))
    labels = torch.tensor([source.label(i) for i in range(len(source))])
    return torch.cat(toks), labels, torch.cat(cols)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-2) -> torch.Tensor:
    """Closed-form ridge regression with a bias column, in float64: weights (D+1, K)."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (N, D+1)
    gram = x.T @ x + lam * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ y.double())


def ridge_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1) @ w


def evaluate(weights: Path, n_train: int, n_val: int) -> dict:
    """Held-out linear probe (mean-pooled tokens → class) and per-token colour regression."""
    tr_tok, tr_y, tr_col = features(weights, BuiltinSource(split="train", num=n_train, seed=0))
    va_tok, va_y, va_col = features(weights, BuiltinSource(split="val", num=n_val, seed=0))
    mu, sd = tr_tok.mean((0, 1)), tr_tok.std((0, 1)) + 1e-6
    pooled_tr, pooled_va = ((tr_tok - mu) / sd).mean(1), ((va_tok - mu) / sd).mean(1)  # (N, D)
    w = ridge_fit(pooled_tr, F.one_hot(tr_y, NUM_CLASSES))
    probe_acc = (ridge_predict(w, pooled_va).argmax(1) == va_y).double().mean().item()
    # Spatial detail: each token linearly predicts its own patch's mean colour.
    d = tr_tok.shape[-1]
    wc = ridge_fit(((tr_tok - mu) / sd).reshape(-1, d), tr_col.reshape(-1, 3), lam=1e-4)
    pred = ridge_predict(wc, ((va_tok - mu) / sd).reshape(-1, d))
    target = va_col.reshape(-1, 3).double()
    r2 = 1.0 - ((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    return {
        "probe_mean_tokens_val_top1": round(probe_acc, 4),
        "colour_regression_val_r2": round(r2.item(), 4),
        "probe_train_images": n_train,
        "probe_val_images": n_val,
        "chance": 1.0 / NUM_CLASSES,
    }


def check_outputs(out: Path) -> None:
    """Refuse, before any training, an ``--out`` that would replace a file this script (or
    ``ssl_builtin_encoder.py``) did not write: the weights and their card, the ``.json`` beside
    them."""
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"--out {out} is not a .safetensors path",
            "name the weights file, e.g. --out builtin.safetensors (its card goes beside it)",
        )
    hint = "pass a new file name to --out, or move that file away first"
    for path in (out, out.with_suffix(".json")):
        owner = "an encoder file this script wrote"
        refuse_foreign_output(path, _written_here, "--out", owner, hint)


def _written_here(path: Path) -> bool:
    """Weights with the built-in data's version in their metadata, or a card naming them."""
    try:
        if path.suffix == ".json":
            card = json.loads(path.read_text())
            return isinstance(card, dict) and {"arch", "objective", "sha256"} <= card.keys()
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return "dataset_version" in (f.metadata() or {})
    except Exception:  # unreadable, not JSON, not safetensors: not ours
        return False


def check_counts(args: argparse.Namespace) -> None:
    """The counts both encoder scripts take, checked before any training."""
    check_at_least([("--steps", args.steps, 1), ("--batch-size", args.batch_size, 2),
                    ("--warmup", args.warmup, 0), ("--threads", args.threads, 1),
                    ("--probe-train", args.probe_train, NUM_CLASSES),
                    ("--probe-val", args.probe_val, 1)])  # fmt: skip


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("builtin-supervised.safetensors"))
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tok-weight", type=float, default=0.5)
    parser.add_argument("--pix-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="init and augmentation seed")
    parser.add_argument(
        "--data-seed", type=int, default=1, help="built-in dataset seed to train on"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe-train", type=int, default=2000)
    parser.add_argument("--probe-val", type=int, default=500)
    args = parser.parse_args(argv)
    check_counts(args)
    check_outputs(args.out)
    torch.set_num_threads(args.threads)

    net, last = train(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.pop("out")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(
        net, args.out, metadata={"dataset_version": GENERATOR_VERSION}, dtype=torch.float16
    )
    scores = evaluate(args.out, args.probe_train, args.probe_val)
    meta = {
        "arch": ARCH,
        "resolution": RESOLUTION,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "dataset": {
            "id": "builtin",
            "version": GENERATOR_VERSION,
            "split": "train",
            "seed": args.data_seed,
        },
        "objective": "CE(cls) + tok_weight*CE(shared head on patch tokens) "
        "+ pix_weight*MSE(linear 8x8x3 patch reconstruction)",
        "augmentation": "random h/v flips, random translation <= 4 px (reflect pad)",
        "settings": settings,
        "final_losses": {k: round(v, 4) for k, v in last.items() if k != "train_seconds"},
        "train_seconds": last["train_seconds"],
        "scores": scores,
        "sha256": sha256_file(args.out),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python scripts/make_builtin_encoder.py " + " ".join(sys.argv[1:]),
    }
    json_path = args.out.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(meta, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
