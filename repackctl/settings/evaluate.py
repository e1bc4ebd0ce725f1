"""Settings of `repackctl evaluate` (nested as `[evaluate]` / `REPACKCTL_EVALUATE__*`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class EvaluateSettings(BaseModel):
    """`repackctl evaluate fid` / `evaluate stats` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    SHORT: ClassVar[dict[str, str]] = {"num_samples": "-n"}
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Samples": ("num_samples",),
        "Reference": ("reference", "ref_cache", "force_reference", "stats_dir"),
        "Metrics": ("metrics", "inception_weights", "fd_encoder", "fd_weights", "fd_method", "batch_size"),
        "Output": ("out",),
    }  # fmt: skip

    # every optional name or path has min_length=1: an empty one is refused, never taken as "not
    # given" (a default) or as the current folder (a reference of whatever images lie there)
    source: str | None = Field(
        None,
        min_length=1,
        description="generated images: a samples folder, a samples .npz, or a DiT run/checkpoint "
        "(sampled first); none = the newest samples folder under the samples root",
    )
    reference: str | None = Field(
        None,
        min_length=1,
        description="reference: an ADM reference batch .npz, a stats file from `evaluate stats`, "
        "an image folder, an images .npz, or 'builtin'; none = the generator's training data (for "
        "text-to-image samples of the default prompts: the entry whose captions they are)",
    )
    ref_cache: str | None = Field(
        None, min_length=1, description="reference = the images of this cache dataset entry"
    )
    num_samples: int | None = Field(
        None, ge=2, description="use exactly N generated samples (sampled first for a checkpoint)"
    )
    metrics: str = Field(
        "auto",
        description="comma list of fid, sfid, is, kid, prc, fd; auto = fd for the built-in "
        "dataset, fid,sfid,is,kid,prc (those the reference allows) otherwise",
    )
    inception_weights: str | None = Field(
        None,
        min_length=1,
        description="torch-fidelity Inception weights file; none = the torch hub cache",
    )
    fd_encoder: str = Field(
        "builtin", description="encoder whose pooled patch tokens define the 'fd' metric"
    )
    fd_weights: str | None = Field(
        None,
        min_length=1,
        description="weights of the fd encoder (file, 'random', none = its default)",
    )
    fd_method: Literal["sqrtm", "cholesky"] = Field(
        "sqrtm", description="Fréchet distance algorithm: sqrtm (ADM's) or cholesky (faster)"
    )
    force_reference: bool = Field(
        False,
        description="use a reference made with another protocol (resolution, feature extractor "
        "or its weights); the differences are written into the card",
    )
    batch_size: int = Field(64, ge=1, description="images per feature-extractor forward")
    out: str | None = Field(
        None,
        min_length=1,
        description="where metrics.json goes: a folder, or a path ending in .json; none = beside "
        "the samples",
    )
    stats_dir: str | None = Field(
        None,
        min_length=1,
        description="folder of cached reference statistics; none = <cache>-reference-stats",
    )
