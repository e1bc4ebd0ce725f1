"""The DiT training task handed to the engine: model, REPA projector, loss, data."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from repackctl import kernels
from repackctl.data.cached import sample_generators, shuffle_window
from repackctl.dit.latents import LatentData, find_latents, pack_run_of, trained_latents
from repackctl.errors import CheckpointError, ConfigError, DataError, RepackError
from repackctl.models.dit import DiT
from repackctl.models.mmdit import MMDiT
from repackctl.models.repa import REPAProjector, default_repa_depth, repa_loss
from repackctl.paths import run_dir as make_run_dir
from repackctl.registry import registry
from repackctl.settings.checks import user_given
from repackctl.train.config import TrainConfig
from repackctl.train.loop import OptimizerSpec, StepOutput
from repackctl.train.sampler import MIN_BUFFER_BLOCKS
from repackctl.transport.interpolant import interpolate, velocity_target
from repackctl.transport.loss import COS_NORM_FLOOR, velocity_loss
from repackctl.transport.timesteps import TimeSampler

if TYPE_CHECKING:
    from repackctl.settings import Settings


@dataclass
class DiTSpec:
    """Everything of the DiT task besides the data (JSON-safe; stored in state.json)."""

    model_id: str
    model_kwargs: dict[str, Any]
    seed: int
    class_dropout: float
    time: TimeSampler
    cos_weight: float
    repa_weight: float
    repa_depth: int | None
    repa_stop_step: int | None
    repa_hidden: int | None
    image_steps: int = 16
    image_classes: int = 8
    image_per_class: int = 4
    cos_norm_floor: float = COS_NORM_FLOOR  # |v̂| floor of the cosine term; 0 = official

    def transport_dict(self) -> dict[str, Any]:
        return {
            "path": "linear",
            "time_convention": "t=0 data, t=1 noise",
            "prediction": "velocity",
            "time_dist": self.time.kind,
            "mu": self.time.mu,
            "sigma": self.time.sigma,
            "shift": self.time.shift,
            "cos_weight": self.cos_weight,
            "cos_norm_floor": self.cos_norm_floor,
        }


class DiTTask:
    """TrainTask of a class-conditional DiT on packed latents, with optional REPA."""

    def __init__(self, data: LatentData, spec: DiTSpec) -> None:
        self.data = data
        self.spec = spec
        d, h, w = data.shape
        if h != w:
            raise ConfigError(
                f"packed latents of {h}×{w} are not square; the DiT variants take h = w",
                "pack square crops (the cache's images are square: check the pack encoder)",
            )
        self.model_kwargs = dict(
            spec.model_kwargs, in_channels=d, input_size=h, num_classes=data.num_classes
        )
        self.repa_on = spec.repa_weight > 0
        self.repa_depth: int | None = None
        self._pack_handle: Any = None
        self._grid_note: str | None = None
        self.model_config: dict[str, Any] = {}
        self.num_params = 0
        self.every_parameter_used = False

    # ---- TrainTask -----------------------------------------------------------------------------
    def make_model(self) -> nn.Module:
        """The network this task trains (the text-to-image task builds an MMDiT instead)."""
        return build_model(self.spec.model_id, **self.model_kwargs)

    def default_repa_depth(self, depth: int) -> int:
        """The block after which REPA aligns by default, for a model of ``depth`` blocks."""
        return default_repa_depth(depth)

    def build(self) -> dict[str, nn.Module]:
        model = self.make_model()
        # the built-in DiT and REPA's projector use every parameter in each forward (the null
        # class is a row of the label table), and so does the built-in MMDiT as trained here
        # (its own rule); a plugin model may not: DDP then searches
        mmdit = type(model) is MMDiT and model.uses_every_parameter()
        self.every_parameter_used = type(model) is DiT or mmdit
        self.model_config = model.config.to_dict() if hasattr(model, "config") else {}
        self.num_params = sum(p.numel() for p in model.parameters())
        modules: dict[str, nn.Module] = {"model": model}
        if self.repa_on:
            width, depth = _width(model)
            default = self.default_repa_depth(depth)
            self.repa_depth = self.spec.repa_depth or default
            if not 1 <= self.repa_depth <= depth:
                raise ConfigError(
                    f"repa_depth {self.repa_depth} is outside the model's 1..{depth} blocks",
                    f"use --repa-depth between 1 and {depth} (default {default})",
                )
            hidden = self.spec.repa_hidden or repa_hidden_default(width)
            token_dim = (self.data.token_shape or (0,))[-1]  # set by LatentData(repa=True)
            modules["projector"] = REPAProjector(width, token_dim, hidden)
        self.modules = modules  # what this process trains (kept for inspection after train())
        return modules

    def optimizers(self) -> dict[str, OptimizerSpec]:
        mods = ("model", "projector") if self.repa_on else ("model",)
        return {"model": OptimizerSpec(mods, every_parameter_used=self.every_parameter_used)}

    def num_samples(self) -> int:
        return len(self.data)

    def repa_active(self, step: int) -> bool:
        stop = self.spec.repa_stop_step
        return self.repa_on and (stop is None or step < stop)

    def get_batch(
        self,
        indices: np.ndarray,
        step: int,
        generator: np.random.Generator,
        repeats: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        # one generator per sample, keyed by its index (and its repeat count, for a batch that
        # straddles two epochs): the same draws whatever the processes or micro-batches
        rngs = sample_generators(self.spec.seed, step, indices, _SAMPLE_KEY, repeats)
        batch = self.data.read(indices, rngs, with_tokens=self.repa_active(step))
        ts, noises, drops = [], [], []
        for r in rngs:
            g = torch.Generator().manual_seed(int(r.integers(2**63 - 1)))
            ts.append(self.spec.time.sample(1, generator=g))  # (1,)
            noises.append(torch.randn(self.data.shape, generator=g))  # (d, h, w)
            drops.append(bool(r.random() < self.spec.class_dropout))
        batch["t"] = torch.cat(ts)  # (B,)
        batch["noise"] = torch.stack(noises)  # (B, d, h, w)
        batch["drop"] = torch.tensor(drops, dtype=torch.bool)  # (B,)
        return batch

    def condition(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The model's conditioning inputs after (x_t, t): the class labels (B,)."""
        return (batch["y"],)

    def training_step(
        self, modules: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int
    ) -> StepOutput:
        model = modules["model"]
        x, noise, t = batch["x"], batch["noise"], batch["t"]  # (B, d, h, w), same, (B,)
        x_t = interpolate(x, noise, t)  # (B, d, h, w)
        target = velocity_target(x, noise)  # (B, d, h, w)
        use_repa = self.repa_active(step) and "tokens" in batch
        cond = self.condition(batch)
        if use_repa:
            v, hidden = model(
                x_t, t, *cond, return_hidden_at=self.repa_depth, drop_mask=batch["drop"]
            )  # (B, d, h, w), (B, T, D)
        else:
            v = model(x_t, t, *cond, drop_mask=batch["drop"])  # (B, d, h, w)
        vl = velocity_loss(v, target, self.spec.cos_weight, self.spec.cos_norm_floor)
        loss = vl.mean
        logs: dict[str, Any] = {
            "loss/mse": vl.mse.mean().detach(),
            "loss/cos": vl.cos.mean().detach(),
        }
        if use_repa:
            projected = modules["projector"](hidden)  # (B, T, C)
            align = repa_loss(projected, batch["tokens"])  # scalar, −1 = aligned
            loss = loss + self.spec.repa_weight * align
            logs["loss/repa"] = align.detach()
        return StepOutput({"model": loss}, logs)

    # ---- checkpoint extras ---------------------------------------------------------------------
    def _pack_info(self) -> dict[str, Any]:
        pack = dict(self.data.attrs.get("pack") or {})
        return {
            "run": pack.get("run") or pack_run_of(self.data.ref.pack_id),
            # the latents' attributes hold it as pack_checkpoint (older ones under pack)
            "checkpoint": pack.get("checkpoint") or self.data.attrs.get("pack_checkpoint"),
            "pack_id": self.data.ref.pack_id,
        }

    def state_extra(self) -> dict[str, Any]:
        return {
            "stage": "dit",
            "model_id": self.spec.model_id,
            "model_config": self.model_config,
            "model_kwargs": self.model_kwargs,
            "latent_stats": self.data.stats_dict(),
            "latent_shape": list(self.data.shape),
            "pack": self._pack_info(),
            "cache": self.data.describe(),
            "num_classes": self.data.num_classes,
            "class_names": self.data.class_names,
            "transport": self.spec.transport_dict(),
            "repa": {
                "weight": self.spec.repa_weight,
                "depth": self.repa_depth,
                "stop_step": self.spec.repa_stop_step,
                "features": self.data.features_id,
                "token_shape": list(self.data.token_shape or ()),
            },
            "latent_sampling": self.data.sampling,
        }

    def load_state_extra(self, extra: dict[str, Any]) -> None:
        """A run resumes only on the latents (and stats) it was trained on."""
        if not extra:
            return
        old_id = (extra.get("cache") or {}).get("latents")
        if old_id and old_id != self.data.ref.pack_id:
            raise CheckpointError(
                f"this run was trained on latents {old_id}, not {self.data.ref.pack_id}",
                "drop --latents / --pack-run / --entry (and their --allow-change): a resume "
                "trains on the run's own latents; or start a new run with --name",
            )
        if extra.get("latent_stats") and extra["latent_stats"] != self.data.stats_dict():
            raise CheckpointError(
                f"the channel stats of {self.data.ref.pack_id} changed since this run started",
                "start a new run with --name (the latents were re-encoded)",
            )

    # ---- sample grid ---------------------------------------------------------------------------
    def _decoder(self):
        """The pack autoencoder that decodes latents to pixels, or None (latent-space grid)."""
        if self._pack_handle is not None or self._grid_note is not None:
            return self._pack_handle
        ckpt = self._pack_info().get("checkpoint")
        which = (self.data.attrs.get("pack") or {}).get("which") or "ema"
        try:
            from repackctl.pack.load import load_pack
        except ImportError:
            self._grid_note = "repackctl.pack.load is not available: latent-space grid"
            return None
        if not ckpt or not Path(str(ckpt)).exists():
            self._grid_note = "pack checkpoint not found: latent-space grid"
            return None
        try:
            self._pack_handle = load_pack(ckpt, which=which)
        except RepackError as e:
            self._grid_note = f"cannot load the pack ({e.message}): latent-space grid"
        return self._pack_handle

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, step: int, run_dir: Path) -> Path:
        """Class-conditional samples of ``model`` (Euler ODE, few steps, fixed noise) as a PNG."""
        from repackctl.metrics.recon import save_grid
        from repackctl.transport.samplers import sample_ode

        k = min(self.data.num_classes, self.spec.image_classes)
        m = self.spec.image_per_class
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(self.spec.seed + 12345)  # same noise at every grid
        noise = torch.randn((k * m, *self.data.shape), generator=g).to(device)  # (k·m, d, h, w)
        y = torch.arange(k).repeat_interleave(m).to(device)  # (k·m,)
        was_training = model.training
        model.eval()
        try:
            x = sample_ode(lambda x, t, y: model(x, t, y), noise, y, steps=self.spec.image_steps).x
        finally:
            model.train(was_training)
        pixels = self._pixels(x)  # (k·m, H, W, 3)
        rows = [pixels[i * m : (i + 1) * m] for i in range(k)]
        names = self.data.class_names or [str(i) for i in range(k)]
        path = run_dir / "images" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_grid(rows, path, labels=[str(n) for n in names[:k]])

    def _pixels(self, x: torch.Tensor) -> np.ndarray:
        """Normalised latents (B, d, h, w) → uint8 images (B, H, W, 3) through the pack decoder,
        or a latent preview: the first three channels, each mapped to [-1, 1], upscaled."""
        z = self.data.denormalise(x.float().cpu())  # (B, d, h, w) raw packed latents
        handle = self._decoder()
        if handle is not None:
            dec = handle.model.to(x.device)
            img = dec.decode(z.to(x.device)).float().cpu()  # (B, 3, H, W) in [-1, 1]
        else:
            img = x.float().cpu()[:, :3]  # (B, ≤3, h, w)
            if img.shape[1] < 3:
                img = torch.cat([img, img[:, :1].expand(-1, 3 - img.shape[1], -1, -1)], 1)
            lo = img.amin(dim=(0, 2, 3), keepdim=True)
            hi = img.amax(dim=(0, 2, 3), keepdim=True)
            img = (img - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1  # (B, 3, h, w)
            scale = max(1, 64 // img.shape[-1])
            img = torch.nn.functional.interpolate(img, scale_factor=scale, mode="nearest")
        pixels = ((img + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)

    def on_images(
        self, modules: dict[str, nn.Module], ema_module: nn.Module, step: int, run_dir: Path
    ) -> Path:
        return self.sample_grid(ema_module, step, Path(run_dir))


# model options that may be dropped for a factory without them, at these values only
NEUTRAL: dict[str, Any] = {
    "qk_norm": False,
    "no_shift": False,
    "grad_checkpointing": False,
    "class_dropout": 0.1,
    "depth": None,
    "width": None,
    "heads": None,
    "patch": None,
}


def taken_options(model_id: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict:
    """The options of ``kwargs`` that ``factory`` takes; one it does not take is an error.

    An option left at its neutral value (e.g. ``qk_norm=False``) is simply not passed, so a
    factory need not declare switches it does not have; any other is refused, never dropped.
    """
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in kwargs.items() if takes_all or k in params}
    refused = sorted(k for k in set(kwargs) - set(given) if NEUTRAL.get(k, object()) != kwargs[k])
    if refused:
        raise ConfigError(
            f"model {model_id!r} does not take the option(s) {', '.join(refused)} "
            f"({', '.join(f'{k}={kwargs[k]!r}' for k in refused)})",
            "drop those settings for this model, or pick a model that has them",
        )
    return given


def build_model(model_id: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an option its factory does not take is an error
    (:func:`taken_options`)."""
    factory = registry("models").get(model_id)
    given = taken_options(model_id, factory, kwargs)
    for required in ("in_channels", "input_size", "num_classes"):
        if required not in given:
            raise ConfigError(
                f"model {model_id!r} does not take {required}=",
                "a repackctl.models factory takes in_channels, input_size and num_classes",
            )
    return factory(**given)


# what the ``tiny`` test model is (repackctl.models.variants.tiny): a LightningDiT of patch 1,
# or 2 when asked (``--patch 2``: a quarter of the tokens)
TINY_ARCH, TINY_PATCHES = "lightningdit", (1, 2)


def explicit_keys(
    section: Any, keys: tuple[str, ...], sources: dict[str, str] | None = None
) -> set[str]:
    """Those of ``keys`` that a layer (flag, environment, file, library call) set on ``section``
    to a value other than its preset's or its default; a preset's own value does not count. With
    the settings ``sources``, also those a user layer gave (``--preset repa --size tiny --patch
    2``: the patch equals the preset's, and was built as tiny's own 1 while the run recorded 2)."""
    fields = type(section).model_fields
    presets = getattr(type(section), "PRESETS", {}) or {}
    preset = presets.get(getattr(section, "preset", None), {})
    given = {
        k
        for k in keys
        if any(user_given((sources or {}).get(f"{part}.{k}", "default")) for part in ("dit", "t2i"))
    }
    return given | {
        k
        for k in keys
        if k in section.model_fields_set and getattr(section, k) != preset.get(k, fields[k].default)
    }


def _tiny_id(arch: str, patch: int | None, explicit: set[str]) -> str:
    """``tiny``; an explicit ``--arch`` / ``--patch`` the tiny model does not have is an error."""
    patches = " or ".join(map(str, TINY_PATCHES))
    if arch != TINY_ARCH and "arch" in explicit:
        raise ConfigError(
            f"--arch {arch} does not exist at --size tiny: the tiny test model is a {TINY_ARCH} "
            f"of patch {patches}",
            f"drop --arch, or pick a real size: --arch {arch} --size s (or b, l, xl)",
        )
    if patch not in (None, *TINY_PATCHES) and "patch" in explicit:
        raise ConfigError(
            f"--patch {patch} does not exist at --size tiny: the tiny test model has patch "
            f"{patches}",
            f"pass --patch {patches} (or none: 1), or pick a real size: --size s --patch {patch}",
        )
    return "tiny"


def tiny_patch(s: Any, sources: dict[str, str] | None = None) -> int | None:
    """The patch the tiny model is built with: an explicit ``--patch``, else None (its own 1;
    a preset's patch, such as repa's 2, names the patch of the preset's own family)."""
    return s.patch if "patch" in explicit_keys(s, ("patch",), sources) else None


def resolve_model_id(
    arch: str,
    size: str,
    patch: int | None,
    model: str | None,
    explicit: set[str] | frozenset[str] = frozenset(),
) -> str:
    """``--model ID`` wins; else ``<arch>-<size>-<patch>`` (``tiny`` is its own id).

    ``explicit`` names the settings given on purpose (``explicit_keys``): at ``size`` tiny, an
    ``arch`` or ``patch`` among them that the tiny model does not have is refused instead of
    being ignored."""
    from repackctl.models.variants import PATCHES, model_id

    if model:
        return model
    if size == "tiny":
        return _tiny_id(arch, patch, set(explicit))
    if arch not in PATCHES:
        raise ConfigError(f"unknown arch {arch!r}", f"choose one of {', '.join(PATCHES)}")
    return model_id(arch, size, patch if patch is not None else PATCHES[arch][0])


def model_id_of(s: Any, sources: dict[str, str] | None = None) -> str:
    """The model id a ``[dit]`` settings section asks for (see ``resolve_model_id``)."""
    explicit = explicit_keys(s, ("arch", "patch"), sources)
    return resolve_model_id(s.arch, s.size, s.patch, s.model, explicit)


def _width(model: nn.Module) -> tuple[int, int]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "hidden_size") or not hasattr(cfg, "depth"):
        raise ConfigError(
            f"model {type(model).__name__} has no config.hidden_size / config.depth",
            "REPA needs them; train it with --repa-weight 0",
        )
    return int(cfg.hidden_size), int(cfg.depth)


def repa_hidden_default(width: int) -> int:
    """REPA's projector width 2048 for every published size; 4·D for tiny test widths."""
    return 2048 if width >= 256 else 4 * width


def build_spec(settings: Settings, model_id: str, sources: dict[str, str] | None = None) -> DiTSpec:
    """The model, transport and REPA recipe of the resolved ``train`` settings (``sources``:
    their provenance, which tells a given ``--patch`` of the tiny model from a preset's)."""
    s = settings.dit
    return DiTSpec(
        model_id=model_id,
        model_kwargs={
            "qk_norm": s.qk_norm,
            "no_shift": s.no_shift,
            "class_dropout": s.class_dropout,
            "grad_checkpointing": s.grad_checkpointing,
            "depth": s.depth,
            "width": s.width,
            "heads": s.heads,
            "patch": tiny_patch(s, sources) if model_id == "tiny" else None,
        },
        seed=settings.seed,
        class_dropout=s.class_dropout,
        time=TimeSampler(s.time_dist, s.time_mu, s.time_sigma, s.time_shift),
        cos_weight=s.cos_weight,
        cos_norm_floor=s.cos_norm_floor,
        repa_weight=s.repa_weight,
        repa_depth=s.repa_depth,
        repa_stop_step=s.repa_stop_step,
        repa_hidden=s.repa_hidden,
        image_steps=s.image_steps,
    )


def dit_run_dir(settings: Settings) -> Path:
    """``runs/<name>``, the name defaulting to ``dit-<model id>``."""
    s = settings.dit
    return make_run_dir(settings.runs, s.name or f"dit-{model_id_of(s)}")


def data_options(s: Any, memory_gb: float, seed: int = 0) -> dict[str, Any]:
    """The ``LatentData`` options of a ``[dit]`` (or ``[t2i]``) settings section; ``seed`` (the
    run's) keys the posterior samples of ``latent_sampling`` fixed."""
    return dict(
        seed=seed,
        features=s.features,
        repa=s.repa_weight > 0,
        sampling=s.latent_sampling,
        in_memory=s.in_memory,
        memory_gb=memory_gb,
        flip=s.flip,
        # the readers' buffer until the stage resolves the window (``data.cached.shuffle_window``)
        buffer_blocks=s.buffer_blocks if s.buffer_blocks is not None else MIN_BUFFER_BLOCKS,
    )


def check_pack_run(runs: str, pack_run: str | None) -> None:
    """Refuse ``--pack-run`` naming a run of another stage (it was reported as a pack run whose
    latents had not been encoded, with the hint to `pack encode` it)."""
    from repackctl.settings.resume import run_stage

    if pack_run is None or Path(pack_run).name != pack_run:  # matched by name in the cache
        return
    stage = run_stage(make_run_dir(runs, pack_run))
    if stage not in (None, "pack"):
        raise ConfigError(
            f"--pack-run {pack_run} is a {stage} run, not a pack run",
            "pass a run made by `repackctl pack train` (`repackctl runs ls` shows each run's "
            "stage)",
        )


def _check_labelled(data: LatentData) -> None:
    """A class-conditional DiT needs a class per image: an entry of unlabelled images (a flat
    image folder, label -1) ended in a traceback from the class embedding."""
    unlabelled = int((data.labels < 0).sum())
    if unlabelled:
        raise DataError(
            f"cache entry {data.entry.name}: {unlabelled} of {len(data.labels)} images have no "
            "class (an image folder without class folders): a class-conditional DiT needs one",
            "sort the images into class folders (PATH/<class>/…) and extract again; for "
            "captioned images, train with `repackctl train t2i`",
        )


#: whether :func:`check_flip` names a flip it cannot apply (``flip_warning``)
_FLIP_WARNING: ContextVar[bool] = ContextVar("flip_warning", default=True)


@contextmanager
def flip_warning(on: bool) -> Iterator[None]:
    """:func:`check_flip` within says its ``Warning:`` only when ``on``: ``train dit`` / ``train
    t2i`` say it once, when the run starts (not on each resume, nor when nothing is trained)."""
    token = _FLIP_WARNING.set(on)
    try:
        yield
    finally:
        _FLIP_WARNING.reset(token)


def check_flip(data: LatentData, section: str, sources: dict[str, str] | None) -> None:
    """Refuse a flip the user gave (flag, environment, file) that the data cannot apply: latents
    or REPA targets without a mirrored copy (an entry extracted with ``--no-flips``) trained
    without a single mirrored sample while the run recorded flip on. A flip that no layer gave
    now (the default, the run's record) is named in a ``Warning:`` line instead, when the run
    starts (``flip_warning``)."""
    from repackctl.progress import warn
    from repackctl.settings.checks import refuse_ignored

    if data.flip_off is None:
        return
    source = (sources or {}).get(f"{section}.flip", "default")
    why = f"{data.flip_off} (the entry was extracted with --no-flips), so no sample is mirrored"
    if user_given(source):
        fix = "pass --no-flip, or extract the entry with flips (the default) and encode it again"
        refuse_ignored(section, "flip", True, source, f"asks for flips, but {why}", fix)
    if _FLIP_WARNING.get():
        warn(f"{section}.flip is on ({source}), but {why}: the run trains without flips")


def _check_kernels(name: str, device: str, sources: dict[str, str] | None) -> None:
    """Refuse ``--kernels triton`` where it cannot run (no Triton, or a device that is not CUDA
    without ``TRITON_INTERPRET=1``) before anything is written: it failed at the first step,
    after the run folder was made, and every rerun kept the stored backend and failed again."""
    from repackctl.runtime import resolve_device

    try:
        kernels.resolve_backend(name, resolve_device(device))
    except ConfigError as e:
        source = (sources or {}).get("dit.kernels", "the run's record")
        raise ConfigError(
            f"dit.kernels = {name!r} (from {source}): {e.message}",
            "pass --kernels auto (or eager); on a run that trained with triton, add "
            "--allow-change kernels",
        ) from None


def build_task(
    settings: Settings, sources: dict[str, str] | None = None
) -> tuple[DiTTask, TrainConfig]:
    """The task and engine config of the resolved settings (no training yet).

    ``sources`` is the settings provenance; it ranks the precision against the launcher's.
    """
    s = settings.dit
    _check_kernels(s.kernels, settings.device, sources)
    kernels.select(s.kernels)  # the fused ops the model and the losses use in this process
    model_id = model_id_of(s, sources)
    run_dir = dit_run_dir(settings)
    latents, entry = s.latents, s.entry
    if latents is None:  # a run that stored none (started before it was recorded): its own
        trained, trained_entry = trained_latents(run_dir, "dit")
        latents, entry = trained, entry or trained_entry
    check_pack_run(settings.runs, s.pack_run)
    ref = find_latents(settings.cache, entry, latents, s.pack_run)
    data = LatentData(ref, **data_options(s, settings.memory_gb, settings.seed))
    _check_labelled(data)
    spec = build_spec(settings, model_id, sources)
    # in-memory data is shuffled sample by sample; Zarr data by chunk-aligned blocks, within a
    # window sized by the memory budget (official: a uniform shuffle)
    block = 1 if data.in_memory else data.chunk
    window = shuffle_window(
        data,
        given_window(s.buffer_blocks, data.in_memory, sources, "dit"),
        run_dir,
        block=block,
        memory_gb=settings.memory_gb,
        seed=settings.seed,
        labels=data.labels,
        batch=s.global_batch,
    )
    config = TrainConfig.from_settings(
        settings,
        s,
        run_dir,
        sources=sources,
        block=block,
        buffer_blocks=window,
        extra={"stage": "dit", "train": s.model_dump(mode="json")},
    )
    return DiTTask(data, spec), config


def given_window(
    given: int | None, in_memory: bool, sources: dict[str, str] | None, section: str
) -> int | None:
    """The shuffle window ``--buffer-blocks`` gives (``given``) where it shapes the order: None
    (the run's recorded window, else the default) for data held in memory, which is shuffled
    sample by sample, a uniform shuffle whatever the window; a value given now says so on
    stderr. Taken as given, it only changed the run's record: a resume with another value was
    refused as "other buffer_blocks; resuming would change the order of samples"."""
    from repackctl.progress import warn
    from repackctl.settings.checks import user_given

    key = f"{section}.buffer_blocks"
    source = (sources or {}).get(key)
    if not in_memory or given is None or source is None:  # None: not a setting (t2i's base)
        return given
    if user_given(source):
        warn(
            f"{key} {given} ({source}) has no effect: the training data is held in memory "
            "and shuffled sample by sample (a uniform shuffle, whatever the window); pass "
            "--no-in-memory to read it in chunk blocks shuffled within that window"
        )
    return None


_SAMPLE_KEY = 0xD17  # tags the per-sample generators of this stage
