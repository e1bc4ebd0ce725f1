"""A CLIP text tower (Radford et al. 2021) from a local folder: REPA's text-to-image condition.

REPA (sihyun-yu/REPA ``train_t2i.py``, after U-ViT) conditions its MMDiT on the 77 token features
of CLIP ViT-L/14's text encoder. Here the tower is ``transformers.CLIPTextModel`` and its tokenizer
(``AutoTokenizer``: ``CLIPTokenizer`` or any tokenizer saved in the folder), read from a folder the
user brings: a ``CLIPTextModel`` / full ``CLIPModel`` folder (e.g. openai/clip-vit-large-patch14,
whose checkpoint also holds the vision tower, ignored here) or a diffusers pipeline folder with
``text_encoder/`` and ``tokenizer/``. Only ``model.safetensors`` is read: nothing is unpickled and
no hub is contacted. The identity recorded with the features is hashed from the bytes on disk:
``weights_sha256`` (``model.safetensors``) and ``files_sha256`` (config and tokenizer files,
``tokenizer/NAME`` for a pipeline's separate tokenizer folder). Pooled feature: the model's
``pooler_output`` (the end-of-text token after the final norm).

REPA / U-ViT feed all 77 token features, padding included, to the MMDiT; here the mask marks the
padding (False), and the MMDiT ignores it. To reproduce REPA exactly, pass an all-True mask.
"""

from __future__ import annotations

from pathlib import Path

from repackctl.encoders.text import HFTextEncoder, files_sha256, load_local
from repackctl.errors import WeightsError
from repackctl.files import sha256_file_cached

DEFAULT_MAX_LENGTH = 77  # CLIP's context length (REPA / U-ViT use all 77 token features)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either a fast tokenizer or BPE vocab+merges
_BRING = (
    "a folder with config.json, model.safetensors and the tokenizer files (tokenizer.json, or "
    "vocab.json + merges.txt, with tokenizer_config.json), e.g. the files of "
    "openai/clip-vit-large-patch14; pass it as clip:PATH"
)


def _folders(root: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder): the folder itself, or a diffusers pipeline's parts."""
    if (root / "text_encoder" / "config.json").is_file():
        tok = root / "tokenizer" if (root / "tokenizer").is_dir() else root / "text_encoder"
        return root / "text_encoder", tok
    return root, root


def _check_folder(weights: str | None) -> tuple[Path, Path]:
    if not weights:
        raise WeightsError("the CLIP text encoder needs local weights", hint=_BRING)
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise WeightsError(f"CLIP weights folder not found: {root}", hint=_BRING)
    model_dir, tok_dir = _folders(root)
    missing = [n for n in ("config.json", "model.safetensors") if not (model_dir / n).is_file()]
    if not any((tok_dir / n).is_file() for n in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        unsafe = (model_dir / "pytorch_model.bin").is_file()
        extra = "; only pytorch_model.bin is there: convert it to safetensors" if unsafe else ""
        raise WeightsError(
            f"CLIP weights folder {root} lacks {', '.join(missing)}{extra}", hint=_BRING
        )
    return model_dir, tok_dir


def clip_text(*, weights: str | None = None, max_length: int | None = None) -> HFTextEncoder:
    """CLIP text tower from the local folder ``weights`` (no default: the user brings it)."""
    from transformers import CLIPTextModel

    model_dir, tok_dir = _check_folder(weights)
    sha = sha256_file_cached(model_dir / "model.safetensors")  # the bytes that are loaded
    files = files_sha256(model_dir, tok_dir)
    model, tokenizer = load_local(model_dir, CLIPTextModel, tok_dir)
    limit = int(model.config.max_position_embeddings)
    length = max_length or min(DEFAULT_MAX_LENGTH, limit)
    if length > limit:
        raise WeightsError(
            f"--max-length (captions max_length) {length} exceeds the CLIP model's {limit} "
            "token positions (max_position_embeddings in its config.json)",
            hint=f"pass --max-length {limit} or less (max_length ≤ {limit})",
        )
    return HFTextEncoder(
        id="clip-text",
        model=model,
        tokenizer=tokenizer,
        max_length=length,
        pooling="model",
        weights=f"folder:{Path(str(weights)).expanduser().resolve().name}",
        weights_sha256=sha,
        files_sha256=files,
    )
