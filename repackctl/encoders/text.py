"""The frozen text-encoder contract, and the Hugging Face ``transformers`` wrapper behind it.

A text encoder maps captions to per-token features and one pooled vector per caption, the two
inputs of a text-conditioned MMDiT (REPA ``train_t2i.py`` feeds CLIP token features to a linear
``context_embedder``; SD3, Esser et al. 2024, adds a pooled vector to the adaLN conditioning):

    encode(captions: list[str]) -> TextFeatures(tokens (B, L, C) float32,
                                                mask   (B, L)    bool, True = real token,
                                                pooled (B, C)    float32)

Every caption is padded (or truncated) to the encoder's ``max_length`` so that features of any
batch have the same L and can be stored side by side in the cache. ``describe()`` holds every
attribute that changes the numbers (id, dimensions, length, pooling, weights and their sha256, and
``files_sha256``: the sha256 of the config and tokenizer files, which change the token ids or the
model as much as the weights do). ``identity_differences`` compares two such records, and
``max_length`` is refused above the model's position embeddings (``max_position_embeddings``).

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
from repackctl.files import sha256_file_cached

Pooling = Literal["mean", "model"]

#: The files besides the weights that change the features: the model's config and every file a
#: ``transformers`` tokenizer reads (vocabularies, merges, normalisation, special tokens).
IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


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


def files_sha256(model_dir: Path, tokenizer_dir: Path | None = None) -> dict[str, str]:
    """sha256 of each ``IDENTITY_FILES`` file present, read from disk (once per process and file
    version): the model folder's under their names, a separate tokenizer folder's (a diffusers
    pipeline's ``tokenizer/``) under ``tokenizer/NAME``."""
    folders = {"": Path(model_dir)}
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != Path(model_dir).resolve():
        folders["tokenizer/"] = Path(tokenizer_dir)
    return {
        f"{prefix}{name}": sha256_file_cached(folder / name)
        for prefix, folder in folders.items()
        for name in IDENTITY_FILES
        if (folder / name).is_file()
    }


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two ``describe()`` records in the files the features depend on: the
    weights, and each config / tokenizer file (one phrase each; empty: the same). A record
    written before ``files_sha256`` was recorded is compared on its weights only."""
    out = []
    old, new = recorded.get("weights_sha256"), current.get("weights_sha256")
    if old and new and old != new:
        out.append(f"weights model.safetensors (sha256 {old[:12]}… then, {new[:12]}… now)")
    before, now = recorded.get("files_sha256"), current.get("files_sha256")
    if before is None or now is None:
        return out
    for name in sorted(set(before) | set(now)):
        a, b = before.get(name), now.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"{name} (absent then, present now)")
        elif b is None:
            out.append(f"{name} (present then, missing now)")
        else:
            out.append(f"{name} (sha256 {a[:12]}… then, {b[:12]}… now)")
    return out


def check_max_length(max_length: int, model: nn.Module, encoder_id: str) -> None:
    """Refuse a caption length the model cannot take: under 2 tokens, or above its position
    embeddings (``max_position_embeddings`` in its config), before anything is encoded."""
    setting = "--max-length (captions max_length)"
    if max_length < 2:
        raise ConfigError(
            f"{setting} {max_length} is too short for text encoder {encoder_id}",
            hint="use e.g. 77 (CLIP's length)",
        )
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigError(
            f"{setting} {max_length} exceeds the {limit} token positions of text encoder "
            f"{encoder_id} (max_position_embeddings in its config.json)",
            hint=f"pass --max-length {limit} or less, or leave it unset for the encoder's default",
        )


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
        files_sha256: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_max_length(max_length, model, id)
        self.id = id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pooling = pooling
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.files_sha256 = files_sha256  # None: not known (an encoder that does not record them)
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
        } | ({} if self.files_sha256 is None else {"files_sha256": dict(self.files_sha256)})

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
