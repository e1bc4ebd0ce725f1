"""Settings of `repackctl extract` (nested as `[extract]` / `REPACKCTL_EXTRACT__*`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from repackctl.paths import safe_name


class ExtractSettings(BaseModel):
    """`repackctl extract`: images → cache entry with frozen-encoder tokens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    SHORT: ClassVar[dict[str, str]] = {"encoder": "-e", "data": "-d", "num": "-n"}
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Encoder": ("encoder", "weights", "layer"),
        "Data": ("data", "split", "val_fraction", "resolution", "num", "flips", "strict"),
        "Storage": ("batch_size", "chunk", "shard"),
    }

    encoder: str = Field("builtin", description="encoder id (`repackctl plugins` lists them)")
    weights: str | None = Field(
        None,
        min_length=1,
        description="weights file (.safetensors/.pth), 'random', or none for the default",
    )
    layer: int | None = Field(None, description="intermediate block index; none = final layer")
    data: str = Field("builtin", description="data source: builtin, imagefolder:PATH, imagenet")
    split: str = Field("train", description="split of the data source")
    val_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="for a folder without split folders: hold out this seeded fraction of each "
        "class as split 'val' (train then holds the rest); give it for both splits",
    )
    resolution: int | None = Field(
        None, ge=1, description="crop size in pixels; none = 64 for builtin, 256 otherwise"
    )
    num: int | None = Field(None, ge=1, description="number of images; none = the whole source")
    batch_size: int = Field(32, ge=1, description="images per encoder forward")
    flips: bool = Field(True, description="also encode the mirrored image (F = 2)")
    strict: bool = Field(False, description="fail on unreadable images instead of skipping them")
    chunk: int = Field(32, ge=1, description="samples per Zarr chunk")
    shard: int = Field(1024, ge=1, description="samples per Zarr shard (a multiple of chunk)")

    @field_validator("split")
    @classmethod
    def _safe_split(cls, value: str) -> str:
        return safe_name(value, "split")

    @field_validator("weights")
    @classmethod
    def _absolute_weights(cls, value: str | None) -> str | None:
        """A weights file that exists is recorded by its absolute path: the features group
        records these settings, and the extract command that `cache ls` / `cache verify` name
        from them runs from any folder (a relative path only from the one it was given in)."""
        if value is None or value in ("random", "builtin"):
            return value
        path = Path(value).expanduser()
        return os.path.abspath(path) if path.is_file() else value  # a link stays named so
