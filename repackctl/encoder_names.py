"""The short ids of timm encoders (``vit_base_patch16_dinov3`` → ``dinov3-vitb16``).

A features group is named by its encoder's id. The timm encoder (``encoders.timm_vit``) makes it
from the model's architecture, and the cache reads it back to name the ``--encoder`` that made
a group (``cache.commands.encoder_flag``); the cache may not import the encoders, so the rule
lives here, free of imports.
"""

from __future__ import annotations


def timm_short_id(name: str) -> str:
    """vit_base_patch16_dinov3 → dinov3-vitb16 (readable folder names)."""
    size = {"tiny": "t", "small": "s", "small_plus": "sp", "base": "b", "large": "l"}
    size |= {"huge_plus": "hp", "giant": "g", "7b": "7b"}
    for family in ("dinov3", "dinov2"):
        if name.endswith(family) or name.endswith(f"{family}_qkvb"):
            body = name.removeprefix("vit_").split("_patch")[0]
            rest = name.split("_patch")[1]
            patch = rest.split("_")[0]
            tag = "-reg4" if "_reg4_" in name else ""
            tag += "-qkvb" if name.endswith("_qkvb") else ""
            return f"{family}-vit{size.get(body, body)}{patch}{tag}"
    return name.replace("_", "-")
