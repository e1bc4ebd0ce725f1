"""Extraction benchmark: wall time of ``run_extract`` vs the bare encoder forward.

Both encode the same built-in images, both flips, in the same batches on the same device; the
bare forward starts from images already in memory, so the ratio is what decoding, the DataLoader,
float16 conversion and the Zarr writes (shard buffers, done bitmaps) cost on top of the network.
Encoder weights default to ``random``: speed does not depend on the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.bench.common import BenchContext, Row, fill_ratios, scratch_space, timed_row

#: encoder, resolution, images, batch
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder="builtin", resolution=32, num=8, batch=8),
    "small": dict(encoder="builtin", resolution=64, num=256, batch=32),
    "paper": dict(encoder="dinov3", resolution=256, num=1024, batch=64),
}


def check_weights(weights: str) -> None:
    """Refuse a weights file that is not there with the benchmark's own hint: here no
    --encoder-weights means random weights, not the shipped ones the encoders' hint names."""
    from repackctl.errors import WeightsError

    if weights in ("random", "builtin") or Path(weights).expanduser().is_file():
        return
    raise WeightsError(
        f"weights file not found: {weights}",
        "pass --encoder-weights with an existing .safetensors or .pth file, or leave it out "
        "for random weights (speed does not depend on them)",
    )


def run(ctx: BenchContext) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Measure extraction and the bare forward; returns (rows, params, notes)."""
    from repackctl.data.builtin import BuiltinSource
    from repackctl.encoders.load import make_encoder
    from repackctl.extract import run_extract
    from repackctl.settings import ExtractSettings, Settings

    p = dict(SHAPES[ctx.size])
    if ctx.encoder:
        p["encoder"] = ctx.encoder
    weights = ctx.encoder_weights or "random"
    check_weights(weights)
    r, num, bs = p["resolution"], p["num"], p["batch"]
    dev = ctx.device
    encoder = make_encoder(p["encoder"], weights, None, r, 0).to(dev).eval()
    source = BuiltinSource(split="train", num=num, seed=0)
    images = torch.from_numpy(np.stack([source.load(i, r) for i in range(num)]))  # (N, R, R, 3)

    @torch.inference_mode()
    def bare() -> None:
        for s in range(0, num, bs):
            x = images[s : s + bs].to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B,3,R,R)
            for flip in (False, True):
                tok, _ = encoder(x.flip(-1) if flip else x)  # (B, T, C)
                tok.half().cpu()

    rows = [timed_row("extract", "bare encoder forward (2 flips)", bare, ctx, items=num,
                      unit="img", baseline=True)]  # fmt: skip
    with scratch_space(ctx.workdir, "extract") as tmp:
        count = {"i": 0}

        def full() -> None:
            count["i"] += 1  # a fresh cache each call: a rerun would find everything done
            settings = Settings(
                cache=str(Path(tmp) / f"cache{count['i']}"),
                device=str(dev),
                num_workers=0,
                extract=ExtractSettings(
                    encoder=p["encoder"], weights=weights, data="builtin", resolution=r, num=num,
                    batch_size=bs, chunk=16, shard=max(16, min(1024, num // 2 // 16 * 16)),
                ),
            )  # fmt: skip
            run_extract(settings)

        rows.append(timed_row("extract", "run_extract (decode + encode + Zarr)", full, ctx,
                              items=num, unit="img", repeats=max(1, min(ctx.repeats, 3))))  # fmt: skip
    notes = [
        "run_extract decodes (renders) the images itself; the bare forward reads them from memory",
        f"encoder weights: {weights}",
    ]
    # the encoder runs eager in both cases: nothing is compiled, whatever --compile asks
    params = {**p, "weights": weights, "flips": 2, "num_workers": 0, "compile": False}
    return fill_ratios(rows), params, notes
