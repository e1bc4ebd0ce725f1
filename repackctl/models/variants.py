"""Registered DiT variants: size presets × patch sizes × families, plus a ``tiny`` test model.

Sizes follow DiT (Peebles & Xie 2023, Table 1): S 12×384/6, B 12×768/12, L 24×1024/16,
XL 28×1152/16. LightningDiT (hustvl/LightningDiT ``models/lightningdit.py``, the official
RePack-then-Refine stage 2) comes with patch 1 and 2; DiT and SiT with patch 2, 4 and 8. DiT and
SiT share the network and differ in objective: ``config.family`` records which one.

Ids (``MODEL_FACTORIES`` keys) are ``<family>-<size>-<patch>`` (``lightningdit-xl-1``,
``dit-xl-2``, ``sit-b-4``) and ``tiny``. The lead registers them as ``repackctl.models`` entry
points; each value is a factory ``f(*, in_channels, input_size, num_classes, **options) -> DiT``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from repackctl.errors import ConfigError
from repackctl.models.dit import DiT, DiTConfig


@dataclass(frozen=True)
class SizePreset:
    """Depth, width and heads of one published size."""

    depth: int
    hidden_size: int
    num_heads: int

    def fields(self, patch: int) -> dict[str, int]:
        """The model-config fields of this size at ``patch`` (DiT and MMDiT alike)."""
        return dict(
            patch_size=patch,
            depth=self.depth,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
        )


SIZES: dict[str, SizePreset] = {
    "s": SizePreset(12, 384, 6),
    "b": SizePreset(12, 768, 12),
    "l": SizePreset(24, 1024, 16),
    "xl": SizePreset(28, 1152, 16),
}


def shaped(
    preset: SizePreset, depth: int | None, width: int | None, heads: int | None
) -> tuple[SizePreset, str]:
    """``preset`` with any of depth / width / heads overridden, and the id suffix naming them."""
    over = {"depth": depth, "hidden_size": width, "num_heads": heads}
    over = {k: int(v) for k, v in over.items() if v is not None}
    for key, value in over.items():
        if value < 1:
            raise ConfigError(f"model {key} must be ≥ 1, got {value}", "e.g. --depth 8 --width 96")
    if not over:
        return preset, ""
    new = replace(preset, **over)
    return new, f"-d{new.depth}w{new.hidden_size}h{new.num_heads}"


# What each family's network looks like; the size and patch come from the id.
_ARCH: dict[str, dict[str, object]] = {
    "lightningdit": {"norm": "rmsnorm", "mlp": "swiglu", "rope": True},
    "dit": {"norm": "layernorm", "mlp": "gelu", "rope": False},
    "sit": {"norm": "layernorm", "mlp": "gelu", "rope": False},
}
PATCHES: dict[str, tuple[int, ...]] = {"lightningdit": (1, 2), "dit": (2, 4, 8), "sit": (2, 4, 8)}


def variant_config(
    family: str,
    size: SizePreset,
    patch: int,
    *,
    name: str,
    in_channels: int,
    input_size: int,
    num_classes: int,
    qk_norm: bool = False,
    no_shift: bool = False,
    grad_checkpointing: bool = False,
    class_dropout: float = 0.1,
) -> DiTConfig:
    """The config of one variant (no weights allocated), with the user-facing options applied."""
    return DiTConfig(
        family=family,  # type: ignore[arg-type]
        in_channels=in_channels,
        input_size=input_size,
        **size.fields(patch),
        num_classes=num_classes,
        class_dropout=class_dropout,
        qk_norm=qk_norm,
        no_shift=no_shift,
        grad_checkpointing=grad_checkpointing,
        name=name,
        **_ARCH[family],  # type: ignore[arg-type]
    )


def _build(
    family: str,
    size: str,
    patch: int,
    *,
    in_channels: int,
    input_size: int,
    num_classes: int,
    qk_norm: bool,
    no_shift: bool,
    grad_checkpointing: bool,
    class_dropout: float,
    depth: int | None = None,
    width: int | None = None,
    heads: int | None = None,
) -> DiT:
    preset, suffix = shaped(SIZES[size], depth, width, heads)
    cfg = variant_config(
        family,
        preset,
        patch,
        name=f"{family}-{size}-{patch}{suffix}",
        in_channels=in_channels,
        input_size=input_size,
        num_classes=num_classes,
        qk_norm=qk_norm,
        no_shift=no_shift,
        grad_checkpointing=grad_checkpointing,
        class_dropout=class_dropout,
    )
    return DiT(cfg)


def _factory(family: str, size: str, patch: int) -> Callable[..., DiT]:
    def factory(
        *,
        in_channels: int = 32,
        input_size: int = 16,
        num_classes: int = 1000,
        qk_norm: bool = False,
        no_shift: bool = False,
        grad_checkpointing: bool = False,
        class_dropout: float = 0.1,
        depth: int | None = None,
        width: int | None = None,
        heads: int | None = None,
    ) -> DiT:
        return _build(
            family,
            size,
            patch,
            in_channels=in_channels,
            input_size=input_size,
            num_classes=num_classes,
            qk_norm=qk_norm,
            no_shift=no_shift,
            grad_checkpointing=grad_checkpointing,
            class_dropout=class_dropout,
            depth=depth,
            width=width,
            heads=heads,
        )

    factory.__name__ = factory.__qualname__ = f"{family}_{size}_{patch}"
    factory.__doc__ = (
        f"{family} {size.upper()}/{patch}: {SIZES[size].depth} blocks, width "
        f"{SIZES[size].hidden_size}, {SIZES[size].num_heads} heads, patch {patch}. Defaults are "
        "the paper's latent (32 channels, 16×16) and ImageNet's 1000 classes; depth / width / "
        "heads override the size's (custom small models)."
    )
    return factory


# LightningDiT (RMSNorm, SwiGLU, RoPE + sin-cos, adaLN-Zero): the official RePack model is XL/1.
lightningdit_s_1 = _factory("lightningdit", "s", 1)
lightningdit_s_2 = _factory("lightningdit", "s", 2)
lightningdit_b_1 = _factory("lightningdit", "b", 1)
lightningdit_b_2 = _factory("lightningdit", "b", 2)
lightningdit_l_1 = _factory("lightningdit", "l", 1)
lightningdit_l_2 = _factory("lightningdit", "l", 2)
lightningdit_xl_1 = _factory("lightningdit", "xl", 1)
lightningdit_xl_2 = _factory("lightningdit", "xl", 2)

# DiT (classic network; published with the noise-prediction objective).
dit_s_2 = _factory("dit", "s", 2)
dit_s_4 = _factory("dit", "s", 4)
dit_s_8 = _factory("dit", "s", 8)
dit_b_2 = _factory("dit", "b", 2)
dit_b_4 = _factory("dit", "b", 4)
dit_b_8 = _factory("dit", "b", 8)
dit_l_2 = _factory("dit", "l", 2)
dit_l_4 = _factory("dit", "l", 4)
dit_l_8 = _factory("dit", "l", 8)
dit_xl_2 = _factory("dit", "xl", 2)
dit_xl_4 = _factory("dit", "xl", 4)
dit_xl_8 = _factory("dit", "xl", 8)

# SiT (same network as DiT, trained with the velocity objective; REPA's backbone).
sit_s_2 = _factory("sit", "s", 2)
sit_s_4 = _factory("sit", "s", 4)
sit_s_8 = _factory("sit", "s", 8)
sit_b_2 = _factory("sit", "b", 2)
sit_b_4 = _factory("sit", "b", 4)
sit_b_8 = _factory("sit", "b", 8)
sit_l_2 = _factory("sit", "l", 2)
sit_l_4 = _factory("sit", "l", 4)
sit_l_8 = _factory("sit", "l", 8)
sit_xl_2 = _factory("sit", "xl", 2)
sit_xl_4 = _factory("sit", "xl", 4)
sit_xl_8 = _factory("sit", "xl", 8)

TINY = SizePreset(depth=2, hidden_size=64, num_heads=2)


def tiny(
    *,
    in_channels: int = 4,
    input_size: int = 8,
    num_classes: int = 10,
    qk_norm: bool = False,
    no_shift: bool = False,
    grad_checkpointing: bool = False,
    class_dropout: float = 0.1,
    depth: int | None = None,
    width: int | None = None,
    heads: int | None = None,
    patch: int | None = None,
) -> DiT:
    """LightningDiT-style test model: 2 blocks, width 64, 2 heads, patch 1 (a CPU second).

    ``depth`` / ``width`` / ``heads`` make a custom small model on the same recipe (e.g. the
    8-block DiT of the reproduction study); ``patch`` 2 a quarter of the tokens (the demo's)."""
    preset, suffix = shaped(TINY, depth, width, heads)
    patch = patch or 1
    cfg = variant_config(
        "lightningdit",
        preset,
        patch,
        name=f"tiny{suffix}" + (f"-p{patch}" if patch != 1 else ""),
        in_channels=in_channels,
        input_size=input_size,
        num_classes=num_classes,
        qk_norm=qk_norm,
        no_shift=no_shift,
        grad_checkpointing=grad_checkpointing,
        class_dropout=class_dropout,
    )
    return DiT(cfg)


def _registry() -> dict[str, Callable[..., DiT]]:
    table: dict[str, Callable[..., DiT]] = {}
    for family, patches in PATCHES.items():
        for size in SIZES:
            for patch in patches:
                table[f"{family}-{size}-{patch}"] = globals()[f"{family}_{size}_{patch}"]
    table["tiny"] = tiny
    return table


MODEL_FACTORIES: dict[str, Callable[..., DiT]] = _registry()


def model_id(arch: str, size: str, patch: int) -> str:
    """``("lightningdit", "XL", 1)`` → ``"lightningdit-xl-1"``; raises if not registered."""
    ident = f"{arch.lower()}-{size.lower()}-{int(patch)}"
    if ident not in MODEL_FACTORIES:
        raise ConfigError(
            f"no registered model {ident!r} (arch {arch!r}, size {size!r}, patch {patch})",
            hint="available: " + ", ".join(MODEL_FACTORIES),
        )
    return ident


def build_from_config(config: DiTConfig | dict) -> DiT:
    """Rebuild a model from its saved ``config.to_dict()`` (e.g. a checkpoint's JSON)."""
    cfg = config if isinstance(config, DiTConfig) else DiTConfig.from_dict(config)
    return DiT(cfg)
