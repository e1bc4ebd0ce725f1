"""The built-in frozen encoder: a small ViT whose weights ship inside the package.

It stands in for DINOv3 when nothing can be downloaded, so that ``repackctl extract`` works
offline. The network is a pre-norm ViT (Dosovitskiy et al., 2021, "An Image is Worth 16x16
Words") with patch 8 (embedded by a small stride-8 convolutional stem, Xiao et al., 2021), a CLS
token, a final LayerNorm and fixed 2-D sin-cos positions (the MAE recipe, He et al., 2022)
evaluated at *normalised* patch-centre coordinates, so any resolution that is a multiple of 8
works without interpolating a table: the encoder runs at the dataset resolution, with no resize
(``spec.input_size = resolution``, ``grid = resolution // 8``).

Like the paper's DINOv3 tokens, the output is the final-norm patch tokens with CLS dropped,
(B, T, C), plus the normed CLS vector (B, C); ``layer=k`` returns block ``k``'s output (0-based)
through the same final norm instead.

Weights:
- ``weights=None`` (or ``"builtin"``): the shipped ``weights/builtin.safetensors``, trained
  self-supervised (MAE + InfoNCE, no label) by ``scripts/ssl_builtin_encoder.py`` on the
  built-in dataset (command, settings and held-out scores in ``weights/builtin.json``);
- ``weights="random"``: seeded random init (``spec.weights = "random:<seed>"``);
- a path: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
  ``torch.load(weights_only=True)``; nothing is ever unpickled.

``spec.weights_sha256`` is the sha256 of the weights file (of the tensors, for random weights),
so that the cache tells extractions with different numbers apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from repackctl.encoders.base import EncoderSpec, FrozenEncoder
from repackctl.errors import ConfigError, WeightsError
from repackctl.files import sha256_file

__all__ = [
    "ARCH",
    "BuiltinEncoder",
    "BuiltinViT",
    "SHIPPED_WEIGHTS",
    "builtin_encoder",
    "load_state_dict_file",
    "save_weights",
    "state_sha256",
]

# Architecture (fixed: a weights file either fits it or is refused).
PATCH = 8
WIDTH = 96
DEPTH = 4
HEADS = 4
MLP_RATIO = 4
#: Patch-centre coordinates are expressed in cells of this grid, the training grid (64 px / 8):
#: at the training resolution the positions are exactly the integer-grid sin-cos of MAE.
POS_REF_GRID = 8
ARCH = f"builtin-vit-convstem-p{PATCH}-w{WIDTH}-d{DEPTH}-h{HEADS}"
#: The network sees [-1, 1]: it was trained with mean = std = 0.5.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "builtin.safetensors"
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin")


# ---------------------------------------------------------------------------------------------
# The network (legend: B batch, T tokens, D width, H heads, g grid side)
# ---------------------------------------------------------------------------------------------


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (g·g, D) at patch centres in units of ``POS_REF_GRID`` cells."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * (POS_REF_GRID / grid) - 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")  # (g, g) each, row-major tokens
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    parts = []
    for coord in (yy.reshape(-1), xx.reshape(-1)):
        ang = coord[:, None] * omega[None, :]  # (g·g, D/4)
        parts += [torch.sin(ang), torch.cos(ang)]
    return torch.cat(parts, dim=1).float()  # (g·g, D)


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and a GELU MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, d) each
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))  # (B, T, D)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, T, D)
        return x


class BuiltinViT(nn.Module):
    """Patch-8 ViT (conv stem) with a CLS token, sin-cos positions for any grid and a final LayerNorm."""

    def __init__(
        self,
        dim: int = WIDTH,
        depth: int = DEPTH,
        heads: int = HEADS,
        mlp_ratio: int = MLP_RATIO,
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.patch = dim, depth, PATCH
        # A small convolutional stem of total stride 8 instead of one 8x8 patchify convolution:
        # it makes the ViT train much faster on little compute (Xiao et al., 2021, "Early
        # Convolutions Help Transformers See Better"); token i still describes its 8x8 patch.
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, dim, kernel_size=2, stride=2),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._pos: dict[int, torch.Tensor] = {}  # grid → positions; computed, never stored

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """ViT init: truncated-normal(0.02) linears and CLS, Kaiming stem, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                # Kaiming-uniform for the GELU stem (the usual conv init, drawn from `generator`).
                bound = math.sqrt(6.0 / m.weight[0].numel())
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04, generator=generator)

    def pos_embed(self, grid: int, device: torch.device) -> torch.Tensor:
        if grid not in self._pos:
            self._pos[grid] = sincos_2d(grid, self.dim)
        return self._pos[grid].to(device)  # (g·g, D)

    def forward(
        self, x: torch.Tensor, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, R, R) → normed patch tokens (B, T, D) and CLS (B, D)."""
        p = self.patch_embed(x)  # (B, D, g, g)
        grid = p.shape[-1]
        p = p.flatten(2).transpose(1, 2) + self.pos_embed(grid, p.device)  # (B, T, D)
        h = torch.cat([self.cls_token.expand(p.shape[0], -1, -1), p], dim=1)  # (B, 1+T, D)
        last = self.depth - 1 if layer is None else layer
        for i, blk in enumerate(self.blocks):
            h = blk(h)  # (B, 1+T, D)
            if i == last:
                break
        h = self.norm(h)  # (B, 1+T, D)
        return h[:, 1:], h[:, 0]  # (B, T, D), (B, D)


# ---------------------------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------------------------


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Digest of a state dict's names, dtypes, shapes and bytes (for weights with no file)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(
    network: BuiltinViT,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``network``'s weights as safetensors (temporary name, then rename).

    ``dtype=torch.float16`` halves the file (the shipped weights); loading computes in float32.
    """
    from repackctl.files import save_safetensors

    path = Path(path)
    state = {
        k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
        for k, v in network.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors(state, tmp, {"arch": ARCH, **(metadata or {})})
    tmp.chmod(0o644)  # safetensors creates the file owner-only; a shipped file must be readable
    tmp.replace(path)
    return path


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a ``.safetensors`` or ``.pth`` file without unpickling any code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}",
            hint="pass an existing .safetensors file, 'random', or nothing for the shipped weights",
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(
                f"cannot read safetensors file {path}: {e}",
                hint="the file is damaged or not a safetensors file; re-create or re-download it",
            ) from e
    if suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise WeightsError(
                f"refusing to load {path}: it is not a plain tensor file ({type(e).__name__})",
                hint="save a plain state dict (torch.save(model.state_dict(), ...)) or, better, "
                "convert it to .safetensors",
            ) from e
        if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
            obj = next(iter(obj.values()))  # the usual {"model": state_dict} wrapper
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise WeightsError(
                f"{path} does not hold a state dict (name → tensor)",
                hint="save it with torch.save(network.state_dict(), path)",
            )
        return obj
    raise WeightsError(
        f"unsupported weights file type {path.suffix!r}: {path}",
        hint="use a .safetensors file (or a .pth state dict)",
    )


def _load_into(network: BuiltinViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; any missing, unexpected or mis-shaped tensor is a ``WeightsError``."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            details.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        raise WeightsError(
            f"{source} does not fit the built-in encoder ({ARCH}): " + "; ".join(details),
            hint="this file was saved from another network; the built-in encoder takes the "
            "output of scripts/ssl_builtin_encoder.py or builtin.save_weights()",
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(t.dtype))  # files may be float16; compute is float32


# ---------------------------------------------------------------------------------------------
# The frozen encoder and its factory
# ---------------------------------------------------------------------------------------------


class BuiltinEncoder(FrozenEncoder):
    """The built-in ViT behind the ``FrozenEncoder`` contract (frozen, eval mode)."""

    def __init__(self, spec: EncoderSpec, network: BuiltinViT) -> None:
        super().__init__(spec)
        self.network = network
        self.requires_grad_(False)
        self.eval()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, cls = self.network(x, layer=self.spec.layer)  # (B, T, D), (B, D)
        return tokens, cls


def _check_shipped(path: Path, digest: str) -> None:
    """Refuse shipped weights whose sha256 differs from the one ``builtin.json`` records beside
    them (a byte flipped or a file cut short in the installed package): loaded, they gave other
    features under the name ``builtin``, silently. Without a readable record nothing is checked
    (a checkout being rebuilt)."""
    try:
        recorded = json.loads(path.with_suffix(".json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(recorded, str) and recorded != digest:
        raise WeightsError(
            f"the shipped built-in encoder weights {path} are damaged: their sha256 "
            f"{digest[:12]}… differs from the {recorded[:12]}… that "
            f"{path.with_suffix('.json').name} records",
            hint="reinstall repackctl (in a checkout: git checkout -- repackctl/encoders/weights)"
            "; nothing was written",
        )


def builtin_encoder(
    *,
    weights: str | None = None,
    layer: int | None = None,
    resolution: int = 64,
    seed: int = 0,
) -> FrozenEncoder:
    """The built-in ViT-p8 at ``resolution`` (a multiple of 8), with shipped/random/file weights."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < PATCH:
        bad = True
    else:
        bad = resolution % PATCH != 0
    if bad:
        raise ConfigError(
            f"the built-in encoder needs a resolution that is a positive multiple of {PATCH}, "
            f"got {resolution!r}",
            hint="use the dataset resolution, e.g. --resolution 64",
        )
    if layer is not None and (
        isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < DEPTH
    ):
        raise ConfigError(
            f"the built-in encoder has blocks 0..{DEPTH - 1}, got layer={layer!r}",
            hint=f"pass --layer between 0 and {DEPTH - 1}, or leave it out for the final block",
        )

    network = BuiltinViT()
    if weights == "random":
        gen = torch.Generator().manual_seed(int(seed))
        network.init_weights(gen)
        tag, digest = f"random:{seed}", state_sha256(network.state_dict())
    else:
        if weights is None or weights == "builtin":
            path, tag = SHIPPED_WEIGHTS, "builtin"
            if not path.is_file():
                raise WeightsError(
                    f"the shipped built-in encoder weights are missing: {path}",
                    hint="reinstall repackctl, or rebuild them with "
                    "the command in weights/builtin.json (scripts/ssl_builtin_encoder.py)",
                )
        else:
            path = Path(weights).expanduser()
            tag = f"file:{path.name}"
        state = load_state_dict_file(path)  # a missing or unreadable file: its own error
        digest = sha256_file(path)
        if tag == "builtin":
            _check_shipped(path, digest)
        _load_into(network, state, str(path))

    spec = EncoderSpec(
        id="builtin",
        arch=ARCH,
        patch_size=PATCH,
        input_size=resolution,
        dim=WIDTH,
        grid=resolution // PATCH,
        layer=layer,
        prefix_tokens=1,
        mean=MEAN,
        std=STD,
        weights=tag,
        weights_sha256=digest,
        extra={"depth": DEPTH, "heads": HEADS, "pos": f"sincos-2d-ref{POS_REF_GRID}"},
    )
    return BuiltinEncoder(spec, network)
