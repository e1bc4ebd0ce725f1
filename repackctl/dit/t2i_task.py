"""The text-to-image task: an MMDiT on packed latents, conditioned on cached caption features.

A subclass of ``DiTTask`` (so engine-facing behaviour — batching by per-sample generators,
REPA, the grid's decoder, checkpoint extras — carries over); what differs is overridden:

- the data: ``CaptionedLatentData`` adds, per sample, ONE of the image's captions drawn from the
  sample's own generator (after its flip draw), read from ``text/<id>/`` of the cache entry
  (``repackctl captions``): tokens (B, L, C), mask (B, L), pooled (B, C). The text encoder never
  runs here;
- the model: a registered MMDiT (``mmdit-tiny``, ``mmdit-s-2`` …) whose null caption is fixed to
  the cached features of the empty caption (REPA's ``empty_context``);
- the conditioning: ``batch["drop"]`` (drawn like the DiT's label dropout, with probability
  ``caption_dropout``) replaces a caption by the null caption;
- REPA on the image tokens after block k (default 8/24 of the depth, REPA's text-to-image rule);
- the checkpoint extra (stage ``t2i``, text encoder, ``text_dim``, ``max_length``, null caption)
  and the sample grid (rows = training captions).

Shapes: B batch, K captions per image, L text tokens, C text width, d×h×w latent.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repackctl.cache.integrity import GuardedArray, repair_hint, scan_array
from repackctl.cache.store import PENDING, WRITTEN
from repackctl.captions_cache import find_text_group, open_text_group
from repackctl.data.cached import MEMORY_GB, fits_in_memory, shuffle_window
from repackctl.dit.latents import LatentData, LatentRef, trained_latents
from repackctl.dit.t2i_load import CaptionTexts, check_same_captions, check_text_features
from repackctl.dit.task import (
    DiTTask,
    build_task,
    data_options,
    given_window,
    taken_options,
)
from repackctl.errors import CacheError, CheckpointError, ConfigError
from repackctl.models.mmdit import mmdit_repa_depth
from repackctl.paths import run_dir as make_run_dir
from repackctl.registry import registry
from repackctl.settings.dit import DitSettings
from repackctl.settings.t2i import NOT_T2I
from repackctl.train.config import TrainConfig

TEXT_ARRAYS = ("tokens", "mask", "pooled", "count")


class CaptionedLatentData(LatentData):
    """``LatentData`` plus one random cached caption per sample (images without one left out)."""

    def __init__(
        self,
        ref: LatentRef,
        *,
        text: str | None,
        text_encoder: str,
        in_memory: bool | None = None,
        memory_gb: float = MEMORY_GB,
        buffer_blocks: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(ref, in_memory=False, buffer_blocks=buffer_blocks, **kwargs)
        self.text_id = text or find_text_group(self.entry, text_encoder)
        grp = open_text_group(self.entry, self.text_id)
        self.text_attrs = grp.attrs
        tdone = grp.done_mask()
        redo = f"`repackctl captions --entry {self.entry.name}`"
        if (tdone == PENDING).any():
            raise CacheError(
                f"caption features {self.text_id} of {self.entry.name} are incomplete "
                f"({int((tdone == PENDING).sum())} images pending)",
                f"run {redo} again to finish them",
            )
        keep = tdone[self.indices] == WRITTEN
        self.indices, self.labels = self.indices[keep], self.labels[keep]
        if len(self.indices) == 0:
            raise CacheError(f"no image of {self.entry.name} has a caption", f"run {redo}")
        ok = np.zeros(self.entry.n, bool)
        ok[self.indices] = True
        for k in TEXT_ARRAYS:  # stored as text_<name>: "tokens" are the REPA targets
            label = f"cache entry {self.entry.name} text/{self.text_id}/{k}"
            guarded = GuardedArray(grp[k], ok, label, repair_hint(self.entry.name, redo))
            self.add(f"text_{k}", guarded)
        _, self.max_captions, self.text_len, self.text_dim = grp["tokens"].shape
        self.null = _read_null(grp, f"cache entry {self.entry.name} text/{self.text_id}", redo)
        if fits_in_memory(self.nbytes(), memory_gb) if in_memory is None else in_memory:
            self.load()
        label = f"cache entry {self.entry.name} text/{self.text_id}"
        self._captions = CaptionTexts(grp, ok, label, repair_hint(self.entry.name, redo))

    def _rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (training-set positions) of text array ``name``, all captions."""
        return self.take(f"text_{name}", rows)  # (B, ...)

    def read(
        self, rows: np.ndarray, rngs: list[np.random.Generator], with_tokens: bool
    ) -> dict[str, torch.Tensor]:
        """``LatentData.read`` plus ``text_tokens`` (B, L, C), ``text_mask`` (B, L),
        ``text_pooled`` (B, C) of one caption per sample, drawn from its generator."""
        rows = np.asarray(rows, dtype=np.int64)
        out = super().read(rows, rngs, with_tokens)
        counts = self._rows("count", rows)  # (B,)
        pick = np.array(
            [int(r.integers(max(1, int(c)))) for r, c in zip(rngs, counts, strict=True)]
        )
        ar = np.arange(len(rows))
        tok = self._rows("tokens", rows)[ar, pick]  # (B, L, C) float16
        out["text_tokens"] = torch.from_numpy(tok.astype(np.float32))
        out["text_mask"] = torch.from_numpy(
            np.ascontiguousarray(self._rows("mask", rows)[ar, pick])
        )
        out["text_pooled"] = torch.from_numpy(
            self._rows("pooled", rows)[ar, pick].astype(np.float32)
        )
        out["caption"] = torch.from_numpy(pick)  # (B,) which caption of the image
        return out

    def captions(self, rows: np.ndarray) -> list[list[str]]:
        """The caption texts of training rows ``rows`` (as encoded); a lost chunk or an empty
        text is an error, never an empty caption."""
        return self._captions[self.indices[np.asarray(rows, np.int64)]]

    def describe(self) -> dict:
        return super().describe() | {"text": self.text_id}


def _read_null(grp: Any, label: str, redo: str) -> dict[str, np.ndarray]:
    """The null caption's ``tokens`` (L, C), ``mask`` (L,), ``pooled`` (C,); a lost or corrupt
    chunk is an error (never zeros)."""
    out = {}
    for k in ("tokens", "mask", "pooled"):
        arr = grp[f"null_{k}"]
        bad = scan_array(arr, np.ones(arr.shape[0], bool), f"null_{k}")
        if bad:
            raise CacheError(
                f"{label}: {bad[0]}", f"run {redo} again (it rewrites the null caption)"
            )
        out[k] = np.asarray(arr[...])
    return out


class T2ITask(DiTTask):
    """TrainTask of a text-conditioned MMDiT (+ REPA) on packed latents and cached captions."""

    data: CaptionedLatentData

    def __init__(self, data: CaptionedLatentData, spec: Any, caption_dropout: float) -> None:
        super().__init__(data, dataclasses.replace(spec, class_dropout=caption_dropout))
        d, h, _ = data.shape
        self.model_kwargs = dict(
            spec.model_kwargs,
            in_channels=d,
            input_size=h,
            text_dim=data.text_dim,
            null_caption="fixed",
            null_length=data.text_len,
            caption_dropout=caption_dropout,
        )

    def make_model(self) -> nn.Module:
        """The registered MMDiT, its null caption fixed to the cached empty caption's features."""
        model = build_mmdit(self.spec.model_id, **self.model_kwargs)
        null = self.data.null
        model.set_null_caption(
            torch.from_numpy(null["tokens"].astype(np.float32)),
            torch.from_numpy(null["mask"]),
            torch.from_numpy(null["pooled"].astype(np.float32)),
        )
        return model

    def default_repa_depth(self, depth: int) -> int:
        return mmdit_repa_depth(depth)  # REPA's text-to-image rule: 8 of 24 blocks

    def condition(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The caption: tokens (B, L, C), mask (B, L), pooled (B, C)."""
        return batch["text_tokens"], batch["text_mask"], batch["text_pooled"]

    # ---- checkpoint extras ---------------------------------------------------------------------
    def state_extra(self) -> dict[str, Any]:
        null = self.data.null
        real = null["mask"].astype(bool)
        attrs = self.data.text_attrs
        return super().state_extra() | {
            "stage": "t2i",
            "num_classes": 0,
            "class_names": None,
            "text": {
                "features": self.data.text_id,
                "encoder_ref": attrs.get("encoder_ref"),
                "text_weights": attrs.get("text_weights"),
                "encoder": attrs.get("encoder"),
                "text_dim": int(self.data.text_dim),
                "max_length": int(self.data.text_len),
                "caption_dropout": float(self.spec.class_dropout),
                # the captions themselves: a group removed and encoded again under the same id
                # from edited captions is another training set (checked on resume)
                "captions_sha256": attrs.get("captions_sha256"),
            },
            # the empty caption's real tokens (padding is zeroed by the model), mask and pooled
            "null_caption": {
                "caption": "",
                "mask": real.tolist(),
                "tokens": null["tokens"][real].astype(np.float32).tolist(),
                "pooled": null["pooled"].astype(np.float32).tolist(),
            },
        }

    def load_state_extra(self, extra: dict[str, Any]) -> None:
        super().load_state_extra(extra)
        old = (extra.get("text") or {}).get("features")
        if old and old != self.data.text_id:
            raise CheckpointError(
                f"this run was trained on caption features {old}, not {self.data.text_id}",
                f"pass --text-features {old}, or start a new run with --name",
            )
        check_text_features(extra, dict(self.data.text_attrs), self.data.text_id)
        check_same_captions(extra, dict(self.data.text_attrs), self.data.text_id)

    # ---- sample grid ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, model: nn.Module, step: int, run_dir: Path) -> Path:
        """Samples of the first training captions (one row per caption), Euler, fixed noise."""
        from repackctl.metrics.recon import save_grid
        from repackctl.transport.samplers import sample_ode

        k, m = min(len(self.data), self.spec.image_classes), self.spec.image_per_class
        rows = np.arange(k)
        batch = self.data.read(rows, [_First() for _ in rows], with_tokens=False)  # caption 0
        device = next(model.parameters()).device
        rep = lambda a: a.repeat_interleave(m, dim=0).to(device)  # noqa: E731
        g = torch.Generator().manual_seed(self.spec.seed + 12345)
        noise = torch.randn((k * m, *self.data.shape), generator=g).to(device)
        was_training = model.training
        model.eval()
        try:
            f = model.velocity_fn(
                rep(batch["text_tokens"]), rep(batch["text_mask"]), rep(batch["text_pooled"])
            )
            x = sample_ode(f, noise, None, steps=self.spec.image_steps).x
        finally:
            model.train(was_training)
        pixels = self._pixels(x)  # (k·m, H, W, 3)
        path = run_dir / "images" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = [c[0][:48] for c in self.data.captions(rows)]
        return save_grid([pixels[i * m : (i + 1) * m] for i in range(k)], path, labels=labels)


class _First:
    """A stand-in generator for the grid: no flip, caption 0."""

    def random(self) -> float:
        return 1.0

    def integers(self, high: int) -> int:
        return 0

    def standard_normal(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)  # the posterior mean


def build_mmdit(model_id: str, **kwargs: Any) -> nn.Module:
    """A registered MMDiT; an option its factory does not take (``--depth`` of a plugin
    model without it, say) is an error, never dropped (:func:`taken_options`)."""
    factory = registry("models").get(model_id)
    if "text_dim" not in inspect.signature(factory).parameters:
        raise ConfigError(
            f"model {model_id!r} is not a text-conditioned model (it takes no text_dim)",
            "use an MMDiT: --model mmdit-tiny, mmdit-s-2, mmdit-b-2, mmdit-l-2 or mmdit-xl-2",
        )
    return factory(**taken_options(model_id, factory, kwargs))


def dit_settings_of(settings: Any) -> Any:
    """The same settings with ``[dit]`` taken from ``[t2i]`` (so ``build_task`` applies). The
    t2i preset is not passed on: its values are already in ``[t2i]``, and ``train dit``'s preset
    of the same name (``repa``: SiT-XL/2) is another recipe."""
    s = settings.t2i
    fields = {
        k: v
        for k, v in s.model_dump().items()
        if k in DitSettings.model_fields and k not in (*NOT_T2I, "preset")
    }
    fields["in_memory"] = False  # the DiT data is only opened, never loaded
    return settings.model_copy(update={"dit": DitSettings(**fields)})


def t2i_run_dir(settings: Any) -> Path:
    """``runs/<name>``, the name defaulting to ``t2i-<model id>``."""
    s = settings.t2i
    return make_run_dir(settings.runs, s.name or f"t2i-{s.model or 'mmdit-tiny'}")


def build_t2i_task(
    settings: Any, sources: dict[str, str] | None = None
) -> tuple[T2ITask, TrainConfig]:
    """The task and loop config of the resolved settings (no training yet).

    The DiT's ``build_task`` resolves the latents, the spec and the loop config (so changes to
    the DiT's engine config carry over); the text parts are replaced here.
    """
    s = settings.t2i
    run_dir = t2i_run_dir(settings)
    text = run_text_group(run_dir, s.text_features)
    if s.latents is None:  # a run that stored none (started before it was recorded): its own
        trained, trained_entry = trained_latents(run_dir, "t2i")
        update = {"latents": trained, "entry": s.entry or trained_entry}
        settings = settings.model_copy(update={"t2i": s.model_copy(update=update)})
    base, config = build_task(_without_window(dit_settings_of(settings)), sources=sources)
    data = CaptionedLatentData(
        base.data.ref,
        text=text,
        text_encoder=s.text_encoder,
        **data_options(s, settings.memory_gb, settings.seed),
    )
    check_text_encoder(data, s.text_encoder, (sources or {}).get("t2i.text_encoder"), text)
    task = T2ITask(data, base.spec, s.caption_dropout)
    # as `train dit`: in-memory data sample by sample; Zarr data by chunk-aligned blocks within
    # a window sized by the memory budget on the rows read here, latents AND caption features
    block = 1 if data.in_memory else data.chunk
    window = shuffle_window(
        data,
        given_window(s.buffer_blocks, data.in_memory, sources, "t2i"),
        run_dir,  # a resumed run keeps the window its checkpoint recorded
        block=block,
        memory_gb=settings.memory_gb,
        seed=settings.seed,
        labels=data.labels,
        batch=s.global_batch,
    )
    train = s.model_dump(mode="json") | {"text_features": data.text_id}  # resolved, kept
    config = dataclasses.replace(
        config,
        run_dir=str(run_dir),
        block=block,
        buffer_blocks=window,
        extra={"stage": "t2i", "train": train},
    )
    return task, config


#: the DiT's shuffle window of ``build_t2i_task``'s base task: at least every block, so that
#: resolving it neither warns nor reads a record (the t2i window is resolved on its own data)
_BASE_WINDOW = 2**31 - 1


def _without_window(settings: Any) -> Any:
    """``settings`` whose ``[dit]`` shuffle window is :data:`_BASE_WINDOW`.

    ``build_task`` sizes the DiT's window on the latents alone (the caption features, often
    most of the bytes of a row, left out), looks for a record in ``dit_run_dir`` (another run
    folder than ``t2i_run_dir`` when ``--name`` is not given) and may warn about that window;
    its base data is never read, and the window is replaced by the t2i's own."""
    dit = settings.dit.model_copy(update={"buffer_blocks": _BASE_WINDOW})
    return settings.model_copy(update={"dit": dit})


def run_text_group(run_dir: Path, given: str | None) -> str | None:
    """The caption-feature group to train on: the one the run's newest checkpoint was trained
    on when it has one (checked here, before any weights are read: another group's width
    would only fail as a state_dict size mismatch), else ``given`` (None: the newest group of
    the text encoder, resolved by ``CaptionedLatentData``)."""
    from repackctl.train.checkpoint import latest_checkpoint, read_state

    latest = latest_checkpoint(run_dir, warn=None)
    state = read_state(latest) if latest is not None else {}
    trained = ((state.get("extra") or {}).get("text") or {}).get("features")
    if trained and given and given != trained:
        raise CheckpointError(
            f"run {run_dir.name} was trained on caption features {trained}, not {given}",
            f"resume with --text-features {trained} (or without --text-features), or start a "
            "new run with --name",
        )
    return given or trained


def check_text_encoder(
    data: CaptionedLatentData, encoder_ref: str, source: str | None, named: str | None
) -> None:
    """Refuse ``--text-encoder`` given with caption features of another text encoder
    (``named``: the group ``--text-features`` or the run's checkpoint names): the features
    decide what the run trains on and samples with, so the flag would do nothing while the run
    recorded it. A group that records no encoder, or a text encoder left at its default
    (``source``), is not compared."""
    from repackctl.settings.checks import undo_given, user_given

    if named is None or source is None or not user_given(source):
        return
    made_by = str(data.text_attrs.get("encoder_ref") or "")
    if not made_by or made_by.split(":")[0] == encoder_ref.split(":")[0]:
        return
    raise ConfigError(
        f"t2i.text_encoder {encoder_ref!r} ({source}) names another text encoder than the "
        f"caption features {data.text_id} were encoded with ({made_by!r}): the run would "
        "train on those and never use it",
        f"{undo_given(source, '--text-encoder')} to train on {data.text_id}, or pass "
        f"--text-features with a group of {encoder_ref!r} (`repackctl cache ls` lists them)",
    )
