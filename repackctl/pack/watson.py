"""Watson-DFT perceptual distance (the RGB variant of the official RePack stage 1).

Czolbe, Krause, Cox & Igel 2020, "A Loss Function for Generative Neural Networks Based on
Watson's Perceptual Model" (NeurIPS), §3, Watson's model on the discrete Fourier transform.
The official RePack code wraps the authors' implementation (guanfangdong/RePack-then-Refine
``stage1/repack/losses/watson_loss.py`` and ``watson_src/{watson_fft.py, rfft2d.py,
color_wrapper.py, shift_wrapper.py, loss_provider.py}``); this module is written from the paper's
formulas, with the learned parameters the official reads from ``rgb_watson_fft_trial0.pth``.

For each YCbCr channel of images in [0, 1] (the official maps [−1, 1] images to [0, 1] first), on
the non-overlapping 8 × 8 blocks k of the reference x and the distorted image x̃:

- spectra: C_k = rFFT2(block k) / 64 (8 × 5 coefficients; C_00k is the block's mean),
  amplitudes |C|, phases φ;
- luminance masking: t_ijk = t_ij · (|C_00k| / mean_k |C_00k|)^α, thresholds t = exp(t̃);
- contrast masking: s_ijk = smax(t_ijk, |C_ijk|^w · t_ijk^(1−w)), w = sigmoid(w̃), where
  smax(a, b) = a·softmax(a, b)₀ + b·softmax(a, b)₁ is the soft maximum of the paper;
- amplitude distance: (Σ_ijk |(|C_ijk| − |C̃_ijk|) / s_ijk|^β)^(1/β);
- phase distance: Σ_ijk w_ij · ∠(φ_ijk, φ̃_ijk), the angle between the phases in [0, π], with
  w = exp(w̃_phase) and 0 for the four real-valued coefficients (0, 0), (0, 4), (4, 0), (4, 4).

All masking comes from the *reference*. The channel distances are combined with the weights
softmax(w̃) over (Y, Cb, Cr). ``WatsonDFT`` returns one distance per sample, (B,).

Where this differs from the official code, and why:

- Reference and distorted image: the official ``WatsonLoss.forward(pred, target)`` is called by
  ``WeightedLossCollection`` as ``(inputs, reconstructions)`` and hands them on to a distance
  that takes its second argument as the reference, so the official masks with the
  *reconstruction*. The paper masks with the reference image; here the original image is the
  reference (``WatsonDFT(reference=target, distorted=recon)``).
- Random block-grid shift: none. The official ``ShiftWrapper`` (a random 0–7 pixel shift of the
  grid with replicate padding, drawn from NumPy's global RNG) is used only when the loss is built
  with ``deterministic=False``; RePack's ``WatsonLoss`` builds it with ``deterministic=True`` and
  its config does not change that, so the official grid is fixed, and so is ours. The distance
  draws no random numbers at all, so a resumed run stays bit-identical without any RNG state.
- The mean DC amplitude of the luminance masking is taken per image; the official averages it
  over the whole (per-process) batch, which makes a sample's distance depend on the samples
  beside it and on how the batch is split over processes.
- No ε offsets in the pooling and no shrunk cosine in the phase angle: the official adds 1e-10
  inside and after |·|^β and takes acos(cos Δφ · (1 − 10⁻⁷)), which gives an image a positive
  distance to itself. Here |·|^β is evaluated exactly (with a zero subgradient at 0) and the
  angle is |atan2(sin Δφ, cos Δφ)|, so the distance of an image to itself is exactly 0 and the
  gradients stay finite. Other values agree with the official to float32 precision (for
  non-degenerate blocks).

The parameters are only ever read from a local file (``pack.watson_weights``): the official
state dict (``torch.load(weights_only=True)``, nothing unpickled beyond tensors) or the same keys
in a ``.safetensors`` file. Their keys and shapes are checked; a wrong file is refused.

Legend: B batch, c YCbCr channel, K blocks, 8×5 rFFT coefficients of an 8×8 block.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from repackctl.errors import ConfigError, WeightsError

# The setting that names the parameters file; used in messages so users know what to set.
WATSON_SETTING = "pack.watson_weights"
WATSON_ENV = "REPACKCTL_PACK__WATSON_WEIGHTS"

BLOCK = 8  # Watson's block size (JPEG's)
SPECTRUM = (BLOCK, BLOCK // 2 + 1)  # rFFT coefficients of one block: (8, 5)
# the coefficients of a real block's rFFT that are real numbers: no phase to compare
REAL_COEFFICIENTS = ((0, 0), (0, BLOCK // 2), (BLOCK // 2, 0), (BLOCK // 2, BLOCK // 2))
EPS = 1e-10  # keeps amplitudes, ratios and phases of all-zero coefficients finite

# The official state dict (``ColorWrapper`` of three ``WatsonDistanceFft``): Y, Cb, Cr
OFFICIAL_CHANNELS = ("ly", "lcb", "lcr")
# per-channel official name → (our buffer, shape of one channel's value)
_PER_CHANNEL = {
    "t_tild": ("log_thresholds", SPECTRUM),
    "alpha": ("luminance_exponent", ()),
    "w_tild": ("masking_logit", ()),
    "beta": ("pooling_exponent", ()),
    "w_phase_tild": ("log_phase_weights", SPECTRUM),
}


def official_layout() -> dict[str, tuple[int, ...]]:
    """Key → shape of the official RGB Watson-DFT state dict (``rgb_watson_fft_trial0.pth``)."""
    layout = {"w_tild": (3,), "to_YCbCr.transform": (3, 3), "to_YCbCr.bias": (3,)}
    for channel in OFFICIAL_CHANNELS:
        layout[f"{channel}.blocksize"] = ()
        for name, (_, shape) in _PER_CHANNEL.items():
            layout[f"{channel}.{name}"] = shape
    return layout


def _safe_pow(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """x^p for x ≥ 0, with 0 ↦ 0 and a zero (sub)gradient there (x^p has an infinite slope at
    0 for p < 1: the learned pooling exponents are about 0.6)."""
    positive = x > 0
    base = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, base.pow(exponent), torch.zeros_like(x))


def _soft_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's smooth maximum: a·softmax(a, b)₀ + b·softmax(a, b)₁."""
    weight_a = torch.sigmoid(a - b)  # = softmax(a, b)₀
    return a * weight_a + b * (1 - weight_a)


def block_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(B, c, H, W) → rFFT of every 8 × 8 block divided by 64: (B, c, K, 8, 5) complex."""
    b, c, hh, ww = x.shape
    blocks = x.reshape(b, c, hh // BLOCK, BLOCK, ww // BLOCK, BLOCK)  # (B, c, h, 8, w, 8)
    blocks = blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, BLOCK, BLOCK)  # (B, c, K, 8, 8)
    return torch.fft.rfft2(blocks, norm="forward")  # (B, c, K, 8, 5)


def check_image_size(height: int, width: int) -> None:
    """Refuse images the 8 × 8 block grid does not tile (the official asserts the same)."""
    if height % BLOCK or width % BLOCK:
        raise ConfigError(
            f"the Watson-DFT distance needs images whose sides are multiples of {BLOCK}, not "
            f"{height}×{width}",
            "set --watson-weight 0 for this resolution",
        )


class WatsonDFT(nn.Module):
    """Watson-DFT distance of a distorted RGB image to a reference: (B,) per sample (frozen)."""

    def __init__(self) -> None:
        super().__init__()
        # every parameter as a frozen buffer, the three YCbCr channels stacked on dim 0; the
        # values are placeholders (the authors' initial values) until ``load_watson`` fills in
        # the learned ones
        self.register_buffer("rgb_to_ycbcr", torch.eye(3))  # (c, RGB)
        self.register_buffer("ycbcr_offset", torch.zeros(3))  # (c,)
        self.register_buffer("channel_logits", torch.zeros(3))  # (c,)
        self.register_buffer("log_thresholds", torch.zeros(3, *SPECTRUM))  # (c, 8, 5)
        self.register_buffer("luminance_exponent", torch.full((3,), 0.1))  # (c,)
        self.register_buffer("masking_logit", torch.full((3,), -1.3863))  # (c,) w = 0.2
        self.register_buffer("pooling_exponent", torch.ones(3))  # (c,)
        self.register_buffer("log_phase_weights", torch.full((3, *SPECTRUM), -2.0))  # (c, 8, 5)
        mask = torch.ones(SPECTRUM)
        for i, j in REAL_COEFFICIENTS:
            mask[i, j] = 0.0
        self.register_buffer("phase_mask", mask, persistent=False)  # (8, 5)
        self.requires_grad_(False)

    def forward(self, reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
        """Distances of ``distorted`` to ``reference``, both (B, 3, H, W) in [−1, 1]: (B,)."""
        check_image_size(*reference.shape[-2:])
        dtype = torch.promote_types(reference.dtype, torch.float32)  # FFTs in float32 at least
        p = {name: value.to(dtype) for name, value in self.named_buffers()}
        c_ref = block_spectrum(_ycbcr(reference, p))  # (B, c, K, 8, 5)
        c_dis = block_spectrum(_ycbcr(distorted, p))  # (B, c, K, 8, 5)
        amp_ref, amp_dis = _amplitude(c_ref), _amplitude(c_dis)  # (B, c, K, 8, 5) each
        slack = _masked_thresholds(amp_ref, p)  # (B, c, K, 8, 5)
        beta = p["pooling_exponent"].view(1, 3, 1, 1, 1)
        error = _safe_pow((amp_ref - amp_dis).abs() / slack, beta)  # (B, c, K, 8, 5)
        amplitude = _safe_pow(error.flatten(2).sum(-1), 1 / beta.view(1, 3))  # (B, c)
        angle = _phase(c_dis) - _phase(c_ref)  # (B, c, K, 8, 5)
        angle = torch.atan2(torch.sin(angle), torch.cos(angle)).abs()  # in [0, π]
        phase_weights = p["log_phase_weights"].exp() * p["phase_mask"]  # (c, 8, 5)
        phase = (angle * phase_weights[:, None]).flatten(2).sum(-1)  # (B, c)
        # elementwise products and sums, never matmuls: autocast leaves them in this precision
        return ((amplitude + phase) * F.softmax(p["channel_logits"], dim=0)).sum(-1)  # (B,)

    def digest(self) -> str:
        """sha256 of the parameter values (what a run records to tell parameter files apart)."""
        h = hashlib.sha256()
        for name, value in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()


def _amplitude(spectrum: torch.Tensor) -> torch.Tensor:
    """|C|, kept off 0 by ε so that its gradient at an all-zero coefficient is finite."""
    return (spectrum.real.square() + spectrum.imag.square() + EPS**2).sqrt()


def _phase(spectrum: torch.Tensor) -> torch.Tensor:
    """arg C (the official's atan2(Im, Re + ε): finite gradients at an all-zero coefficient)."""
    return torch.atan2(spectrum.imag, spectrum.real + EPS)


def _ycbcr(rgb: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) RGB in [−1, 1] → YCbCr of the [0, 1] image, in the buffers' dtype."""
    rgb = (rgb.to(p["rgb_to_ycbcr"].dtype) + 1) / 2
    matrix = p["rgb_to_ycbcr"][None, :, :, None, None]  # (1, c, RGB, 1, 1)
    ycbcr = (matrix * rgb[:, None]).sum(2)  # (B, c, H, W)
    return ycbcr + p["ycbcr_offset"].view(1, 3, 1, 1)


def _masked_thresholds(amp_ref: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Luminance- then contrast-masked thresholds s from the reference amplitudes (B, c, K, 8, 5);
    ``p``: the distance's buffers."""
    dc = amp_ref[..., 0, 0]  # (B, c, K)
    mean_dc = dc.mean(-1, keepdim=True)  # (B, c, 1): per image
    luminance = ((dc + EPS) / (mean_dc + EPS)).pow(p["luminance_exponent"].view(1, 3, 1))
    t_l = p["log_thresholds"].exp()[:, None] * luminance[..., None, None]  # (B, c, K, 8, 5)
    w = torch.sigmoid(p["masking_logit"]).view(1, 3, 1, 1, 1)
    return _soft_max(t_l, (amp_ref + EPS).pow(w) * t_l.pow(1 - w))  # (B, c, K, 8, 5)


# --------------------------------------------------------------------------------------------
# Loading the parameters


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth`` state dict, nothing unpickled but tensors."""
    if not path.is_file():
        raise ConfigError(
            f"Watson-DFT parameters file not found: {path}",
            f"set {WATSON_SETTING} ({WATSON_ENV}) to an existing file (the official "
            "rgb_watson_fft_trial0.pth), or set --watson-weight 0",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # not a safetensors file
            raise WeightsError(
                f"cannot read {WATSON_SETTING} {path}: {exc}",
                "give the official rgb_watson_fft_trial0.pth or its tensors as .safetensors",
            ) from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, or not a torch file
        raise WeightsError(
            f"cannot read {WATSON_SETTING} {path} safely: {exc}",
            "give the official rgb_watson_fft_trial0.pth (a plain state dict of tensors), or "
            "convert it to .safetensors",
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(
            f"{WATSON_SETTING} {path} does not hold a state dict of tensors",
            "give the official rgb_watson_fft_trial0.pth",
        )
    return dict(data)


def _check_layout(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a file whose keys, shapes or values are not those of the official RGB model."""
    layout = official_layout()
    hint = (
        "give the RGB Watson-DFT parameters of Czolbe et al. (the official "
        "rgb_watson_fft_trial0.pth; not the greyscale or DCT ones)"
    )
    missing, extra = sorted(set(layout) - set(tensors)), sorted(set(tensors) - set(layout))
    if missing or extra:
        what = [f"lacks {', '.join(missing[:4])}"] if missing else []
        what += [f"has unknown {', '.join(extra[:4])}"] if extra else []
        raise WeightsError(f"{WATSON_SETTING} {path} {' and '.join(what)}", hint)
    for key, shape in layout.items():
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise WeightsError(
                f"{WATSON_SETTING} {path}: {key} has shape {tuple(value.shape)}, expected {shape}",
                hint,
            )
        if not torch.isfinite(value.double()).all():
            raise WeightsError(f"{WATSON_SETTING} {path}: {key} is not finite", hint)
    for channel in OFFICIAL_CHANNELS:
        if int(tensors[f"{channel}.blocksize"]) != BLOCK:
            raise WeightsError(
                f"{WATSON_SETTING} {path}: {channel}.blocksize is "
                f"{int(tensors[f'{channel}.blocksize'])}, this distance uses {BLOCK}",
                hint,
            )
        if float(tensors[f"{channel}.beta"]) <= 0:
            raise WeightsError(
                f"{WATSON_SETTING} {path}: {channel}.beta must be > 0 (a pooling exponent)", hint
            )


def load_watson(path: str | os.PathLike) -> WatsonDFT:
    """``WatsonDFT`` with the learned parameters of the official state dict at ``path``."""
    path = Path(path).expanduser()
    tensors = _read_tensors(path)
    _check_layout(path, tensors)
    state = {
        # the official stores the transposed matrix: YCbCr = RGB @ transform
        "rgb_to_ycbcr": tensors["to_YCbCr.transform"].t(),
        "ycbcr_offset": tensors["to_YCbCr.bias"],
        "channel_logits": tensors["w_tild"],
    }
    for name, (ours, _) in _PER_CHANNEL.items():
        state[ours] = torch.stack([tensors[f"{c}.{name}"] for c in OFFICIAL_CHANNELS])
    model = WatsonDFT()
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()})
    return model
