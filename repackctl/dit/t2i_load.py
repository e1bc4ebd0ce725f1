"""Load a trained text-to-image MMDiT (``train t2i``) and its text encoder for sampling."""

from __future__ import annotations

from typing import Any

from repackctl.dit.load import DiTHandle, _checkpoint_of
from repackctl.errors import CheckpointError, WeightsError
from repackctl.files import sha256_file_cached
from repackctl.paths import resolve_checkpoint_arg
from repackctl.train import checkpoint as ckpt_io


def checkpoint_stage(runs: str, run: str, checkpoint: str | None) -> str | None:
    """The stage (``dit``, ``t2i`` …) recorded by the checkpoint that ``run`` resolves to."""
    ckpt = _checkpoint_of(resolve_checkpoint_arg(runs, run, checkpoint))
    return ckpt_io.read_state(ckpt).get("extra", {}).get("stage")


def load_t2i(runs: str, run: str, checkpoint: str | None, which: str = "ema") -> DiTHandle:
    """The MMDiT of a ``train t2i`` checkpoint (with its null caption), in eval mode."""
    from repackctl.models.mmdit import build_mmdit_from_config

    ckpt = _checkpoint_of(resolve_checkpoint_arg(runs, run, checkpoint))
    extra = ckpt_io.read_state(ckpt).get("extra", {})
    missing = [k for k in ("model_config", "text", "latent_stats", "pack") if k not in extra]
    if extra.get("stage") != "t2i" or missing:
        raise CheckpointError(
            f"{ckpt} is not a text-to-image checkpoint (stage {extra.get('stage')!r}, "
            f"missing {missing})",
            "pass a run trained with `repackctl train t2i`",
        )
    model = build_mmdit_from_config(extra["model_config"])
    weights = ckpt_io.load_model_weights(ckpt, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt / f'{which}.safetensors'} does not fit its MMDiT config: {str(e)[:200]}",
            "the checkpoint is damaged or was written by another version",
        ) from None
    digest = sha256_file_cached(ckpt / f"{which}.safetensors")
    return DiTHandle(model=model.eval(), checkpoint=ckpt, extra=extra, sha256=digest, which=which)


def load_text_encoder(extra: dict[str, Any]) -> Any:
    """The run's text encoder, checked against the weights its captions were encoded with."""
    from repackctl.captions_cache import make_text_encoder

    text = extra["text"]
    enc = make_text_encoder(
        text.get("encoder_ref") or text["encoder"]["id"],
        text.get("text_weights"),
        int(text["max_length"]),
    )
    want = (text.get("encoder") or {}).get("weights_sha256")
    if want and enc.weights_sha256 != want:
        raise WeightsError(
            f"text encoder {enc.id} has weights {enc.weights_sha256[:12]}…, the run was trained "
            f"on captions encoded with {want[:12]}…",
            "install the same text-encoder weights the captions were encoded with",
        )
    return enc
