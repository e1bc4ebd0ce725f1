"""Build a frozen image encoder from its registered id and a weights argument."""

from __future__ import annotations

from repackctl.encoders.base import FrozenEncoder
from repackctl.registry import registry


def make_encoder(
    encoder: str, weights: str | None, layer: int | None, resolution: int, seed: int
) -> FrozenEncoder:
    """Build the encoder named by ``encoder`` (``builtin``, ``dinov3``, ``timm:NAME``)."""
    reg = registry("encoders")
    name, arg = reg.split_id(encoder)
    factory = reg.get(name)
    kwargs: dict = {"weights": weights, "layer": layer, "resolution": resolution, "seed": seed}
    if arg:
        kwargs["variant"] = arg
    return factory(**kwargs)
