"""Loading a trained packing autoencoder from its run or checkpoint folder (no unpickling).

A pack checkpoint (``runs/<name>/checkpoints/step-NNNNNNN/``, DESIGN.md §6) rebuilds its own
model: ``state.json`` → ``extra.autoencoder_config`` gives the architecture
(``PackAutoencoder.from_dict``) and ``ema.safetensors`` / ``model.safetensors`` the numbers.
``pack encode`` adds ``latent_stats.json`` (exact channel stats of the training split, sealed
with its sha256: ``read_latent_stats``); ``pack encode`` alone loads past a damaged one, since
it writes it again.

The pack id names packed latents in the cache: ``<encoder entry>--<run>-<step:07d>-<sha8>``
where sha8 starts the sha256 of the weights file used, so latents made from other weights (or
EMA vs raw weights) never share a group.

``builtin_feature_loss`` loads the other frozen network the pack and the refiner train with: the
built-in encoder (shipped weights) as the feature distance of ``repackctl.pack.features``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

# re-exported: dit.latents reads it here
from repackctl.cache.partials import combine_partials as combine_partials
from repackctl.errors import CacheError, CheckpointError
from repackctl.pack.autoencoder import PackAutoencoder
from repackctl.pack.features import EncoderFeatureLoss
from repackctl.paths import resolve_checkpoint_arg
from repackctl.run_files import pack_id_run_step  # re-exported: dit.latents reads it here

if TYPE_CHECKING:
    from repackctl.cache.store import ArrayGroup, DatasetEntry

LATENT_STATS = "latent_stats.json"


@dataclass
class PackHandle:
    """A loaded pack model and what it was trained on."""

    model: PackAutoencoder  # eval mode, on the CPU
    checkpoint: Path
    pack_id: str
    extra: dict[str, Any] = field(default_factory=dict)
    latent_stats: dict[str, Any] | None = None  # {"mean": [d], "std": [d], ...}
    which: str = "ema"
    step: int = 0

    @property
    def run_name(self) -> str:
        return self.checkpoint.parent.parent.name

    @property
    def features_id(self) -> str:
        return str(self.extra["cache"]["features"])

    @property
    def latent_channels(self) -> int:
        return self.model.latent_channels


def _runs_root() -> str:
    return os.environ.get("REPACKCTL_RUNS", "runs")


def resolve_checkpoint(run_or_checkpoint: str | Path, runs: str | None = None) -> Path:
    """A checkpoint folder from a checkpoint path, a run folder, or a run name under ``runs``
    (``paths.resolve_checkpoint_arg``), verified: a bad file is an error naming it."""
    from repackctl.train.checkpoint import checkpoint_for_loading

    folder = resolve_checkpoint_arg(runs or _runs_root(), str(run_or_checkpoint), stage="pack")
    found = checkpoint_for_loading(folder)
    if found is None:
        raise CheckpointError(
            f"run {folder} has no complete checkpoint yet",
            f"train it first: `repackctl pack train --name {folder.name}`",
        )
    return found.resolve()


def pack_id_for(features_id: str, run_name: str, step: int, weights_sha256: str) -> str:
    """``<encoder entry>--<run>-<step:07d>-<sha256[:8]>`` (the contract of DESIGN.md §6)."""
    return f"{features_id}--{run_name}-{step:07d}-{weights_sha256[:8]}"


#: the key of ``latent_stats.json`` that holds the sha256 of the rest of it (``seal_stats``): the
#: file is written after its checkpoint, so ``state.json``'s checksums do not cover it
STATS_SHA256 = "stats_sha256"


class LatentStatsError(CheckpointError):
    """``latent_stats.json`` of a pack checkpoint cut, edited or malformed: ``pack encode`` of
    that checkpoint writes it again (it reads it through ``load_pack(..., stats=False)``)."""


def seal_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` with ``STATS_SHA256``: the sha256 a reader checks (``read_latent_stats``)."""
    from repackctl.run_files import json_sha256

    body = {k: v for k, v in stats.items() if k != STATS_SHA256}
    return body | {STATS_SHA256: json_sha256(body, STATS_SHA256)}


def read_latent_stats(checkpoint: Path) -> dict[str, Any] | None:
    """``latent_stats.json`` of a checkpoint, or None when ``pack encode`` has not run.

    A file that is no JSON, does not match the sha256 it was written with (files written before
    the seal carry none and are read as they are) or is malformed is a ``LatentStatsError``
    whose hint is the ``pack encode`` of this very checkpoint, which writes it again."""
    from repackctl.run_files import json_sha256
    from repackctl.train.checkpoint_state import validate_latent_stats

    path = Path(checkpoint) / LATENT_STATS
    if not path.is_file():
        return None
    redo = (
        f"run `repackctl pack encode --run {Path(checkpoint)}`, which writes it again from the "
        "latents of the pack run's training data"
    )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LatentStatsError(f"{path} is not valid JSON: {e}", redo) from None
    recorded = data.get(STATS_SHA256) if isinstance(data, dict) else None
    if recorded is not None and recorded != json_sha256(data, STATS_SHA256):
        raise LatentStatsError(
            f"{path} does not match the sha256 it was written with (edited or damaged)", redo
        )
    try:
        return validate_latent_stats(data, path)
    except CheckpointError as e:
        raise LatentStatsError(e.message, redo) from None


def load_pack(
    run_or_checkpoint: str | Path, which: str = "ema", runs: str | None = None, stats: bool = True
) -> PackHandle:
    """Load a pack model (``which`` = "ema" or "model" weights) in eval mode on the CPU.

    ``stats=False`` (`pack encode`, which writes ``latent_stats.json``): the file is not read
    (``latent_stats`` None), so that a damaged one does not stop the command that repairs it."""
    from repackctl.train.checkpoint import load_model_weights, read_state, weights_sha256

    ckpt = resolve_checkpoint(run_or_checkpoint, runs)
    state = read_state(ckpt)
    extra = state.get("extra") or {}
    if extra.get("stage") != "pack":
        raise CheckpointError(
            f"{ckpt} is not a pack checkpoint (stage {extra.get('stage')!r})",
            "pass a run made by `repackctl pack train`",
        )
    try:
        model = PackAutoencoder.from_dict(extra["autoencoder_config"])
    except KeyError as e:
        raise CheckpointError(f"{ckpt}/state.json lacks {e}", "use another checkpoint") from None
    weights = load_model_weights(ckpt, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt}/{which}.safetensors does not fit its config: {str(e).splitlines()[0]}",
            "the checkpoint is damaged; use another one",
        ) from None
    model.eval().requires_grad_(False)
    sha = weights_sha256(ckpt, which)  # an Error, not a traceback, if it vanished
    step = int(state["step"])
    pack_id = pack_id_for(extra["cache"]["features"], ckpt.parent.parent.name, step, sha)
    return PackHandle(
        model=model,
        checkpoint=ckpt,
        pack_id=pack_id,
        extra=extra,
        latent_stats=read_latent_stats(ckpt) if stats else None,
        which=which,
        step=step,
    )


def denormalise(x: Tensor, stats: dict[str, Any]) -> Tensor:
    """Normalised DiT latent (B, d, h, w) → raw packed latent: x·std + mean per channel."""
    mean = torch.as_tensor(stats["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(stats["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if mean.shape[1] != x.shape[1]:
        raise CheckpointError(
            f"latent stats have {mean.shape[1]} channels, the DiT makes {x.shape[1]}",
            "the checkpoint's latent_stats are damaged",
        )
    return x * std + mean  # (B, d, h, w)


def decoder_checkpoint(runs: str, pack: dict[str, Any]) -> Path:
    """The pack checkpoint that encoded a DiT's latents (``pack``: the DiT state's
    ``extra["pack"]``), never merely the pack run's newest one.

    The recorded checkpoint folder when it exists; else (the runs folder moved) the checkpoint
    of that name in the run. Runs trained before b4c4b9b recorded ``checkpoint: null``: their
    checkpoint is the step inside the pack id (``<entry>--<run>-<step:07d>-<sha8>``), the step
    the latents were encoded at; the pack run's newest checkpoint would decode the DiT's
    latents with another decoder once the pack run trained on. Only a run that records neither
    falls back to the newest checkpoint (``load_decoder`` then checks its pack id).
    """
    recorded = pack.get("checkpoint")
    where = Path(recorded) if recorded else None  # Path("") would be the working folder
    if where is not None and where.is_dir():
        return where
    pack_id = pack.get("pack_id")
    id_run, step = pack_id_run_step(pack_id)
    run = pack.get("run") or id_run
    if where is not None or step is None or run is None:  # the runs folder moved, or no step
        return resolve_checkpoint_arg(runs, run or pack["run"], where.name if where else None)
    name = f"step-{step:07d}"
    base = resolve_checkpoint_arg(runs, run)  # a missing run: the resolver's own error
    found = base / "checkpoints" / name
    if not found.is_dir():
        have = sorted(p.name for p in (base / "checkpoints").glob("step-*"))
        raise CheckpointError(
            f"the DiT was trained on latents {pack_id} of pack checkpoint {name} of run {run!r}, "
            f"which is gone (have: {', '.join(have) or 'none'}); a newer checkpoint would decode "
            "them with another decoder",
            f"restore {base / 'checkpoints' / name} (e.g. from a backup), or train a new DiT on "
            f"the latents of a checkpoint that exists: `repackctl pack encode --run {run}`, then "
            "`repackctl train dit --name NEW-RUN`",
        )
    return found.resolve()


def load_decoder(runs: str, extra: dict[str, Any]) -> PackHandle:
    """The pack model the DiT was trained on (``decoder_checkpoint``), verified by the pack id
    of its latents (run, step and the sha256 of the weights that encoded them)."""
    pack = extra["pack"]
    ckpt = decoder_checkpoint(runs, pack)
    try:
        handle = load_pack(ckpt)
    except LatentStatsError:
        raise  # its hint (`pack encode` of that checkpoint) repairs it
    except CheckpointError as e:
        raise _damaged_decoder(ckpt, pack, e) from None
    if pack.get("pack_id") and handle.pack_id != pack["pack_id"]:
        raise CheckpointError(
            f"pack model {handle.pack_id} is not the one the DiT was trained on ({pack['pack_id']})",
            "restore the pack run the DiT was trained with",
        )
    return handle


def _damaged_decoder(ckpt: Path, pack: dict[str, Any], e: CheckpointError) -> CheckpointError:
    """The error of the pack checkpoint a DiT decodes through (``ckpt``) failing to load
    (``e``): it says which checkpoint that is and that no other one can stand in for it (the
    generic "use another checkpoint" of ``e`` would send the user to the DiT's other
    checkpoints, which all decode through this one). A file that vanished while it was read
    keeps its own hint (run again)."""
    from repackctl.train.checkpoint import is_vanished, latest_checkpoint

    if is_vanished(e):
        return e
    run = pack.get("run") or ckpt.parent.parent.name
    hint = f"restore {ckpt} from a copy (e.g. a backup), then run the command again"
    good = latest_checkpoint(ckpt.parent.parent, warn=None, check_finite=False)
    if good is not None and good.resolve() != ckpt.resolve():
        hint += (
            f"; or train a new DiT on the latents of an intact pack checkpoint: `repackctl pack "
            f"encode --run {good}`, then `repackctl train dit --latents {_pack_id_of(good)} "
            "--name NEW-RUN`"
        )
    return CheckpointError(
        f"the pack checkpoint the DiT decodes through (run {run!r}, {ckpt.name}: {ckpt}) is "
        f"damaged: {e.message}; the DiT was trained on the latents of this very checkpoint, so "
        "no other checkpoint (of the DiT or of the pack run) can stand in for it",
        hint,
    )


def _pack_id_of(ckpt: Path) -> str:
    """The pack id of the latents ``pack encode --run ckpt`` writes (its EMA weights), or a
    placeholder where its ``state.json`` does not say (a hint only)."""
    from repackctl.train.checkpoint import read_state, weights_sha256

    try:
        state = read_state(ckpt)
        features = state["extra"]["cache"]["features"]
        return pack_id_for(
            features, ckpt.parent.parent.name, int(state["step"]), weights_sha256(ckpt)
        )
    except (CheckpointError, KeyError, TypeError, ValueError, OSError):
        return "LATENTS-ID"


def builtin_feature_loss(resolution: int, seed: int = 0) -> EncoderFeatureLoss:
    """The feature distance of the built-in encoder with its shipped weights, at ``resolution``."""
    from repackctl.encoders.load import make_encoder

    return EncoderFeatureLoss(make_encoder("builtin", None, None, resolution, seed))


#: latents attribute: the precision of the features they were encoded from (not in the features
#: id: features extracted again in another precision after `cache rm --features` share the id);
#: also the pack checkpoint's ``extra`` key of the precision of the features it was trained on
FEATURES_PRECISION = "features_precision"


def check_features_precision(handle: PackHandle, entry: DatasetEntry, feats: ArrayGroup) -> None:
    """Refuse (``CacheError``) features computed in another precision than the features the pack
    model was trained on (its checkpoint's ``features_precision``): bf16 and fp32 tokens of the
    same images differ, and latents encoded from them would come from another input
    distribution than the model saw. Runs trained before the precision was recorded are not
    checked (nothing is guessed)."""
    from repackctl.cache.commands import features_extract_command, remove_command
    from repackctl.cache.store import features_precision

    trained = handle.extra.get(FEATURES_PRECISION)
    here = features_precision(dict(feats.attrs))
    if trained is None or trained == here:
        return
    fid = feats.group.basename
    extract = features_extract_command(entry, fid, precision=str(trained))
    rm = remove_command(entry.name, "features", fid, yes=True)
    raise CacheError(
        f"pack run {handle.run_name} was trained on features computed in {trained}, but features "
        f"{fid} in {entry.name} were computed in {here}: their latents would come from another "
        "input distribution than the model was trained on",
        f"extract them again in {trained}: `{rm}`, then `{extract}`, then encode again",
    )
