"""Load a trained DiT checkpoint (weights, latent stats, sampling defaults) for sampling."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from repackctl.dit.task import build_model
from repackctl.errors import CheckpointError
from repackctl.paths import resolve_checkpoint_arg
from repackctl.train import checkpoint as ckpt_io


def load_dit_for_sampling(runs: str, run: str, checkpoint: str | None, which: str):
    """``repackctl.dit.run.load_dit`` on the resolved folder, with the stage checked."""
    handle = load_dit(resolve_checkpoint_arg(runs, run, checkpoint), which=which)
    extra = handle.extra
    missing = [k for k in ("latent_stats", "latent_shape", "pack", "num_classes") if k not in extra]
    if extra.get("stage") != "dit" or missing:
        raise CheckpointError(
            f"{handle.checkpoint} is not a DiT checkpoint (stage {extra.get('stage')!r}, "
            f"missing {missing})",
            "pass a run trained with `repackctl train dit` or imported with `import official`",
        )
    return handle


@dataclass
class DiTHandle:
    """A trained DiT ready for sampling: model in eval mode plus what its checkpoint recorded."""

    model: nn.Module
    checkpoint: Path
    extra: dict[str, Any]
    sha256: str
    which: str = "ema"

    @property
    def latent_stats(self) -> dict[str, list[float]]:
        return self.extra["latent_stats"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.extra["latent_shape"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.extra["num_classes"])


def _checkpoint_of(run_or_checkpoint: str | Path) -> Path:
    path = Path(run_or_checkpoint).expanduser()
    if (path / "state.json").is_file():
        return path
    latest = ckpt_io.latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(
            f"no complete checkpoint in {path}",
            "pass a run folder (runs/<name>) or a checkpoint (runs/<name>/checkpoints/step-…); "
            "train one with `repackctl train dit`",
        )
    return latest


def load_dit(run_or_checkpoint: str | Path, which: str = "ema") -> DiTHandle:
    """Rebuild the DiT of a run's newest checkpoint (or of a given checkpoint), in eval mode."""
    ckpt = _checkpoint_of(run_or_checkpoint)
    extra = ckpt_io.read_state(ckpt).get("extra", {})
    if extra.get("stage") != "dit":
        raise CheckpointError(
            f"{ckpt} is not a DiT checkpoint (stage {extra.get('stage')!r})",
            "pass a run trained with `repackctl train dit`",
        )
    from repackctl.models.dit import DiT
    from repackctl.models.variants import MODEL_FACTORIES, build_from_config

    model_id = extra["model_id"]
    if model_id in MODEL_FACTORIES and extra.get("model_config"):
        model = build_from_config(extra["model_config"])
    else:
        model = build_model(model_id, **extra.get("model_kwargs", {}))
        if type(model) is DiT and extra.get("model_config"):
            model = build_from_config(extra["model_config"])
    weights = ckpt_io.load_model_weights(ckpt, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt}/{which}.safetensors does not fit model {model_id}: {e}",
            "the checkpoint is damaged or the model plugin changed",
        ) from e
    digest = hashlib.sha256((ckpt / f"{which}.safetensors").read_bytes()).hexdigest()
    return DiTHandle(model=model.eval(), checkpoint=ckpt, extra=extra, sha256=digest, which=which)
