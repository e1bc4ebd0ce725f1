"""Load a trained DiT checkpoint (weights, latent stats, sampling defaults) for sampling."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repackctl.dit.task import build_model
from repackctl.errors import CheckpointError
from repackctl.paths import resolve_checkpoint_arg
from repackctl.train import checkpoint as ckpt_io


def load_dit_for_sampling(runs: str, run: str, checkpoint: str | None, which: str) -> DiTHandle:
    """``load_dit`` on the folder that ``run`` (+ ``checkpoint``) resolves to, for sampling."""
    return load_dit(resolve_checkpoint_arg(runs, run, checkpoint), which=which)


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
    """A checkpoint folder, or a run's newest one, verified (an error naming a bad file)."""
    path = Path(run_or_checkpoint).expanduser()
    ckpt = ckpt_io.checkpoint_for_loading(path)
    if ckpt is None:
        raise CheckpointError(
            f"no complete checkpoint in {path}",
            "pass a run folder (runs/<name>) or a checkpoint (runs/<name>/checkpoints/step-…); "
            "train one with `repackctl train dit`",
        )
    return ckpt


def weights_structure(sd: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The family, depth, patch and width a DiT state dict has (None: not a DiT state dict)."""
    w = sd.get("x_embedder.proj.weight")
    if w is None or w.dim() != 4:
        return None
    depth = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    family = "lightningdit" if any(".mlp.w12." in k for k in sd) else "dit"
    return {"family": family, "depth": depth, "patch": int(w.shape[2]), "width": int(w.shape[0])}


def describe_weights(sd: dict[str, torch.Tensor]) -> str:
    """``lightningdit-s-2 (D=384)``: the registered variant a DiT state dict looks like."""
    from repackctl.models.variants import MODEL_FACTORIES, SIZES, TINY

    found = weights_structure(sd)
    if found is None:
        return "not a DiT state dict"
    family, depth, patch, width = (found[k] for k in ("family", "depth", "patch", "width"))
    for size, preset in [*SIZES.items(), ("tiny", TINY)]:
        ident = "tiny" if size == "tiny" else f"{family}-{size}-{patch}"
        if (preset.depth, preset.hidden_size) == (depth, width) and ident in MODEL_FACTORIES:
            return f"{ident} (D={width})"
    return f"a {family} of depth {depth}, patch {patch} (D={width})"


def _misfit(model: nn.Module, model_id: str, sd: dict[str, torch.Tensor], path: Path) -> str:
    """Why the weights ``sd`` at ``path`` do not load into the ``model_id`` that the
    checkpoint's state.json describes, naming what differs (depth, patch, width, family): a
    state.json recording another depth read "checkpoint is tiny (D=64), run expects tiny
    (D=64)", naming only the width, which was the same."""
    ours = model.state_dict()
    mine, theirs = weights_structure(ours), weights_structure(sd)
    if theirs is None:
        return (
            f"{path} holds no DiT weights (no x_embedder.proj.weight) for the model {model_id} "
            "that the checkpoint's state.json describes"
        )
    if mine is not None and mine != theirs:
        differ = [
            f"{k} {theirs[k]} in the weights, {mine[k]} recorded"
            for k in mine
            if mine[k] != theirs[k]
        ]
        return (
            f"{path}: the weights ({describe_weights(sd)}) differ from the model {model_id} that "
            f"the checkpoint's state.json describes: {'; '.join(differ)}"
        )
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    shapes = [k for k in ours if k in sd and tuple(ours[k].shape) != tuple(sd[k].shape)]
    detail = (
        f"missing {missing[0]}"
        if missing
        else f"unexpected {unexpected[0]}"
        if unexpected
        else f"{shapes[0]} is {tuple(sd[shapes[0]].shape)}, expected {tuple(ours[shapes[0]].shape)}"
        if shapes
        else "tensors do not fit"
    )
    return f"{path} does not fit model {model_id}: {detail}"


DIT_NEEDS = ("latent_stats", "latent_shape", "pack", "num_classes")


def checked_extra(ckpt: Path, stage: str, needs: tuple[str, ...], what: str, cmd: str) -> dict:
    """The ``extra`` of checkpoint ``ckpt``'s state, which must come from ``stage`` and hold
    ``needs``; else an error naming what the checkpoint is (``what``: "a DiT") and ``cmd``."""
    extra = ckpt_io.read_state(ckpt).get("extra", {})
    missing = [k for k in needs if k not in extra]
    if extra.get("stage") != stage or missing:
        why = f"stage {extra.get('stage')!r}" + (f", missing {missing}" if missing else "")
        raise CheckpointError(
            f"{ckpt} is not {what} checkpoint ({why})", f"pass a run trained with {cmd}"
        )
    return extra


def loaded_handle(
    model: nn.Module, ckpt: Path, extra: dict, which: str, misfit: Callable[[dict], str]
) -> DiTHandle:
    """``model`` with the ``which`` weights of ``ckpt`` (``misfit(weights)`` words a mismatch),
    in eval mode, as a handle with its checkpoint's ``extra`` and weights digest."""
    weights = ckpt_io.load_model_weights(ckpt, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(
            misfit(weights),
            "the checkpoint's weights belong to another model size than its state.json records "
            "(the file edited, or weights copied in from another run), or the model plugin "
            "changed: use an intact checkpoint of the run",
        ) from None
    digest = ckpt_io.weights_sha256(ckpt, which)  # an error naming it if removed meanwhile
    return DiTHandle(model=model.eval(), checkpoint=ckpt, extra=extra, sha256=digest, which=which)


def load_dit(run_or_checkpoint: str | Path, which: str = "ema") -> DiTHandle:
    """Rebuild the DiT of a run's newest checkpoint (or of a given checkpoint), in eval mode."""
    ckpt = _checkpoint_of(run_or_checkpoint)
    cmd = "`repackctl train dit` or imported with `import official`"
    extra = checked_extra(ckpt, "dit", DIT_NEEDS, "a DiT", cmd)
    from repackctl.models.dit import DiT
    from repackctl.models.variants import MODEL_FACTORIES, build_from_config

    model_id = extra["model_id"]
    if model_id in MODEL_FACTORIES and extra.get("model_config"):
        model = build_from_config(extra["model_config"])
    else:
        model = build_model(model_id, **extra.get("model_kwargs", {}))
        if type(model) is DiT and extra.get("model_config"):
            model = build_from_config(extra["model_config"])
    path = ckpt / f"{which}.safetensors"
    return loaded_handle(model, ckpt, extra, which, lambda w: _misfit(model, model_id, w, path))
