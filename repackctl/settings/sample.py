"""Settings of `repackctl sample` (nested as `[sample]` / `REPACKCTL_SAMPLE__*`).

Sampler settings default to ``None``: a value not given anywhere comes from the DiT run's
``sampling.json`` (written by `repackctl import official`), else from the built-in default listed
in each description. So an imported official run samples with the official settings unless a
flag, environment variable or TOML key says otherwise.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class SampleSettings(BaseModel):
    """`repackctl sample` settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    SHORT: ClassVar[dict[str, str]] = {"run": "-r", "num": "-n"}
    PANELS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("run", "checkpoint", "weights", "refiner", "guide", "guide_checkpoint"),
        "Sampling": ("num", "batch_size", "labels", "sampler", "steps", "shift"),
        "Prompts (text-to-image runs)": ("prompt", "prompts", "text_weights"),
        "Guidance": ("cfg", "cfg_t_lo", "cfg_t_hi", "cfg_channels"),
        "Output": ("out", "grid"),
    }

    run: str | None = Field(
        None, min_length=1, description="DiT run name (under runs) or checkpoint folder"
    )
    checkpoint: str | None = Field(
        None, min_length=1, description="checkpoint of the run (step-NNNNNNN); none = latest"
    )
    weights: Literal["ema", "model"] = Field("ema", description="EMA or raw model weights")
    num: int = Field(50, ge=1, description="number of samples N")
    batch_size: int = Field(
        16,
        ge=1,
        description="samples per forward batch (latents round by batch shape, ~1e-6: a folder "
        "records it, and an unfinished one is finished with its own)",
    )
    labels: str = Field(
        "balanced",
        description="balanced (N/classes each, in class order), random (seeded), or classes '3,7'",
    )
    prompt: list[str] | None = Field(
        None,
        description="text-to-image runs: a prompt (repeat the flag for several; sample i gets "
        "prompt i mod P); none = the val split's captions",
    )
    prompts: str | None = Field(
        None, min_length=1, description="text-to-image runs: a UTF-8 file with one prompt per line"
    )
    text_weights: str | None = Field(
        None,
        min_length=1,
        description="text-to-image runs: the text encoder's weights folder where it is now, "
        "when it moved since the captions were encoded (its files must equal the recorded "
        "ones); none = the folder the run recorded",
    )
    sampler: Literal["euler", "heun", "sde"] | None = Field(None, description="default euler")
    steps: int | None = Field(
        None, ge=1, description="updates (= NFE without guidance); default 50"
    )
    shift: float | None = Field(
        None, gt=0, description="timestep shift in our convention; default 1"
    )
    cfg: float | None = Field(
        None,
        ge=0.0,
        description="guidance scale; 1 = no guidance (default), 0 = unconditional (the null "
        "class); a negative scale would push samples away from their class, under their class's "
        "label",
    )
    cfg_t_lo: float | None = Field(
        None, ge=0, le=1, description="guidance active for t ≥ this; default 0"
    )
    cfg_t_hi: float | None = Field(
        None, ge=0, le=1, description="guidance active for t ≤ this; default 1"
    )
    cfg_channels: int | None = Field(
        None, ge=0, description="legacy: guide only the first k channels (0 = all, the default)"
    )
    guide: str | None = Field(
        None, min_length=1, description="autoguidance: a weaker DiT run used as the guide"
    )
    guide_checkpoint: str | None = Field(
        None, min_length=1, description="checkpoint of the guide run"
    )
    refiner: str | None = Field(
        None, min_length=1, description="refiner run applied after decoding"
    )
    out: str | None = Field(
        None, min_length=1, description="output folder; none = samples/<derived name>"
    )
    grid: int = Field(64, ge=0, description="images in grid.png (0 = no grid)")
