"""Settings of `repackctl captions` (nested as `[captions]` / `REPACKCTL_CAPTIONS__*`).

`repackctl captions` encodes every caption of every image of an existing cache entry with a
frozen text encoder, once, into ``text/<text-features-id>/`` of that entry (the text encoder
never runs inside the training loop).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class CaptionsSettings(BaseModel):
    """`repackctl captions`: captions of a cache entry → cached text features."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    SHORT: ClassVar[dict[str, str]] = {}
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Text encoder": ("text_encoder", "text_weights", "max_length"),
        "Data": ("entry", "captions"),
        "Storage": ("batch_size",),
    }

    text_encoder: str = Field(
        "minilm", description="text encoder id: minilm (built-in, offline) or clip (--text-weights)"
    )
    text_weights: str | None = Field(
        None, min_length=1, description="text encoder weights folder; none = the encoder's default"
    )
    max_length: int | None = Field(
        None,
        ge=2,
        description="tokens per caption (padded/truncated), at most the text encoder's positions "
        "(max_position_embeddings: MiniLM 512, CLIP 77; more is refused before anything is "
        "written); none = the encoder's (77)",
    )
    entry: str | None = Field(
        None,
        min_length=1,
        description="cache entry (dataset--split--res); none = the train-split built-in entry "
        "(image-folder with --captions; among several, the one with packed latents) and then its "
        "val-split built-in entries of the same resolution",
    )
    captions: str | None = Field(
        None,
        min_length=1,
        description="captions of a folder entry: an index file (JSONL/CSV, file + caption rows; "
        "default captions.jsonl/.csv in the folder; a relative path is the working directory's "
        "file, else the folder's) or coco:ROOT for MS-COCO 2017",
    )
    batch_size: int = Field(64, ge=1, description="captions per text-encoder forward")
