"""`repackctl import official`: the released RePack-then-Refine checkpoints → our run folders.

Key structures read from guanfangdong/RePack-then-Refine (names and shapes only):

- Stage 1, Lightning ``.ckpt`` (``stage1/repack/models/autoencoder.py`` ``RePackAutoencoder``):
  ``state_dict`` with ``encoder.dino.*`` (the frozen DINOv3, HF names), ``encoder.conv_out.weight``
  (2d, C, 1, 1) without bias, ``quant_conv`` (2d, 2d, 1, 1) + bias, ``post_quant_conv`` (d, d, 1, 1)
  + bias, ``decoder.*`` (taming ``Decoder``: ``conv_in``, ``mid.block_1|attn_1|block_2``,
  ``up.<level>.block.<i>`` ResnetBlocks with ``nin_shortcut``, ``up.<level>.attn.<i>`` with separate
  ``q``/``k``/``v``/``proj_out``, ``up.<level>.upsample.conv``, ``norm_out``, ``conv_out``; level 0
  is the full resolution) and ``loss.*`` (LPIPS, discriminator, Watson).
- Stage 2, ``.pt`` (``stage2/train.py``): ``{"model", "ema", "opt", "config", "global_step"}``; the
  LightningDiT state dict (``stage2/models/lightningdit.py``) has our DiT's key names.
- Stage 3, Lightning ``.ckpt`` (``stage3/train_refiner.py``): ``state_dict`` with ``unet.*``
  (``stage3/networks.py`` ``RefineUNet``: ResBlocks ``in_layers.0|2``, ``out_layers.0|2``,
  ``skip``; attention ``norm``, ``qkv``, ``proj``; ``down.<i>.block|downsample``, ``mid``,
  ``up.<i>.block``, ``final_res``, ``norm_out``, ``conv_out``), ``discriminator.*`` and
  ``perceptual_loss.*``.

Every key is either mapped onto our model or dropped by a named rule (the frozen encoder, the
training losses, the discriminators); anything else, and any tensor of ours left unfilled, is an
error that lists the keys, and so is a tensor the structure needs that the file lacks. The
imported DiT must make the latents stage 1 decodes (channels, and side at ``--image-size``), its
``ema`` must be the same network as its ``model``, and every latent std must be positive; a
``--num-heads`` that contradicts the RoPE table is refused. The projection is imported in its
official form (``ProjectionConfig(form="official")``: ``conv_out`` and ``quant_conv`` as they are,
no longer folded into one affine map) and the official ``post_quant_conv`` (a 1×1 conv before the
decoder) is kept as such (``DecoderConfig(post_quant_conv=True)``), so the imported pack model
computes what the official one does, also at the latent's border. Imports written before kept a
folded projection (``W = W_q·W_e``, ``b = b_q``); they still load as such (their config records
no form: ``folded``).

Conventions: the official DiT runs in the opposite time (τ = 1 data) and predicts ``x − ε``; the
imported DiT checkpoint says ``velocity_convention: "official"`` and ``repackctl.sample.run`` calls it
as ``v(x, t) = −model(x, 1 − t)``. Their sampling settings are translated into the DiT run's
``sampling.json``: shift 0.3 → ours 1/0.3, ``cfg_interval_start`` 0.11 → ``cfg_t_hi`` 0.89, CFG
on channels 0–2 → ``cfg_channels`` 3, scale 15, Euler with a 250-point grid → 249 steps.
Latent statistics are not in their checkpoints (they were recomputed from the training latents);
``--latent-stats`` gives their ``latents_stats.pt`` (or a JSON with mean/std).

Loading: ``torch.load(weights_only=True)`` first. Lightning checkpoints may hold pickled objects
beyond tensors (hyper-parameter containers, callback states); such a file is refused unless
``trust_pickle=True`` (``--trust-pickle``), since unpickling runs code stored in the file.

Writing: every run is written under a temporary folder of the runs root
(``.tmp-import-<out>.<pid>-<host>/<out>-pack`` …) and renamed into place only once every given
stage has converted, so a failure midway leaves no half-written run that blocks a retry; the
temporary folder of a killed import is removed by the next one on the same machine. An import holds the lock of its ``--out``
(``<runs>/.import-<out>.lock``, ``repackctl.run_lock.hold_import_lock``) from its first look at
the runs in place to the last rename: a second import of the same ``--out`` at once is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repackctl.crash import crash_point
from repackctl.dit.run import official_sampling_defaults, write_sampling_json
from repackctl.errors import CheckpointError, ConfigError, WeightsError, name_items
from repackctl.progress import ProgressFactory, null_progress
from repackctl.run_lock import hold_import_lock
from repackctl.temp_names import writer_tag

STAGE1_DROP = {
    "encoder.dino.": "frozen DINOv3 backbone (the encoder; give its weights to `repackctl extract`)",
    "loss.": "stage-1 training losses (LPIPS network, PatchGAN discriminator, Watson)",
}
STAGE3_DROP = {
    "discriminator.": "refiner PatchGAN discriminator (training only)",
    "perceptual_loss.": "LPIPS network of the refiner loss (training only)",
}
DINOV3_ARCH = "vit_base_patch16_dinov3"


@dataclass
class MappingReport:
    """How one official state dict landed: mapped tensors and the dropped groups."""

    stage: str
    mapped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading


def safe_load(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; a file needing full unpickling only with trust."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path} does not exist", "pass the downloaded official checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler's refusal takes many forms
        if not trust_pickle:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise WeightsError(
                f"{path} holds pickled objects beyond tensors and cannot be loaded safely "
                f"({first})",
                "if you trust where the file comes from, pass --trust-pickle (unpickling can run "
                "code stored in the file)",
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file
            raise WeightsError(
                f"{path} cannot be read even with --trust-pickle: {_first_line(e)}",
                "is it the downloaded official checkpoint, complete? Download it again",
            ) from None
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dict",
            "pass the official checkpoint file of that stage",
        )
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _state_dict(obj: dict[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(
            f"{path} has no Lightning state_dict of tensors",
            "pass the official Lightning .ckpt of that stage",
        )
    return sd


def _key_list(keys: list[str]) -> str:
    """``(n): a, b, … and k more`` with at most eight names."""
    return f"({len(keys)}): {name_items(keys, 8)}"


def _absent(stage: str, keys: list[str] | set[str]) -> WeightsError:
    """One error naming every official tensor the mapping needed and did not find."""
    return WeightsError(
        f"the official {stage} checkpoint lacks tensors its structure needs "
        + _key_list(sorted(keys)),
        "the file is incomplete or not a RePack-then-Refine release of that stage; download "
        "it again",
    )


def _check_complete(
    stage: str,
    source_keys: set[str],
    used: set[str],
    ours: dict[str, torch.Tensor],
    got: dict,
    target: str = "our model",
    hint: str = "is it a RePack-then-Refine release of that stage? Other structures are not "
    "supported",
) -> None:
    """No official key unused, no tensor of ours unfilled, every shape right."""
    leftover = sorted(source_keys - used)
    missing = sorted(set(ours) - set(got))
    extra = sorted(set(got) - set(ours))
    bad = [
        f"{k} {tuple(got[k].shape)} vs ours {tuple(ours[k].shape)}"
        for k in sorted(set(ours) & set(got))
        if tuple(got[k].shape) != tuple(ours[k].shape)
    ]
    if leftover or missing or extra or bad:
        parts = []
        for label, keys in (
            ("unmapped official keys", leftover),
            ("our tensors left unfilled", missing),
            ("mapped to unknown keys", extra),
            ("shape mismatches", bad),
        ):
            if keys:
                parts.append(f"{label} {_key_list(keys)}")
        raise WeightsError(
            f"the official {stage} checkpoint does not map onto {target}: " + "; ".join(parts),
            hint,
        )


def _drop(sd: dict[str, torch.Tensor], rules: dict[str, str], report: MappingReport) -> set[str]:
    dropped = set()
    for prefix, reason in rules.items():
        keys = {k for k in sd if k.startswith(prefix)}
        if keys:
            report.dropped[reason] = len(keys)
        dropped |= keys
    return dropped


def tensors_sha256(sd: dict[str, torch.Tensor], keys: list[str]) -> str:
    """sha256 over names, shapes and bytes of the chosen tensors (identifies excluded weights)."""
    h = hashlib.sha256()
    for k in sorted(keys):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Stage 1: packing autoencoder


#: keys every official stage-1 checkpoint has; the projection and the decoder input read them
_STAGE1_REQUIRED = (
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
    "decoder.conv_in.weight",
)


def _stage1_config(sd: dict[str, torch.Tensor], image_size: int) -> Any:
    """Our AutoencoderConfig of an official stage-1 state dict (sizes read from the tensors)."""
    from repackctl.pack.autoencoder import AutoencoderConfig
    from repackctl.pack.decoder import DecoderConfig
    from repackctl.pack.projection import ProjectionConfig

    d = sd["quant_conv.weight"].shape[0] // 2
    c = sd["encoder.conv_out.weight"].flatten(1).shape[1]
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    blks = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))]
    # the level widths are read from each level's first block: without them, no structure
    needed = [f"decoder.up.{lv}.block.0.conv2.weight" for lv in range(1 + max(ups, default=0))]
    absent = [k for k in needed if k not in sd] + ([] if blks else ["decoder.up.0.block.0.*"])
    if absent:
        raise _absent("stage-1", absent)
    levels, blocks = len(needed), 1 + max(blks)
    widths = [sd[k].shape[0] for k in needed]
    ch = widths[0]
    latent_size = image_size // 2 ** (levels - 1)
    attn = tuple(
        latent_size * 2 ** (levels - 1 - lv)
        for lv in range(levels)
        if f"decoder.up.{lv}.attn.0.q.weight" in sd
    )
    return AutoencoderConfig(
        projection=ProjectionConfig("repack", in_channels=c, latent_channels=d, form="official"),
        decoder=DecoderConfig(
            latent_channels=d,
            latent_size=latent_size,
            resolution=image_size,
            ch=ch,
            ch_mult=tuple(w // ch for w in widths),
            num_res_blocks=blocks - 1,
            attn_resolutions=attn,
            post_quant_conv=True,
        ),
    )


class _Stage1Mapper:
    """Copies official stage-1 tensors into our key names, remembering which ones it read."""

    def __init__(self, sd: dict[str, torch.Tensor], used: set[str]) -> None:
        self.sd = sd
        self.used = used
        self.got: dict[str, torch.Tensor] = {}
        self.absent: list[str] = []  # official keys the structure needs and the file lacks

    def read(self, src: str) -> torch.Tensor | None:
        """Their ``src``, marked used; ``None`` (and remembered as absent) if the file lacks it."""
        if src not in self.sd:
            self.absent.append(src)
            return None
        self.used.add(src)
        return self.sd[src]

    def take(self, src: str, dst: str) -> None:
        """Our ``dst`` is their ``src`` as is."""
        if (t := self.read(src)) is not None:
            self.got[dst] = t

    def projection_and_input(self) -> None:
        """Encoder conv_out and quant_conv as our official-form projection; decoder input convs."""
        sd = self.sd
        w_enc, w_q = sd["encoder.conv_out.weight"], sd["quant_conv.weight"]  # (2d, C, 1, 1) ...
        if w_q.dim() != 4 or w_q.shape[1] != w_enc.shape[0]:
            raise WeightsError(
                f"the official stage-1 quant_conv {tuple(w_q.shape)} does not take the "
                f"{w_enc.shape[0]} channels encoder.conv_out {tuple(w_enc.shape)} makes",
                "the file is damaged or not a RePack-then-Refine stage-1 release",
            )
        # mean/logvar = quant_conv(conv_out(x)), the two 1×1 convs kept as they are
        self.take("encoder.conv_out.weight", "projection.conv_out.weight")  # (2d, C, 1, 1)
        for p in ("weight", "bias"):
            self.take(f"quant_conv.{p}", f"projection.quant_conv.{p}")  # (2d, 2d, 1, 1), (2d,)
        for name in ("post_quant_conv.weight", "post_quant_conv.bias"):
            self.take(name, f"decoder.{name}")
        for name in ("conv_in.weight", "conv_in.bias"):
            self.take(f"decoder.{name}", f"decoder.{name}")

    def res_block(self, src: str, dst: str) -> None:
        """A taming ResnetBlock; ``nin_shortcut`` becomes our ``shortcut``."""
        for layer in ("norm1", "conv1", "norm2", "conv2"):
            for p in ("weight", "bias"):
                self.take(f"{src}.{layer}.{p}", f"{dst}.{layer}.{p}")
        for p in ("weight", "bias"):
            if f"{src}.nin_shortcut.{p}" in self.sd:
                self.take(f"{src}.nin_shortcut.{p}", f"{dst}.shortcut.{p}")

    def attn_block(self, src: str, dst: str) -> None:
        """A taming AttnBlock; separate q, k, v 1×1 convs → one qkv conv, in that order."""
        for p in ("weight", "bias"):
            self.take(f"{src}.norm.{p}", f"{dst}.norm.{p}")
            self.take(f"{src}.proj_out.{p}", f"{dst}.proj_out.{p}")
            qkv = [self.read(f"{src}.{n}.{p}") for n in ("q", "k", "v")]
            if any(t is None for t in qkv):
                continue  # named among the absent keys
            if len({t.shape[1:] for t in qkv}) > 1:
                raise WeightsError(
                    f"the official stage-1 {src}.q/k/v.{p} differ in shape: "
                    + ", ".join(str(tuple(t.shape)) for t in qkv),
                    "the file is damaged or not a RePack-then-Refine stage-1 release",
                )
            self.got[f"{dst}.qkv.{p}"] = torch.cat(qkv)

    def decoder_body(self, levels: int, blocks: int) -> None:
        """Middle blocks, the up levels (their order reversed) and the output head."""
        self.res_block("decoder.mid.block_1", "decoder.mid_block_1")
        self.attn_block("decoder.mid.attn_1", "decoder.mid_attn")
        self.res_block("decoder.mid.block_2", "decoder.mid_block_2")
        for j in range(levels):  # ours: levels[0] deepest; theirs: up[0] full resolution
            lv = levels - 1 - j
            for i in range(blocks):
                self.res_block(f"decoder.up.{lv}.block.{i}", f"decoder.levels.{j}.blocks.{i}")
                if f"decoder.up.{lv}.attn.{i}.q.weight" in self.sd:
                    self.attn_block(f"decoder.up.{lv}.attn.{i}", f"decoder.levels.{j}.attns.{i}")
            for p in ("weight", "bias"):
                if f"decoder.up.{lv}.upsample.conv.{p}" in self.sd:
                    self.take(
                        f"decoder.up.{lv}.upsample.conv.{p}",
                        f"decoder.levels.{j}.upsample.conv.{p}",
                    )
        for name in ("norm_out", "conv_out"):
            for p in ("weight", "bias"):
                self.take(f"decoder.{name}.{p}", f"decoder.{name}.{p}")


def map_stage1(
    sd: dict[str, torch.Tensor], image_size: int = 256
) -> tuple[dict[str, torch.Tensor], Any, MappingReport]:
    """Official stage-1 state dict → (our PackAutoencoder state dict, its config, report)."""
    from repackctl.pack.autoencoder import PackAutoencoder

    report = MappingReport("stage 1")
    used = _drop(sd, STAGE1_DROP, report)
    absent = [k for k in _STAGE1_REQUIRED if k not in sd]
    if absent:
        raise WeightsError(
            f"not an official stage-1 checkpoint: no {', '.join(absent)}",
            "pass the stage-1 Lightning .ckpt of the RePack-then-Refine release to --stage1",
        )
    config = _stage1_config(sd, image_size)
    ours = PackAutoencoder.from_config(config).state_dict()
    mapper = _Stage1Mapper(sd, used)
    mapper.projection_and_input()
    mapper.decoder_body(len(config.decoder.ch_mult), config.decoder.num_res_blocks + 1)
    if mapper.absent:
        raise _absent("stage-1", mapper.absent)
    _check_complete("stage-1", set(sd), used, ours, mapper.got)
    report.mapped = len(mapper.got)
    return mapper.got, config, report


# --------------------------------------------------------------------------------------------
# Stage 2: LightningDiT


#: keys the DiT's sizes are read from (every other tensor is checked against the built model)
_STAGE2_REQUIRED = (
    "x_embedder.proj.weight",
    "pos_embed",
    "y_embedder.embedding_table.weight",
    "blocks.0.adaLN_modulation.1.weight",
)


def _heads(sd: dict[str, torch.Tensor], hidden: int, num_heads: int | None) -> int | None:
    """Heads from the RoPE table (per-head width); a given ``num_heads`` must agree with it."""
    if "feat_rope.freqs_cos" not in sd:
        return num_heads
    from_rope = hidden // max(1, sd["feat_rope.freqs_cos"].shape[1])
    if num_heads is not None and num_heads != from_rope:
        raise ConfigError(
            f"--num-heads {num_heads} contradicts the official DiT's RoPE table, which gives "
            f"{from_rope} heads",
            "leave --num-heads out: the head count is read from the RoPE table",
        )
    return from_rope


def dit_config_from_state(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> Any:
    """Our DiTConfig of an official LightningDiT state dict (heads from the RoPE table)."""
    from repackctl.models.dit import DiTConfig

    absent = [k for k in _STAGE2_REQUIRED if k not in sd]
    if absent:
        raise _absent("stage-2", absent)
    w = sd["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, channels, patch = w.shape[0], w.shape[1], w.shape[2]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = sd["pos_embed"].shape[1]
    rope = "feat_rope.freqs_cos" in sd
    num_heads = _heads(sd, hidden, num_heads)
    if num_heads is None:
        raise ConfigError(
            "the official DiT has no RoPE table to read the head count from",
            "pass the number of attention heads (e.g. 16 for XL)",
        )
    mod = sd["blocks.0.adaLN_modulation.1.weight"].shape[0] // hidden
    return DiTConfig(
        family="lightningdit",
        in_channels=channels,
        input_size=math.isqrt(tokens) * patch,
        patch_size=patch,
        depth=depth,
        hidden_size=hidden,
        num_heads=num_heads,
        num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
        norm="rmsnorm" if "blocks.0.norm1.weight" in sd else "layernorm",
        mlp="swiglu" if "blocks.0.mlp.w12.weight" in sd else "gelu",
        rope=rope,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        qk_norm="blocks.0.attn.q_norm.weight" in sd,
        no_shift=mod == 4,
        name="lightningdit (official import)",
    )


def registered_model_id(config: Any) -> str:
    """The registered variant with this depth/width/heads/patch (``lightningdit-xl-1``)."""
    from repackctl.models.variants import MODEL_FACTORIES, SIZES, TINY

    for size, preset in [*SIZES.items(), ("tiny", TINY)]:
        if (preset.depth, preset.hidden_size, preset.num_heads) == (
            config.depth,
            config.hidden_size,
            config.num_heads,
        ):
            ident = "tiny" if size == "tiny" else f"lightningdit-{size}-{config.patch_size}"
            if ident in MODEL_FACTORIES and (size != "tiny" or config.patch_size == 1):
                return ident
    raise WeightsError(
        f"no registered LightningDiT with depth {config.depth}, width {config.hidden_size}, "
        f"{config.num_heads} heads, patch {config.patch_size}",
        "the official releases are LightningDiT-XL/1; register other sizes as a model plugin",
    )


def map_stage2(
    sd: dict[str, torch.Tensor], num_heads: int | None = None, config: Any = None
) -> tuple[dict[str, torch.Tensor], Any, MappingReport]:
    """Official LightningDiT state dict → (ours, DiTConfig, report): the same names, checked.

    With ``config`` (the one read from the ``model`` weights) the state dict is the EMA and must
    fit that architecture exactly, not one of its own.
    """
    from repackctl.models.dit import DiT

    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}
    is_ema = config is not None
    config = config if is_ema else dit_config_from_state(sd, num_heads)
    with torch.device("meta"):
        ours = DiT(config).state_dict()
    report = MappingReport("stage 2")
    got = dict(sd)
    if is_ema:
        _check_complete(
            "stage-2 'ema'",
            set(sd),
            set(sd),
            ours,
            got,
            target="the DiT of its 'model' weights",
            hint="'model' and 'ema' of one stage-2 .pt are the same network; is the file an "
            "unmodified RePack-then-Refine stage-2 checkpoint?",
        )
    else:
        _check_complete("stage-2", set(sd), set(sd), ours, got)
    report.mapped = len(got)
    return got, config, report


# --------------------------------------------------------------------------------------------
# Stage 3: refiner

_REFINER_RENAMES = [
    (r"^down\.(\d+)\.block\.", r"down.\1."),
    (r"^down\.(\d+)\.downsample\.", r"downsample.\1."),
    (r"^up\.(\d+)\.block\.", r"up.\1."),
    (r"\.in_layers\.0\.", ".norm1."),
    (r"\.in_layers\.2\.", ".conv1."),
    (r"\.out_layers\.0\.", ".norm2."),
    (r"\.out_layers\.2\.", ".conv2."),
    (r"\.skip\.", ".shortcut."),
    (r"\.proj\.", ".proj_out."),  # attention output conv (ResBlocks have no .proj)
]


def refiner_key(key: str) -> str:
    """``unet.down.2.block.2.proj.weight`` → ``down.2.2.proj_out.weight`` (our refiner)."""
    k = key.removeprefix("unet.")
    for pattern, repl in _REFINER_RENAMES:
        k = re.sub(pattern, repl, k)
    return k


def map_stage3(
    sd: dict[str, torch.Tensor], image_size: int = 256
) -> tuple[dict[str, torch.Tensor], Any, MappingReport]:
    """Official stage-3 state dict → (our LatentGuidedRefiner state dict, config, report)."""
    from repackctl.refine.network import LatentGuidedRefiner, RefinerConfig

    report = MappingReport("stage 3")
    used = _drop(sd, STAGE3_DROP, report)
    if "unet.conv_in.weight" not in sd:
        raise WeightsError(
            "not an official stage-3 checkpoint: no unet.conv_in.weight",
            "pass the stage-3 Lightning .ckpt of the RePack-then-Refine release to --refiner",
        )
    w = sd["unet.conv_in.weight"]  # (b, 3 + d, 3, 3)
    config = RefinerConfig(
        latent_channels=w.shape[1] - 3,
        resolution=image_size,
        base_channels=w.shape[0],
        attn_resolutions=(image_size // 4, image_size // 8),
        output="image",
    )
    with torch.device("meta"):
        ours = LatentGuidedRefiner(config).state_dict()
    got = {}
    for k, v in sd.items():
        if k.startswith("unet."):
            got[refiner_key(k)] = v
            used.add(k)
    _check_complete("stage-3", set(sd), used, ours, got)
    report.mapped = len(got)
    return got, config, report


# --------------------------------------------------------------------------------------------
# Writing our runs


def _load_stats(
    path: str | Path, channels: int, trust_pickle: bool = False
) -> dict[str, list[float]]:
    """Their ``latents_stats.pt`` ({mean, std} of shape (1, d, 1, 1)) or a JSON with mean/std."""
    path = Path(path).expanduser()
    hint = 'give their latents_stats.pt (mean, std) or a JSON {"mean": [...], "std": [...]}'
    if path.suffix.lower() == ".json":  # STATS.JSON too (torch.load called it pickled)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{path} is not readable JSON: {_first_line(e)}", hint) from None
    else:
        data = safe_load(path, trust_pickle)
    if not isinstance(data, dict):
        raise WeightsError(f"{path} holds no mean/std mapping", hint)
    try:
        mean = torch.as_tensor(data["mean"], dtype=torch.float64).flatten().tolist()
        std = torch.as_tensor(data["std"], dtype=torch.float64).flatten().tolist()
    except KeyError as e:
        raise WeightsError(f"{path} has no {e}", hint) from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: mean/std are not numbers ({_first_line(e)})", hint) from None
    if len(mean) != channels or len(std) != channels:
        raise WeightsError(
            f"{path} has stats of {len(mean)} channels, the DiT has {channels}",
            "give the latent stats of the same release as the DiT",
        )
    if not all(math.isfinite(v) for v in mean + std):
        raise WeightsError(f"{path} holds non-finite mean/std values", hint)
    bad = [i for i, v in enumerate(std) if v <= 0]
    if bad:
        raise WeightsError(
            f"{path} has a std <= 0 in channel{'s' if len(bad) > 1 else ''} "
            f"{', '.join(map(str, bad))} ({', '.join(f'{std[i]:g}' for i in bad)}): de-normalised "
            "latents would lose those channels",
            "give the latents_stats.pt of the same release (every std is positive)",
        )
    return {"mean": mean, "std": std}


def _save_run(
    staging: Path, name: str, step: int, weights: dict[str, dict], extra: dict[str, Any]
) -> Path:
    """One imported run, written under the staging folder (renamed into place at the end)."""
    from repackctl.train.checkpoint import save_checkpoint

    return save_checkpoint(
        staging / name,
        step,
        weights,
        {"optimizers": {}, "schedulers": {}},
        {
            "extra": extra,
            "imported": True,
            "epoch": 0,
            "offset": 0,
            "rng": [],
            "config": {},
            "ema_updates": 0,
        },
    )


@dataclass
class ImportResult:
    """Where each stage landed."""

    pack: Path | None = None
    dit: Path | None = None
    refiner: Path | None = None
    reports: list[MappingReport] = field(default_factory=list)
    sampling: dict[str, Any] | None = None
    #: runs found in place, equal to this import's (an earlier run of it placed them)
    kept: list[str] = field(default_factory=list)


def _stale_staging(root: Path) -> None:
    """Remove staging folders of imports whose process is gone (ours only: ``.tmp-import-…``)."""
    from repackctl.files import writer_gone

    for p in root.glob(".tmp-import-*"):
        if p.is_dir() and not p.is_symlink() and writer_gone(p.name):  # this machine's only
            shutil.rmtree(p, ignore_errors=True)


def import_official(
    *,
    runs: str,
    out: str,
    stage1: str | Path | None = None,
    dit: str | Path | None = None,
    refiner: str | Path | None = None,
    latent_stats: str | Path | None = None,
    image_size: int = 256,
    num_heads: int | None = None,
    trust_pickle: bool = False,
    progress: ProgressFactory = null_progress,
) -> ImportResult:
    """Convert the given official checkpoints into runs ``<out>-pack``, ``-dit``, ``-refine``.

    All runs are written into a staging folder and renamed into place only when every given
    stage converted: a failure leaves nothing behind, so the same command can simply be rerun.
    A kill between two renames leaves the first runs placed: the rerun converts again, finds
    them equal to what it converted (files' sha256 and task extra of every checkpoint; not the
    path that named an official file, which the runs record resolved: the same files, named
    otherwise or from another folder, finish it) and places the others; a run that differs
    (other files, or other settings) is refused, naming which, before anything is placed.
    """
    from repackctl.files import ensure_writable_dir
    from repackctl.paths import local_path, run_dir

    if stage1 is None and dit is None and refiner is None:  # an import of nothing is no success
        raise ConfigError(
            "nothing to import: none of --stage1, --dit, --refiner was given",
            "pass --stage1 <stage-1 .ckpt> (plus --dit <.pt> --latent-stats <file> for the DiT, "
            "--refiner <stage-3 .ckpt> for the refiner)",
        )
    if dit is not None and (stage1 is None or latent_stats is None):
        raise ConfigError(
            "importing the DiT needs its stage-1 model (--stage1) and latent stats (--latent-stats)",
            "the DiT's latents are decoded by stage 1 and de-normalised with their stats",
        )
    if refiner is not None and stage1 is None:
        raise ConfigError("importing the refiner needs --stage1", "it refines stage-1 decodings")
    _refuse_dit_options_without_dit(dit, latent_stats, num_heads)
    root = local_path(runs)
    ensure_writable_dir(root, "runs folder")
    given = {"pack": stage1, "dit": dit, "refine": refiner}
    names = [f"{out}-{stage}" for stage, path in given.items() if path is not None]
    for name in names:  # a foreign run in place: refused before anything is written
        _existing_run(run_dir(runs, name))
    root.mkdir(parents=True, exist_ok=True)

    def convert(staging: Path) -> ImportResult:
        return _convert_all(
            staging, root, out, stage1, dit, refiner, latent_stats, image_size, num_heads,
            trust_pickle, progress,
        )  # fmt: skip

    with hold_import_lock(root, out):  # another import of this --out at once: refused
        return _import_locked(root, runs, out, names, convert)


def _import_locked(
    root: Path, runs: str, out: str, names: list[str], convert: Callable[[Path], ImportResult]
) -> ImportResult:
    """:func:`import_official` once it holds the lock of ``--out``: convert into a staging
    folder (``convert``), then place the runs ``names`` (those in place compared, not
    replaced)."""
    from repackctl.paths import run_dir

    # a run an interrupted import of the same files placed is compared once converted
    placed = [name for name in names if _existing_run(run_dir(runs, name))]
    _stale_staging(root)
    staging = root / f".tmp-import-{out}.{writer_tag()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        result = convert(staging)
        for name in placed:  # all compared before any rename: a refusal places nothing
            _check_same_import(staging / name, run_dir(runs, name))
        for name in names:
            target = run_dir(runs, name)
            if name in placed:
                continue  # the same run, placed by the interrupted import
            if target.is_dir():
                target.rmdir()  # an empty folder (checked above)
            os.replace(staging / name, target)
            crash_point(f"import-placed-{name}")  # crash tests: a kill between two renames
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.kept = placed
    for attr in ("pack", "dit", "refiner"):
        path = getattr(result, attr)
        if path is not None:
            setattr(result, attr, root / path.relative_to(staging))
    return result


def _existing_run(target: Path) -> bool:
    """Whether ``target`` holds a run already: an imported one may be the same import's, placed
    before a kill stopped it between two renames (:func:`_check_same_import` decides once this
    import has converted); anything else is refused here, before any work."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return False
    if _import_identity(target) is None:
        raise CheckpointError(
            f"run {target} already exists", "pick another --out, or move that run away"
        )
    return True


def _source_path(path: str | Path) -> str:
    """The official file as the run records it (``imported_from.file``): its absolute path, the
    same whatever folder the import ran from and however the path was typed."""
    return str(Path(path).expanduser().resolve())


def _import_identity(run: Path) -> list[Any] | None:
    """What an imported run is, for comparing two: each checkpoint's name, its files' sha256
    and its task extra (``state.json``), less the path of the official file it was converted
    from (the same file, typed otherwise or from another folder, converts to the same run; the
    sha256 of the weights decide); None for a run that is not a sealed imported one."""
    from repackctl.run_files import STATE_SHA256, read_json_dict, sealed

    steps = sorted((run / "checkpoints").glob("step-*"))
    out = []
    for step in steps:
        state = read_json_dict(step / "state.json")
        if not sealed(state, STATE_SHA256) or state.get("imported") is not True:
            return None
        extra = state.get("extra")
        if isinstance(extra, dict) and isinstance(extra.get("imported_from"), dict):
            source = {k: v for k, v in extra["imported_from"].items() if k != "file"}
            extra = {**extra, "imported_from": source}
        out.append([step.name, state.get("files"), extra])
    return out or None


def _recorded_source(run: Path) -> str:
    """``imported_from.file`` of the newest checkpoint of the imported ``run`` (``?``: none).

    Imports before commit 6dee648 recorded the path as typed: a relative one is named as such,
    with the folder the import ran from unknown (the official file's own sha256 is not recorded,
    so a file of that name here is not taken for it: it is often the one imported now)."""
    from repackctl.run_files import read_json_dict

    steps = sorted((run / "checkpoints").glob("step-*"))
    state = read_json_dict(steps[-1] / "state.json") if steps else None
    extra = state.get("extra") if state else None
    source = extra.get("imported_from") if isinstance(extra, dict) else None
    file = source.get("file") if isinstance(source, dict) else None
    if not isinstance(file, str):
        return "?"
    if Path(file).expanduser().is_absolute():
        return file
    return (
        f"{file!r}, relative to the folder an older import ran from, which its {steps[-1].name}"
        "/state.json does not record (not necessarily this folder's file of that name)"
    )


def _import_difference(staged: list[Any], placed: list[Any], source: str) -> str:
    """How the placed run (its :func:`_import_identity`; imported from ``source``) differs from
    the one just converted: other checkpoints, other weights (another official file), or other
    settings (the extra keys that differ: ``--image-size``, ``--latent-stats`` …)."""
    if [s[0] for s in staged] != [p[0] for p in placed]:
        return (
            f"it holds checkpoint(s) {', '.join(p[0] for p in placed)} where this import makes "
            f"{', '.join(s[0] for s in staged)} (imported from other files: {source})"
        )
    if any(s[1] != p[1] for s, p in zip(staged, placed, strict=True)):
        return (
            "its weights differ from those this import converts to (imported from other "
            f"files: {source})"
        )
    keys = sorted(
        {
            k
            for s, p in zip(staged, placed, strict=True)
            for k in {*(s[2] or {}), *(p[2] or {})}
            if (s[2] or {}).get(k) != (p[2] or {}).get(k)
        }
    )
    return (
        f"it was imported with other settings: its recorded {name_items(keys)} differ "
        "(--image-size, --latent-stats, --num-heads set them)"
    )


def _check_same_import(staged: Path, target: Path) -> None:
    """Refuse unless ``target`` holds the run this import just converted into ``staged`` (the
    same weights and settings, whatever path named the official file)."""
    mine, placed = _import_identity(staged), _import_identity(target)
    if mine == placed:
        return
    if mine is None or placed is None:  # checked by `_existing_run`; changed since
        why = "it is not a sealed imported run"
    else:
        why = _import_difference(mine, placed, _recorded_source(target))
    raise CheckpointError(
        f"run {target} already exists and holds another import: {why}",
        f"pick another --out, or move that run away (`repackctl runs rm {target.name}`) to "
        "import these files under this name",
    )


def _refuse_dit_options_without_dit(
    dit: str | Path | None, latent_stats: str | Path | None, num_heads: int | None
) -> None:
    """``--latent-stats`` and ``--num-heads`` only shape the DiT run: without ``--dit`` they
    would be accepted and take no effect (no run records them), so they are refused."""
    given = [
        f
        for f, v in (("--latent-stats", latent_stats), ("--num-heads", num_heads))
        if v is not None
    ]
    if dit is None and given:
        raise ConfigError(
            f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to the DiT "
            "import, and no --dit was given: nothing would record "
            f"{'them' if len(given) > 1 else 'it'}",
            f"add --dit <stage-2 .pt> to import the DiT, or leave {' and '.join(given)} out",
        )


def _convert_all(
    staging: Path,
    root: Path,
    out: str,
    stage1: str | Path | None,
    dit: str | Path | None,
    refiner: str | Path | None,
    latent_stats: str | Path | None,
    image_size: int,
    num_heads: int | None,
    trust_pickle: bool,
    progress: ProgressFactory,
) -> ImportResult:
    """Map and write each given stage under ``staging`` (paths inside point at ``root``)."""
    result = ImportResult()
    pack = None
    with progress("import official", total=3) as bar:
        if stage1 is not None:
            pack = _import_stage1(result, staging, out, stage1, image_size, trust_pickle)
        bar.advance()
        if dit is not None:
            link = _pack_link(out, root, staging, pack)
            _import_dit(
                result, staging, out, dit, latent_stats, num_heads, trust_pickle, pack, link
            )
        bar.advance()
        if refiner is not None:
            link = _pack_link(out, root, staging, pack)
            _import_refiner(result, staging, out, refiner, image_size, trust_pickle, pack, link)
        bar.advance()
    return result


def _pack_link(out: str, root: Path, staging: Path, pack: Any) -> dict[str, Any]:
    """How a DiT or refiner run names its imported stage-1 run (checkpoint under ``root``)."""
    return {
        "run": f"{out}-pack",
        "checkpoint": str(root / pack.checkpoint.relative_to(staging)),
        "pack_id": pack.pack_id,
    }


def _import_stage1(
    result: ImportResult,
    staging: Path,
    out: str,
    stage1: str | Path,
    image_size: int,
    trust_pickle: bool,
) -> Any:
    """Write the stage-1 (pack) run and return it loaded, for the later stages to reference."""
    from repackctl.encoders.base import EncoderSpec
    from repackctl.pack.load import load_pack

    obj = safe_load(stage1, trust_pickle)
    sd = _state_dict(obj, stage1)
    weights, config, report = map_stage1(sd, image_size)
    dino = [k for k in sd if k.startswith("encoder.dino.")]
    spec = EncoderSpec(
        id="dinov3-vitb16",
        arch=DINOV3_ARCH,
        patch_size=16,
        input_size=image_size,
        dim=config.projection.in_channels,
        grid=config.decoder.latent_size,
        prefix_tokens=5,
        weights="official:stage1",
        weights_sha256=tensors_sha256(sd, dino) if dino else "",
        extra={"token_rule": "post-norm patch tokens, CLS + 4 registers dropped"},
    )
    step = int(obj.get("global_step", 0) or 0)
    extra = {
        "stage": "pack",
        "autoencoder_config": config.to_dict(),
        "method": "repack",
        "encoder": spec.attrs(),
        "cache": {"root": None, "entry": None, "features": spec.entry_id()},
        "latent_shape": [config.projection.latent_channels] + [config.decoder.latent_size] * 2,
        "imported_from": {"file": _source_path(stage1), "notes": report.notes},
    }
    result.pack = _save_run(staging, f"{out}-pack", step, {"model": weights, "ema": weights}, extra)
    pack = load_pack(result.pack)
    result.reports.append(report)
    return pack


def _import_dit(
    result: ImportResult,
    staging: Path,
    out: str,
    dit: str | Path,
    latent_stats: str | Path | None,
    num_heads: int | None,
    trust_pickle: bool,
    pack: Any,
    pack_link: dict[str, Any],
) -> None:
    """Write the stage-2 (DiT) run with its latent stats and official sampling defaults."""
    obj = safe_load(dit, trust_pickle)
    missing = [k for k in ("model", "ema") if k not in obj]
    if missing:
        raise WeightsError(f"{dit} has no {missing} state dicts", "pass the stage-2 .pt")
    model_sd, config, report = map_stage2(obj["model"], num_heads)
    _check_dit_fits_pack(config, pack)
    ema_sd, _, _ = map_stage2(obj["ema"], config=config)
    train_cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    multiplier = _stage2_latent_multiplier(train_cfg, dit)  # another transport: refused
    stats = _load_stats(latent_stats, config.in_channels, trust_pickle)
    if multiplier != 1.0:  # theirs: x·std / m + mean; ours: x·std + mean
        stats = {**stats, "std": [s / multiplier for s in stats["std"]]}
        stats["latent_multiplier"] = multiplier
        report.notes.append(
            f"data.latent_multiplier {multiplier:g} of its training config folded into the "
            "latent std (std / multiplier), as their sampling de-normalises"
        )
    official_sampling_defaults(train_cfg.get("sample"))  # a non-Euler sampler: refused first
    extra = {
        "stage": "dit",
        "model_id": registered_model_id(config),
        "model_config": config.to_dict(),
        "latent_stats": stats,
        "latent_shape": [config.in_channels, config.input_size, config.input_size],
        "pack": pack_link,
        "cache": {"root": None, "entry": None, "latents": None, "features": None},
        "num_classes": config.num_classes,
        "class_names": None,
        # their τ = 1 − t and prediction x − ε: repackctl.sample.run wraps the model
        "velocity_convention": "official",
        "transport": {
            "time_convention": "official: t=1 data, t=0 noise",
            "prediction": "x - eps",
        },
        "repa": {},
        "imported_from": {"file": _source_path(dit), "sampling": train_cfg.get("sample")},
    }
    step = int(obj.get("global_step", 0) or 0)
    ckpt = _save_run(staging, f"{out}-dit", step, {"model": model_sd, "ema": ema_sd}, extra)
    result.dit = ckpt
    result.sampling = write_sampling_json(ckpt.parent.parent, train_cfg.get("sample"))
    result.reports.append(report)


#: their ``ImgLatentDataset`` / sampling default when ``data`` has no ``latent_multiplier``
_THEIR_DEFAULT_MULTIPLIER = 0.18215


def _stage2_latent_multiplier(train_cfg: dict[str, Any], path: str | Path) -> float:
    """The ``data.latent_multiplier`` their sampling divides by (``(x·std) / m + mean``), from
    the training config stored in the stage-2 .pt (1 without a ``data`` section: the release's
    value); a ``transport`` other than the Linear path with velocity prediction is refused, since
    the imported DiT is called as such."""
    transport = train_cfg.get("transport")
    if isinstance(transport, dict):
        found = {
            "path_type": str(transport.get("path_type", "Linear")),
            "prediction": str(transport.get("prediction", "velocity")),
        }
        wrong = [
            f"transport.{k} {v!r}"
            for (k, v), want in zip(found.items(), ("linear", "velocity"), strict=True)
            if v.lower() != want
        ]
        if wrong:
            raise WeightsError(
                f"{path} was trained with {' and '.join(wrong)}: the import supports the "
                "release's path_type 'Linear' with prediction 'velocity' only, and would sample "
                "this DiT wrong",
                "import a DiT trained with the release's transport settings",
            )
    data = train_cfg.get("data")
    if not isinstance(data, dict):
        return 1.0
    m = data.get("latent_multiplier", _THEIR_DEFAULT_MULTIPLIER)
    if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m <= 0:
        raise WeightsError(
            f"{path}: its training config's data.latent_multiplier {m!r} is not a positive "
            "number, so its latents cannot be de-normalised",
            "import a stage-2 .pt whose config has a positive data.latent_multiplier",
        )
    return float(m)


def _check_dit_fits_pack(config: Any, pack: Any) -> None:
    """The DiT must make the latents stage 1 decodes: same channels, same side."""
    d, side = pack.latent_channels, pack.model.config.decoder.latent_size
    if (config.in_channels, config.input_size) == (d, side):
        return
    dit_shape = f"{config.in_channels}×{config.input_size}×{config.input_size}"
    image = pack.model.config.decoder.resolution
    hint = "import the DiT and stage 1 of the same release"
    if config.in_channels == d:  # only the side differs: maybe another image size
        hint += (
            f"; if the release makes {config.input_size * (image // side)}-px images, pass "
            f"--image-size {config.input_size * (image // side)}"
        )
    raise WeightsError(
        f"the DiT makes {dit_shape} latents, the stage-1 model decodes {d}×{side}×{side} "
        f"(at --image-size {image}): its images would be the wrong size or sampling would fail",
        hint,
    )


def _import_refiner(
    result: ImportResult,
    staging: Path,
    out: str,
    refiner: str | Path,
    image_size: int,
    trust_pickle: bool,
    pack: Any,
    pack_link: dict[str, Any],
) -> None:
    """Write the stage-3 (refiner) run, checking it matches stage 1's latent channels."""
    obj = safe_load(refiner, trust_pickle)
    weights, config, report = map_stage3(_state_dict(obj, refiner), image_size)
    if config.latent_channels != pack.latent_channels:
        raise WeightsError(
            f"the refiner takes {config.latent_channels} latent channels, stage 1 makes "
            f"{pack.latent_channels}",
            "import the refiner of the same release",
        )
    extra = {
        "stage": "refine",
        # the official refiner was trained on raw stage-1 latents (prepare_offline_data)
        "latent_convention": "raw",
        "refiner_config": config.to_dict(),
        "pack": pack_link,
        "imported_from": {"file": _source_path(refiner), "notes": report.notes},
    }
    step = int(obj.get("global_step", 0) or 0)
    result.refiner = _save_run(
        staging, f"{out}-refine", step, {"model": weights, "ema": weights}, extra
    )
    result.reports.append(report)
