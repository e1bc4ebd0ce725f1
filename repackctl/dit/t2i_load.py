"""Load a trained text-to-image MMDiT (``train t2i``) and its text encoder for sampling."""

from __future__ import annotations

from typing import Any

from repackctl.dit.load import DiTHandle, _checkpoint_of, checked_extra, loaded_handle
from repackctl.errors import WeightsError
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
    needs = ("model_config", "text", "latent_stats", "pack")
    extra = checked_extra(ckpt, "t2i", needs, "a text-to-image", "`repackctl train t2i`")
    model = build_mmdit_from_config(extra["model_config"])
    path = ckpt / f"{which}.safetensors"
    return loaded_handle(
        model, ckpt, extra, which, lambda _: f"{path} does not fit its MMDiT config"
    )


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
