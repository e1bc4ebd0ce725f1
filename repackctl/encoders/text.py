"""The frozen text-encoder contract, and the Hugging Face ``transformers`` wrapper behind it.

A text encoder maps captions to per-token features and one pooled vector per caption, the two
inputs of a text-conditioned MMDiT (REPA ``train_t2i.py`` feeds CLIP token features to a linear
``context_embedder``; SD3, Esser et al. 2024, adds a pooled vector to the adaLN conditioning):

    encode(captions: list[str]) -> TextFeatures(tokens (B, L, C) float32,
                                                mask   (B, L)    bool, True = real token,
                                                pooled (B, C)    float32)

Every caption is padded (or truncated) to the encoder's ``max_length`` so that features of any
batch have the same L and can be stored side by side in the cache. ``describe()`` holds every
attribute that changes the numbers (id, dimensions, length, pooling, weights and their sha256).

Text encoders are registered under the ``repackctl.text_encoders`` entry-point group; the factory
is called as ``factory(weights=..., max_length=...)``. Weights are read from local files only
(``local_files_only=True``, ``use_safetensors=True``): no hub access, nothing unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from repackctl.errors import ConfigError, WeightsError

Pooling = Literal["mean", "model"]


@dataclass(frozen=True)
class TextFeatures:
    """Per-token features, their padding mask and the pooled vector of a batch of captions."""

    tokens: Tensor  # (B, L, C) float
    mask: Tensor  # (B, L) bool, True = real token
    pooled: Tensor  # (B, C) float

    def __post_init__(self) -> None:
        b, length, c = self.tokens.shape
        if tuple(self.mask.shape) != (b, length) or self.mask.dtype != torch.bool:
            raise ConfigError(
                f"text mask {tuple(self.mask.shape)} {self.mask.dtype} does not fit tokens "
                f"{tuple(self.tokens.shape)}",
                hint="the mask is (B, L) bool, True for real tokens",
            )
        if tuple(self.pooled.shape) != (b, c):
            raise ConfigError(
                f"pooled text features {tuple(self.pooled.shape)} are not ({b}, {c})",
                hint="pooled features have one C-vector per caption",
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TextFeatures:
        """The same features on ``device``."""
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


@runtime_checkable
class TextEncoder(Protocol):
    """What the rest of repackctl needs from a frozen text encoder."""

    id: str  # e.g. "minilm-l6" or "clip-text" (safe in paths)
    dim: int  # token and pooled width C
    max_length: int  # L: every caption is padded / truncated to it
    weights_sha256: str  # sha256 of the weights file

    def encode(self, captions: list[str]) -> TextFeatures: ...

    def describe(self) -> dict[str, Any]: ...


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens of each row (sentence-transformers' mean pooling)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (tokens * m).sum(dim=1)  # (B, C)
    count = m.sum(dim=1).clamp_min(1e-9)  # (B, 1)
    return total / count  # (B, C)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs while loading; restore them after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_local(
    folder: Path, model_cls: Any, tokenizer_folder: Path | None = None
) -> tuple[nn.Module, Any]:
    """Model (safetensors only) and tokenizer from local folders; never contacts a hub."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        try:
            model = model_cls.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(tokenizer_folder or folder), local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise WeightsError(
                f"cannot load the text encoder from {folder}: {e}",
                hint="the folder needs config.json, model.safetensors and the tokenizer files",
            ) from e
    return model, tokenizer


class HFTextEncoder(nn.Module):
    """A frozen ``transformers`` text model and its tokenizer under the ``TextEncoder`` contract.

    ``pooling="mean"`` averages the real tokens (sentence-transformers); ``"model"`` takes the
    model's own ``pooler_output`` (CLIP: the final-norm feature of the end-of-text token).
    """

    def __init__(
        self,
        *,
        id: str,
        model: nn.Module,
        tokenizer: Any,
        max_length: int,
        pooling: Pooling,
        weights: str,
        weights_sha256: str,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ConfigError(
                f"text max_length {max_length} is too short", hint="use e.g. 77 (CLIP's length)"
            )
        self.id = id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pooling = pooling
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.dim = int(model.config.hidden_size)

    def train(self, mode: bool = True) -> HFTextEncoder:
        """Frozen: the wrapped model stays in eval mode (no dropout) whatever is asked."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """JSON-safe attributes that change the features (stored beside cached features)."""
        return {
            "id": self.id,
            "arch": type(self.model).__name__,
            "dim": self.dim,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "padding": "max_length",
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
        }

    @torch.no_grad()
    def encode(self, captions: list[str]) -> TextFeatures:
        """Captions → tokens (B, L, C), mask (B, L), pooled (B, C), L = ``max_length``."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ConfigError(
                "text encoders take a list of caption strings",
                hint="wrap a single caption in a list: encode([caption])",
            )
        if not captions:
            raise ConfigError("no captions to encode", hint="pass at least one caption")
        batch = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)  # (B, L)
        mask = batch["attention_mask"].to(self.device).bool()  # (B, L)
        out = self.model(input_ids=ids, attention_mask=mask.long())
        tokens = out.last_hidden_state.float()  # (B, L, C)
        if self.pooling == "mean":
            pooled = masked_mean(tokens, mask)  # (B, C)
        else:
            pooled = out.pooler_output.float()  # (B, C)
        return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)
