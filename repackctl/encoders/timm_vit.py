"""timm DINOv2 / DINOv3 encoders under the EncoderSpec contract.

Token rule (RePack then Refine, `stage1` of guanfangdong/RePack-then-Refine; REPA's `utils.py`):
final-layer patch tokens **after** the model's final norm, prefix tokens (CLS + registers) dropped
from the tokens, CLS kept separately. DINOv3 runs at the crop size itself (256² → 16×16 tokens of
patch 16); DINOv2 runs at 224 for 256² crops (16×16 tokens of patch 14), as REPA does. An
intermediate block can be chosen with ``layer`` (normed by the final norm, like timm's
``forward_intermediates(norm=True)``).

Weights: a local ``.safetensors`` / ``.pth`` file (``.pth`` is first read with
``torch.load(weights_only=True)``, so nothing pickled is executed), the hub when reachable, or an
explicit ``"random"`` seeded initialisation for tests and dry runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from repackctl.encoder_names import TIMM_ENCODERS, timm_short_id
from repackctl.encoders.base import EncoderSpec, FrozenEncoder
from repackctl.errors import WeightsError
from repackctl.files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the setting that names an encoder's weights, by command (hints name the flag of each)
WEIGHTS_FLAGS = "--weights FILE (extract, pack) or --fd-weights FILE (evaluate, the fd encoder)"


def _patch_of(name: str) -> int:
    for p in (8, 14, 16, 32):
        if f"patch{p}" in name:
            return p
    raise WeightsError(f"cannot tell the patch size of timm model {name!r}", "use a ViT name")


def _check_weights_file(path: Path) -> None:
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}",
            f"pass an existing .safetensors or .pth file: {WEIGHTS_FLAGS}",
        )
    if path.suffix == ".safetensors":
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"refusing to load {path.name}: it is not a plain tensor file ({type(e).__name__})",
            "convert it to .safetensors, or save only the state dict (tensors) to a .pth",
        ) from None


@contextmanager
def _hub_mode() -> Iterator[None]:
    """Use only the local hub cache when offline (``HF_HUB_OFFLINE``, read now rather than at
    import, or no DNS for the hub): otherwise a machine without network retries for ~50 s before
    the clear error below."""
    import socket

    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if not offline:
        try:
            socket.getaddrinfo("huggingface.co", 443)
        except OSError:
            offline = True
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


class TimmViTEncoder(FrozenEncoder):
    """A frozen timm ViT returning post-norm patch tokens (prefix dropped) and the CLS token."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        super().__init__(spec)
        self.model = model.eval().requires_grad_(False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.spec.prefix_tokens
        if self.spec.layer is None:
            feats = self.model.forward_features(x)  # (B, prefix + T, C), after the final norm
            return feats[:, prefix:], feats[:, 0]
        (tokens, pre), *_ = self.model.forward_intermediates(
            x,
            indices=[self.spec.layer],
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        return tokens, pre[:, 0]  # (B, T, C), (B, C)


def _check_variant(variant: str | None) -> None:
    """Reject a missing or unknown timm model name, suggesting close DINO names."""
    import timm

    if not variant:
        raise WeightsError(
            "the timm encoder needs a model name", "use --encoder timm:vit_base_patch16_dinov3"
        )
    if variant not in timm.list_models():
        close = [n for n in timm.list_models("*dino*") if variant.split("_")[0] in n][:6]
        raise WeightsError(
            f"unknown timm model {variant!r}",
            f"try one of: {', '.join(close) or 'timm.list_models()'}",
        )


def _create_model(
    variant: str, weights: str | None, seed: int, kwargs: dict
) -> tuple[torch.nn.Module, str, str]:
    """The timm model with hub, random or file weights; also (weights tag, file sha256 or "")."""
    import timm

    if weights is None:
        try:
            with _hub_mode():
                model = timm.create_model(variant, pretrained=True, **kwargs)
        except Exception as e:
            raise WeightsError(
                f"cannot load pretrained weights of {variant} ({type(e).__name__}: no hub access?)",
                "download the weights elsewhere (.safetensors or .pth) and pass them with "
                f"{WEIGHTS_FLAGS}; or give the value random there for a dry run",
            ) from None
        return model, f"hub:{variant}", ""
    if weights == "random":
        torch.manual_seed(seed)
        model = timm.create_model(variant, pretrained=False, **kwargs)
        return model, f"random:{seed}", ""
    path = Path(weights).expanduser().resolve()
    _check_weights_file(path)
    try:
        model = timm.create_model(
            variant, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    except Exception as e:
        raise WeightsError(
            f"{path.name} does not fit {variant}: {str(e).splitlines()[0][:200]}",
            "check that the file holds weights of this exact architecture",
        ) from None
    return model, f"file:{path.name}", sha256_file(path)


def _state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names and float32 values, sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def timm_encoder(
    *,
    weights: str | None = None,
    layer: int | None = None,
    resolution: int = 256,
    seed: int = 0,
    variant: str | None = None,
) -> TimmViTEncoder:
    """Any timm DINO-style ViT by name (``--encoder timm:vit_small_patch16_dinov3``)."""
    _check_variant(variant)
    patch = _patch_of(variant)
    # DINOv2 (patch 14) sees 224 for 256 crops so that the grid stays resolution // 16 (REPA).
    grid = resolution // 16 if patch == 14 else resolution // patch
    input_size = grid * patch
    kwargs = {"img_size": input_size} if "dinov3" not in variant else {}
    model, tag, digest = _create_model(variant, weights, seed, kwargs)
    digest = digest or _state_digest(model)
    depth = len(getattr(model, "blocks", []))
    if layer is not None and not (-depth <= layer < depth):
        raise WeightsError(f"layer {layer} out of range for {depth} blocks", f"use 0..{depth - 1}")
    cfg = model.pretrained_cfg or {}
    spec = EncoderSpec(
        id=timm_short_id(variant),
        arch=variant,
        patch_size=patch,
        input_size=input_size,
        dim=model.embed_dim,
        grid=grid,
        layer=None if layer is None else layer % depth,
        prefix_tokens=model.num_prefix_tokens,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights=tag,
        weights_sha256=digest,
        extra={"token_rule": "post-norm patch tokens, prefix dropped; cls = token 0"},
    )
    return TimmViTEncoder(spec, model)


def dinov3_vitb16(**kwargs) -> TimmViTEncoder:
    """The paper's encoder: DINOv3 ViT-B/16 (``--encoder dinov3``)."""
    variant = kwargs.pop("variant", None) or TIMM_ENCODERS["dinov3"]
    return timm_encoder(variant=variant, **kwargs)


def dinov2_vitb14(**kwargs) -> TimmViTEncoder:
    """REPA's encoder: DINOv2 ViT-B/14 at 224 (``--encoder dinov2``)."""
    variant = kwargs.pop("variant", None) or TIMM_ENCODERS["dinov2"]
    return timm_encoder(variant=variant, **kwargs)
