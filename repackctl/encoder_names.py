"""The short ids of timm encoders (``vit_base_patch16_dinov3`` → ``dinov3-vitb16``).

A features group is named by its encoder's id. The timm encoder (``encoders.timm_vit``) makes it
from the model's architecture, and the cache reads it back to name the ``--encoder`` that made
a group (``cache.commands.encoder_flag``); the cache may not import the encoders, so the rule
lives here, free of imports. ``pack train`` reads what an ``--encoder`` name stands for
(``encoder_spec_id``) to tell whether it made given features, without building the encoder.
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


#: the registered encoders that are one timm model (``encoders.timm_vit``: ``--encoder dinov3`` is
#: ``--encoder timm:vit_base_patch16_dinov3``); their factories' default model, by name (the
#: factories read it here)
TIMM_ENCODERS = {"dinov2": "vit_base_patch14_dinov2", "dinov3": "vit_base_patch16_dinov3"}


def encoder_spec_id(encoder: str) -> str | None:
    """The spec id (the first part of a features id) of the encoder that ``--encoder encoder``
    names, from the name alone: ``timm:ARCH`` and the registered timm names (``dinov3``,
    ``dinov3:ARCH``) are their model's short id (``dinov3-vitb16`` for ``dinov3`` and
    ``timm:vit_base_patch16_dinov3`` both). None for other names (``builtin``, a plugin's),
    whose spec id only the built encoder tells."""
    name, _, arch = encoder.partition(":")  # dinov3:ARCH builds ARCH, as timm:ARCH does
    if name != "timm" and name not in TIMM_ENCODERS:
        return None
    arch = arch or TIMM_ENCODERS.get(name, "")
    return timm_short_id(arch) if arch else None
