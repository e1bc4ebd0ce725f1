"""Training the Latent-Guided Refiner (RePack then Refine, stage 3) with the one training loop.

Follows guanfangdong/RePack-then-Refine ``stage3/train_refiner.py`` (``RePackRefinerTask``): the
refiner maps (decoded reconstruction, raw latent) to the real image under
L1 + LPIPS + 0.5 × hinge PatchGAN from step 0, with Adam (β = 0.5, 0.9) for both networks; the
discriminator's hinge loss is ½·(relu(1 − D(real)) + relu(1 + D(fake))).

Differences, each a named setting whose ``paper`` preset value is the official one: the
perceptual term is on only when local LPIPS weights are given (``refine.lpips_weights``; no
downloads); the discriminator's norm (``refine.disc_norm``: paper ``batch``, the official
BatchNorm2d; ``small`` ``group``, as batch statistics make a GAN depend on the batch split,
``pack.discriminator``); the discriminator's init (``refine.disc_init``: paper ``pytorch``, the
official net's PyTorch default init with a bias on every conv; ``small`` ``dcgan``, taming's);
an EMA of the refiner used for sampling (``refine.ema_decay``: paper 0,
no EMA, as the official refiner keeps none). The training length is ``refine.steps``, or
``refine.epochs`` passes over the usable triplets when no steps are given (paper: the official
100 epochs). Resume, checkpoints, curves and progress come from ``repackctl.train.train``.

Each triplet's flip slot (``refine.flip``) comes from the sample's own generator, keyed by
(seed, step, sample, repeat): ``data.cached.sample_generators``, as in the pack stage, not the
micro-batch's generator that the loop hands ``get_batch``. A micro-batch's generator is keyed by
its offset in the global batch, so drawing the slots of a micro-batch from it gave a sample
another flip when the batch was split otherwise (2 processes instead of 1): W processes now
train the weights of one process, to float rounding (with the per-sample GroupNorm
discriminator too; a BatchNorm one normalises with each process's own samples).

The checkpoint's task extra records ``latent_convention: "raw"``, the refiner config and the
pack id: ``refine.apply.load_refiner`` refuses a refiner trained on anything but raw packed
latents, or on another pack model than the samples' (reference/methods.md, "refiner pitfall").

Legend: B batch, F flips, d latent channels, h×w latent grid, R image side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repackctl.cache.commands import refine_train_command, root_flags
from repackctl.cache.integrity import GuardedArray, repair_hint
from repackctl.cache.store import WRITTEN, ArrayGroup, DatasetEntry
from repackctl.cache.trained import TrainedOn, check_trained_data, pack_trained_on
from repackctl.data.cached import (
    MEMORY_GB,
    CachedRows,
    images_to_float,
    mirror,
    sample_generators,
    written_rows,
)
from repackctl.errors import CheckpointError, ConfigError
from repackctl.pack.discriminator import (
    MIN_LAST_SIDE,
    DiscriminatorConfig,
    PatchDiscriminator,
    check_disc_depth,
    hinge_d_loss,
    hinge_g_loss,
)
from repackctl.paths import cache_root
from repackctl.progress import LOG_FILE, ProgressFactory, null_progress, with_log_file
from repackctl.refine.network import NORM_EPS, LatentGuidedRefiner, RefinerConfig
from repackctl.refine.triplets import build_triplets, open_triplets
from repackctl.run_lock import released_after
from repackctl.runs import chained_run
from repackctl.settings import Settings
from repackctl.settings.checks import unreached_ema_decay
from repackctl.settings.resume import (
    check_new_run,
    keep_started_values,
    record_resolved,
    resume_lines,
    resume_settings,
    with_resolved,
)
from repackctl.settings.training import check_batch_fits
from repackctl.train import OptimizerSpec, StepOutput, TrainConfig, train
from repackctl.train.checkpoint import (
    checkpoint_to_resume,
    restore_interrupted_resaves,
)
from repackctl.train.logging import log_lines
from repackctl.train.shown import idle_lines

# Adam betas of the official refiner (and of stage 1)
BETAS = (0.5, 0.9)


@dataclass(frozen=True)
class RefineLossWeights:
    """Weights of the generator loss terms (0 switches a term off)."""

    l1: float = 1.0
    perceptual: float = 1.0
    gan: float = 0.5
    features: float = 0.0  # weights-free perceptual term (pack.features)


# the pack stage's key (0xAE): a triplet's flip is drawn as pack draws that sample's; the
# refiner of the committed demo results was trained with it
_SAMPLE_KEY = 0xAE


class RefineTask:
    """``TrainTask``: modules ``model`` (refiner) and ``disc`` (PatchGAN, when the GAN is on)."""

    def __init__(
        self,
        entry: DatasetEntry,
        triplets: ArrayGroup,
        refiner_config: RefinerConfig,
        disc_config: DiscriminatorConfig,
        weights: RefineLossWeights,
        lpips: nn.Module | None,
        pack_info: dict[str, Any],
        in_memory: bool | None = None,
        memory_gb: float = MEMORY_GB,
        feature_loss: nn.Module | None = None,
        flip: bool = True,
        seed: int = 0,
        again: str = "the same `repackctl refine train`",
    ) -> None:
        """``again``: the command that resumes this run, named by the repair hint of damaged
        triplets (``refine_train_command``)."""
        self.entry = entry
        self.flip = flip  # mirror triplets at random (refine.flip; the official refiner never does)
        self.seed = seed  # keys each sample's flip (``sample_generators``)
        self.feature_loss = feature_loss
        self.triplets = triplets
        self.refiner_config = refiner_config
        self.disc_config = disc_config
        self.weights = weights
        self.lpips = lpips
        self.pack_info = pack_info
        self.positions = np.flatnonzero(triplets.done_mask() == WRITTEN)
        if len(self.positions) == 0:
            raise ConfigError(f"no usable triplets in {entry.name}", "extract more images")
        self.flips = int(triplets["latent"].shape[1])
        used = triplets.done_mask() == WRITTEN
        tname = triplets.group.basename
        redo = repair_hint(entry.name, again)
        redo_img = repair_hint(entry.name, "the same `repackctl extract`")
        arrays = {
            "images": GuardedArray(entry.images, used, f"{entry.name} images", redo_img),
            "recon": GuardedArray(
                triplets["recon"], used, f"{entry.name} triplets/{tname}/recon", redo
            ),
            "latent": GuardedArray(
                triplets["latent"], used, f"{entry.name} triplets/{tname}/latent", redo
            ),
        }
        # the cache-backed dataset over the rows with a triplet (position k = row positions[k])
        self.rows = CachedRows(
            arrays, self.positions, entry.chunk, in_memory=in_memory, memory_gb=memory_gb
        )

    # ---- TrainTask -----------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"model": LatentGuidedRefiner(self.refiner_config)}
        if self.weights.gan > 0:
            modules["disc"] = PatchDiscriminator(self.disc_config)
        if self.lpips is not None:
            self.lpips.eval()
        return modules

    def optimizers(self) -> dict[str, OptimizerSpec]:
        specs = {"model": OptimizerSpec(("model",), betas=BETAS, every_parameter_used=True)}
        if self.weights.gan > 0:
            specs["disc"] = OptimizerSpec(("disc",), betas=BETAS, overlap=False)
        return specs

    def num_samples(self) -> int:
        return len(self.positions)

    def get_batch(
        self,
        indices: np.ndarray,
        step: int,
        generator: np.random.Generator,
        repeats: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Real image, reconstruction and raw latent of ``indices``, each at the sample's flip
        slot (slot 0, as stored, for all when flips are off), drawn from the sample's own
        generator (``sample_generators``, not the micro-batch's ``generator``): the same draws
        for any number of processes or micro-batches."""
        flip = self.flip_slots(indices, step, repeats)  # (B,)
        real = mirror(self.rows.take("images", indices), flip)  # (B, R, R, 3) uint8
        rec = self.rows.take_flip("recon", indices, flip)  # (B, R, R, 3)
        lat = self.rows.take_flip("latent", indices, flip)  # (B, d, h, w)
        return {
            "gt": images_to_float(real),
            "rec": images_to_float(rec),
            "z": torch.from_numpy(lat).float(),
        }

    def flip_slots(
        self, indices: np.ndarray, step: int, repeats: np.ndarray | None = None
    ) -> np.ndarray:
        """The stored flip slot (B,) of each sample ``indices`` of step ``step`` (``repeats``:
        :func:`~repackctl.data.cached.sample_generators`)."""
        if not self.flip:
            return np.zeros(len(indices), dtype=np.int64)
        rngs = sample_generators(self.seed, step, indices, _SAMPLE_KEY, repeats)
        return np.array([r.integers(self.flips) for r in rngs], dtype=np.int64)

    def training_step(self, modules: dict[str, nn.Module], batch: dict, step: int) -> StepOutput:
        model = modules["model"]
        out = model(batch["rec"], batch["z"])  # (B, 3, R, R)
        l1 = F.l1_loss(out, batch["gt"])
        loss = self.weights.l1 * l1
        logs = {"l1": float(l1.detach())}
        if self.lpips is not None and self.weights.perceptual > 0:
            self.lpips.to(out.device)
            perc = self.lpips(out, batch["gt"]).mean()
            loss = loss + self.weights.perceptual * perc
            logs["lpips"] = float(perc.detach())
        if self.feature_loss is not None and self.weights.features > 0:
            self.feature_loss.to(out.device)
            feat = self.feature_loss(out, batch["gt"]).mean()
            loss = loss + self.weights.features * feat
            logs["features"] = float(feat.detach())
        losses = {"model": loss}
        if "disc" in modules:
            disc = modules["disc"]
            g_gan = hinge_g_loss(disc(out))
            losses["model"] = loss + self.weights.gan * g_gan
            logs["g_gan"] = float(g_gan.detach())
            # the detached output: the discriminator update must not reach the refiner
            losses["disc"] = hinge_d_loss(disc(batch["gt"]), disc(out.detach()))
        return StepOutput(losses, logs)

    def state_extra(self) -> dict[str, Any]:
        return {
            "stage": "refine",
            "latent_convention": "raw",
            "refiner_config": self.refiner_config.to_dict(),
            "disc_config": self.disc_config.to_dict(),
            "flip": self.flip,
            "loss_weights": {
                "l1": self.weights.l1,
                "perceptual": self.weights.perceptual if self.lpips is not None else 0.0,
                "gan": self.weights.gan,
                "features": self.weights.features if self.feature_loss is not None else 0.0,
            },
            "pack": self.pack_info,
            # the latent (d, h, w) it was trained on, read by ``RefinerHandle.check_fits``
            "latent_shape": [int(s) for s in self.triplets["latent"].shape[2:]],
            # the root absolute (a relative --cache read from another folder is another cache)
            # and the images' source attributes: a resume on another entry of this name is
            # refused (``check_trained_images``)
            "cache": {
                "root": cache_root(self.entry.root),
                "entry": self.entry.name,
                "triplets": self.triplets.group.basename,
                "source": self.entry.attrs.get("source"),
            },
        }

    def load_state_extra(self, extra: dict[str, Any]) -> None:
        disc = self.disc_config if self.weights.gan > 0 else None
        check_resume_extra(extra, self.pack_info["pack_id"], self.refiner_config, disc)

    def on_images(
        self, modules: dict[str, nn.Module], ema_module: nn.Module, step: int, run_dir: Path
    ) -> Path:
        """Rows of real / reconstruction / refined (EMA) images of the first samples."""
        from repackctl.files import to_uint8
        from repackctl.metrics.recon import save_grid

        batch = self.get_batch(np.arange(min(8, len(self.positions))), 0, np.random.default_rng(0))
        device = next(ema_module.parameters()).device
        with torch.no_grad():
            ref = ema_module(batch["rec"].to(device), batch["z"].to(device))  # (B, 3, R, R)
        rows = [to_uint8(batch["gt"]), to_uint8(batch["rec"]), to_uint8(ref)]
        path = Path(run_dir) / "images" / f"step-{step:07d}.png"
        save_grid(rows, path, ["real", "recon", "refined"])
        return path


def refiner_config_for(
    latent_channels: int, resolution: int, settings: Settings, norm_eps: float = NORM_EPS
) -> RefinerConfig:
    """The official U-Net layout scaled to the resolution: attention at R/4 and R/8 (64², 32²);
    ``norm_eps``: the official GroupNorm eps, or the one a resumed run was built with."""
    if resolution % 8:
        raise ConfigError(
            f"the refiner needs an image side divisible by 8, got {resolution}", "use 32, 64, 256 …"
        )
    return RefinerConfig(
        latent_channels=latent_channels,
        resolution=resolution,
        base_channels=settings.refine.base_channels,
        attn_resolutions=(resolution // 4, resolution // 8),
        output=settings.refine.output,
        max_groups=settings.refine.norm_groups,
        norm_eps=norm_eps,
    )


def started_norm_eps(latest: Path | None) -> float:
    """The GroupNorm eps of the network the run's newest checkpoint ``latest`` was trained with
    (runs from before ``norm_eps`` was recorded: 1e-6); the official 1e-5 for a new run."""
    from repackctl.train.checkpoint import read_state

    recorded = read_state(latest).get("extra", {}).get("refiner_config") if latest else None
    return RefinerConfig.from_dict(recorded).norm_eps if recorded else NORM_EPS


# refine settings a run's stored record may lack (it started before they existed), with the
# value such a run trained with: triplets were always mirrored at random, and the
# discriminator had the DCGAN init
STARTED_WITHOUT: dict[str, Any] = {"flip": True, "disc_init": "dcgan"}


# DiscriminatorConfig field → the refine setting that sets it (for the hint of a refused resume)
DISC_SETTINGS = {"norm": "disc_norm", "base_channels": "disc_channels", "init": "disc_init"}
# RefinerConfig field → the refine setting that sets it (for the hint of a refused resume)
REFINER_SETTINGS = {
    "max_groups": "norm_groups",
    "base_channels": "base_channels",
    "output": "output",
}


def check_resume_extra(
    extra: dict[str, Any],
    pack_id: str,
    refiner_config: RefinerConfig,
    disc_config: DiscriminatorConfig | None = None,
) -> None:
    """Refuse to resume a refiner checkpoint (its task ``extra``) of another pack model, network
    config or discriminator (``disc_config``; None: not compared, the GAN is off)."""
    old = extra.get("pack", {}).get("pack_id")
    if old is not None and old != pack_id:
        trained = extra.get("pack", {}).get("checkpoint")
        raise CheckpointError(
            f"this refiner run was trained on pack model {old}, not {pack_id}",
            _pack_hint(trained) + "use a new --name for a refiner of another pack model",
        )
    recorded = extra.get("refiner_config")
    if recorded is not None:
        _check_resume_refiner(recorded, refiner_config)
    if disc_config is not None and extra.get("disc_config"):
        _check_resume_disc(extra["disc_config"], disc_config)


def _check_resume_refiner(recorded: dict[str, Any], refiner_config: RefinerConfig) -> None:
    """The same refiner network as recorded, else a refusal naming each field that differs by
    the setting that gives it (:data:`REFINER_SETTINGS`) and the flags that resume the run (it
    named none: a run started before refine.norm_groups, under the small preset's 4 groups
    now, was told only "another network config")."""
    if RefinerConfig.from_dict(recorded) == refiner_config:
        return
    before, now = RefinerConfig.from_dict(recorded).to_dict(), refiner_config.to_dict()
    changed = [k for k, v in now.items() if before.get(k) != v]
    setting = REFINER_SETTINGS
    named = "; ".join(f"{setting.get(k, k)}: {before.get(k)!r} → {now[k]!r}" for k in changed)
    flags = [f"--{setting[k].replace('_', '-')} {before.get(k)}" for k in changed if k in setting]
    raise CheckpointError(
        f"this refiner run was trained with another network config ({named})",
        (f"resume it with {' '.join(flags)}, " if flags else "use the same refiner settings, ")
        + "or start a new run with another --name",
    )


def _pack_hint(trained: str | None) -> str:
    """How to resume on the pack checkpoint ``trained`` that a refused resume names (a pack run
    trained on since: its newest checkpoint is another pack model). The hint only named it, and
    ``--pack-run`` with that folder was refused in turn as a change of ``refine.pack_run``."""
    if not trained:
        return ""
    if not Path(trained).is_dir():
        return f"the pack checkpoint it was trained on ({trained}) is not found; "
    return (
        f"resume it on the pack checkpoint it was trained on with `--pack-run {trained} "
        "--allow-change pack_run`, or "
    )


def _check_resume_disc(recorded: dict[str, Any], disc_config: DiscriminatorConfig) -> None:
    """The same discriminator as recorded (a preset may have changed: paper picks BatchNorm)."""
    before = DiscriminatorConfig.from_dict(recorded).to_dict()
    for key, value in disc_config.to_dict().items():
        if before.get(key) == value:
            continue
        setting = DISC_SETTINGS.get(key)
        how = (
            f"resume it with --{setting.replace('_', '-')} {before.get(key)}"
            if setting
            else ("resume it with the settings it was started with")
        )
        raise CheckpointError(
            f"this refiner run was trained with discriminator {key} = {before.get(key)!r}, "
            f"now {value!r}",
            f"{how} (a preset may have changed), or pick a new run name with --name",
        )


def _check_resume_ema(state_config: dict[str, Any], ema_decay: float, allow: list[str]) -> None:
    """Refuse another EMA decay than the run was trained with (the paper preset keeps no EMA
    since refine.ema_decay became a preset value; runs before it used 0.999), unless allowed."""
    before = state_config.get("ema_decay")
    if before is None or float(before) == ema_decay:
        return
    if {"all", "ema_decay", "refine.ema_decay"} & set(allow):
        return
    raise CheckpointError(
        f"this refiner run was trained with refine.ema_decay = {before!r}, now {ema_decay!r}",
        f"resume it with --ema-decay {before} as it was started (a preset may have changed), "
        "pass --allow-change ema_decay, or pick a new run name with --name",
    )


def check_resumable(
    latest: Path | None,
    pack_id: str,
    refiner_config: RefinerConfig,
    disc_config: DiscriminatorConfig | None = None,
    ema_decay: float | None = None,
    allow: list[str] | None = None,
) -> None:
    """Before anything is built or written: the checkpoint ``train`` would resume from
    (``latest``, the run's newest complete one; None for a new run) fits this pack model,
    network config, discriminator (None: not compared) and EMA decay (None: not compared)."""
    from repackctl.train.checkpoint import read_state

    if latest is None:
        return
    state = read_state(latest)
    check_resume_extra(state.get("extra", {}), pack_id, refiner_config, disc_config)
    if disc_config is not None:
        _check_resume_has_disc(state, latest)
    if ema_decay is not None:
        _check_resume_ema(state.get("config") or {}, ema_decay, allow or [])


def check_trained_images(entry: DatasetEntry, pack: Any, latest: Path | None, run: str) -> None:
    """Before anything is written: refuse an entry of the name the refiner run (its checkpoint
    ``latest``; None: a new run) or its pack model was trained on that holds other images (an
    entry extracted again with another seed, or another folder's cache of that name reached
    through a relative ``--cache``): triplets were built from it and the run resumed on them
    without a word.
    The check is ``pack encode``'s (``cache.trained``): the images' source attributes are
    compared, not the paths, so a moved or copied cache resumes."""
    from repackctl.pack.load import LATENT_STATS
    from repackctl.train.checkpoint import read_state

    if latest is not None:
        cache = (read_state(latest).get("extra") or {}).get("cache") or {}
        if cache.get("entry"):
            trained = TrainedOn(
                run=f"refiner run {run}",
                entry=str(cache["entry"]),
                root=str(cache.get("root") or ""),
                source=cache.get("source"),
                where=str(latest),
                hint="train a new refiner on this data: `repackctl refine train --cache {root} "
                f"--pack-run {pack.run_name} --name NEW-RUN`",
            )
            check_trained_data(entry, trained)
    check_trained_data(entry, pack_trained_on(pack, pack.checkpoint / LATENT_STATS))


def _check_resume_has_disc(state: dict[str, Any], latest: Path) -> None:
    """With the GAN on now, the checkpoint ``latest`` (its ``state``) must hold a
    discriminator: a run trained with ``refine.gan_weight`` 0 has none, and turning the GAN on
    at resume (``--allow-change gan_weight``) failed after the triplets were built, with an
    error that called the checkpoint incomplete."""
    modules = state.get("modules")
    if not isinstance(modules, list) or "disc" in modules:
        return
    raise CheckpointError(
        f"this refiner run was trained without the discriminator (refine.gan_weight 0): its "
        f"checkpoint {latest.name} holds none to resume with --gan-weight above 0",
        "resume it with --gan-weight 0 as it was trained, or start a new run with --name to "
        "train with the GAN",
    )


def refine_length(
    settings: Settings, triplets: int, messages: list[str] | None = None
) -> tuple[int, dict[str, Any]]:
    """``(steps, record)``: a given ``refine.steps`` wins; else ``refine.epochs`` passes over the
    ``triplets`` usable triplets at the global batch, ceil(epochs × triplets / batch), told in
    ``messages``."""
    cfg = settings.refine
    if cfg.steps is not None:
        return cfg.steps, {"steps": cfg.steps, "epochs": None, "triplets": triplets}
    if cfg.epochs is None:
        raise ConfigError(
            "refine.steps and refine.epochs are both unset: the training length is unknown",
            "pass --steps N or --epochs N",
        )
    steps = math.ceil(cfg.epochs * triplets / cfg.batch_size)
    if messages is not None:
        messages.append(
            f"training length: {cfg.epochs} epochs × {triplets} triplets / batch "
            f"{cfg.batch_size} = {steps} steps"
        )
    return steps, {"steps": steps, "epochs": cfg.epochs, "triplets": triplets}


def _lpips_paths(cfg: Any) -> list[str]:
    """The LPIPS weights files ``refine.lpips_weights`` names (comma-separated, as for pack)."""
    return [p.strip() for p in (cfg.lpips_weights or "").split(",") if p.strip()]


def _check_lpips(cfg: Any, sources: dict[str, str]) -> None:
    """Refuse LPIPS weights named (``refine.lpips_weights``) that are no file while the
    perceptual term is on: the refiner trained without the term, with a warning that no weights
    were given and the missing path in its record (a resume whose file went missing since
    trained on without it)."""
    if cfg.perceptual_weight == 0:
        return
    missing = [p for p in _lpips_paths(cfg) if not Path(p).expanduser().is_file()]
    if missing:
        source = sources.get("refine.lpips_weights", "default")
        raise ConfigError(
            f"refine.lpips_weights names {missing[0]} (from {source}), which is no file: the "
            f"refiner would train without the perceptual term (refine.perceptual_weight "
            f"{cfg.perceptual_weight:g})",
            "pass --lpips-weights with an existing LPIPS-VGG .safetensors/.pth file, or leave "
            "--lpips-weights out to train without the term (a run that recorded it: "
            "--perceptual-weight 0 --allow-change perceptual_weight)",
        )


def _lpips(settings: Settings, messages: list[str]) -> nn.Module | None:
    from repackctl.pack.losses import PerceptualUnavailable, load_lpips

    cfg = settings.refine
    if cfg.perceptual_weight == 0:
        return None
    paths = _lpips_paths(cfg)
    if not paths:
        messages.append(
            "Warning: no LPIPS weights (refine.lpips_weights); training without the perceptual term"
        )
        return None
    try:
        return load_lpips(paths if len(paths) > 1 else paths[0])
    except PerceptualUnavailable as e:
        raise ConfigError(e.message, e.hint) from None


def refine_run_dir(settings: Settings, pack_run: str | None = None) -> Path:
    """``runs/<name>`` of the refiner run that ``refine train`` trains or resumes: the name
    defaults to ``refine-<pack run>``, the pack run being ``pack_run`` (None: ``refine.pack_run``,
    else the newest pack run, as the command takes it)."""
    from repackctl.pack.load import load_pack
    from repackctl.paths import run_dir

    cfg = settings.refine
    if cfg.name:
        return run_dir(settings.runs, cfg.name)
    pack_run = pack_run or cfg.pack_run
    pack_run = pack_run or chained_run(settings.runs, "pack", "--pack-run", messages=None)
    return run_dir(settings.runs, f"refine-{load_pack(pack_run, runs=settings.runs).run_name}")


@released_after()
def run_refine_train(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    sources: dict[str, str] | None = None,
    config_record: dict[str, Any] | None = None,
) -> Path:
    """Build the triplets of the pack run (resumable), then train (or resume) the refiner.

    An existing run resumes from its stored settings (``repackctl.settings.resume``).
    """
    from repackctl.pack.load import load_pack

    cfg = settings.refine
    # the default run name is refine-<newest pack run>; a named run resolves its pack run below
    newest = None if cfg.pack_run or cfg.name else chained_run(settings.runs, "pack", "--pack-run")
    pack_run = cfg.pack_run or newest
    run = refine_run_dir(settings, pack_run)
    settings, config_record, rec = resume_settings(run, settings, config_record, "refine")
    restore_interrupted_resaves(run)
    # the one the engine resumes from; None: new; step folders none of which verifies: refused
    latest = checkpoint_to_resume(run, warn=None)
    settings, config_record, kept = keep_started_values(
        run, settings, config_record, "refine", STARTED_WITHOUT
    )
    cfg = settings.refine
    sources = (config_record or {}).get("sources", sources)
    pack = load_pack(_pack_run(settings, pack_run, latest, config_record), runs=settings.runs)
    cache = pack.extra.get("cache", {})
    entry = DatasetEntry.open(settings.cache, cfg.entry or cache["entry"])
    rcfg = refiner_config_for(
        pack.latent_channels,
        entry.resolution,
        settings,
        started_norm_eps(latest),
    )
    disc = _discriminator(cfg, entry.resolution)
    _check_flip(cfg.flip, entry, cache["features"], sources or {})
    if cfg.steps is not None and latest is None:
        check_new_run(cfg.steps, run, "refine", sources)
    # another pack model, network, discriminator, EMA or images: refused before any write
    check_resumable(
        latest,
        pack.pack_id,
        rcfg,
        disc if cfg.gan_weight > 0 else None,
        cfg.ema_decay,
        cfg.allow_change,
    )
    check_trained_images(entry, pack, latest, run.name)
    resumed = resume_lines(rec, kept)
    if _shown(run, latest, cfg.steps, resumed, progress):
        return run  # nothing in the run folder changes but train.lock
    _check_before_writes(cfg, entry, cache["features"], latest, sources or {})
    progress = with_log_file(progress, run / LOG_FILE)
    _build_triplets(settings, entry, cache["features"], pack, progress)
    messages: list[str] = []
    again = refine_train_command(run.name, _again_flags(settings, config_record, rec))
    task = _refine_task(settings, entry, rcfg, disc, pack, messages, again)
    steps, length = refine_length(settings, task.num_samples(), messages)
    # a given --ema-decay so slow that the EMA (no warm-up here) stays mostly the initial weights
    messages += filter(None, [unreached_ema_decay(cfg, "refine", sources or {}, steps, False)])
    config = TrainConfig.from_settings(
        settings,
        cfg,
        run,
        sources=sources,
        steps=steps,
        betas=BETAS,
        ema_warmup=False,
        image_every=0,
        extra={
            "stage": "refine",
            "refine": with_resolved(cfg.model_dump(mode="json"), config_record, "refine"),
            "length": length,
            "settings": config_record,
        },
    )
    # logged once the engine accepted the resume (it may still refuse it), never before
    train(task, config, progress, [*resumed, *messages])
    return Path(config.run_dir)


def _check_before_writes(
    cfg: Any, entry: DatasetEntry, features: str, latest: Path | None, sources: dict[str, str]
) -> None:
    """The checks of ``refine train`` before the triplets and log.txt are written: the LPIPS
    files (``_check_lpips``), and a new run's global batch against the rows of ``entry`` with
    an image and ``features`` (the rows its triplets are built for): a larger batch was
    accepted and every batch repeated triplets."""
    _check_lpips(cfg, sources)
    if latest is None:
        rows = len(written_rows(entry.done_mask(), entry.features(features).done_mask()))
        check_batch_fits("refine", cfg.batch_size, rows, f"usable images of {entry.name}", sources)


def _check_flip(flip: bool, entry: DatasetEntry, features: str, sources: dict[str, str]) -> None:
    """Refuse ``refine.flip`` given by the user (flag, environment, config file) for features
    extracted without the mirrored images (``extract --no-flips``: one flip): no triplet can be
    mirrored, so it was accepted, recorded as on, and changed nothing."""
    from repackctl.settings.checks import undo_given, user_given

    source = sources.get("refine.flip", "default")
    if not flip or not user_given(source):
        return
    flips = int(entry.features(features)["tokens"].shape[1])
    if flips > 1:
        return
    raise ConfigError(
        f"refine.flip is on (from {source}), but features {features} in {entry.name} hold the "
        "un-mirrored images only (extracted with --no-flips): no triplet can be mirrored, so "
        "it would be ignored; nothing was written",
        f"{undo_given(source, '--flip')} (or pass --no-flip) to train on the images as they "
        "are, or extract the entry again without --no-flips to mirror them",
    )


def _discriminator(cfg: Any, side: int) -> DiscriminatorConfig:
    """The refiner's PatchGAN (``refine.disc_channels`` / ``disc_norm`` / ``disc_init``, the
    default depth).
    With the GAN on, one too deep for images of ``side`` px is refused before anything is
    written: its convolutions failed with a traceback at the first step, after the triplets were
    built (the refiner needs a side divisible by 8: 8 and 16 px are too small for it)."""
    disc = DiscriminatorConfig(
        base_channels=cfg.disc_channels, norm=cfg.disc_norm, init=cfg.disc_init
    )
    if cfg.gan_weight > 0:
        try:
            check_disc_depth(disc, side, "the refiner's PatchGAN depth (n_layers)", 1)
        except ConfigError as e:
            raise ConfigError(
                e.message,
                "pass --gan-weight 0 to train the refiner without the GAN (its PatchGAN depth is "
                f"fixed), or use images of {MIN_LAST_SIDE * 2**disc.n_layers} px or more",
            ) from None
    return disc


def trained_pack_run(latest: Path | None) -> str | None:
    """The pack run the checkpoint ``latest`` (None: a new run) was trained on, as its task
    extra recorded it: a run whose settings record names none (it started before the pack run
    was recorded) resumes on it, not on whatever pack run is newest by then."""
    from repackctl.train.checkpoint import read_state

    if latest is None:
        return None
    run = (read_state(latest).get("extra") or {}).get("pack", {}).get("run")
    return run if isinstance(run, str) and run else None


def _pack_run(
    settings: Settings, pack_run: str | None, latest: Path | None, record: dict[str, Any] | None
) -> str:
    """The pack run to train on: the one given or stored (``settings``), the default name's
    (``pack_run``), the one the checkpoint ``latest`` was trained on, else the newest (said on
    stderr); recorded in the run's settings ``record`` when no layer named it."""
    run = settings.refine.pack_run or pack_run or trained_pack_run(latest)
    run = run or chained_run(settings.runs, "pack", "--pack-run", messages=None)
    record_pack_run(record, run)
    return run


def record_pack_run(record: dict[str, Any] | None, pack_run: str) -> None:
    """Put the pack run the refiner trains on into the settings record the run stores when no
    layer named it (``--pack-run`` not given), as ``train dit`` records its latents
    (``dit.run.record_latents``): a resume with ``--name`` then trains on it, not on the pack
    run that is newest by then (refused as another pack model). A pack run given on resume
    that differs is still refused (``settings.resume.reconcile``, then ``check_resumable``)."""
    record_resolved(record, "refine", {"pack_run": pack_run})


def _shown(
    run: Path, latest: Path | None, steps: int | None, lines: list[str], progress: ProgressFactory
) -> bool:
    """Whether ``run``'s newest checkpoint ``latest`` is at or past ``steps``: then the run is
    shown (``lines`` and its step, checkpoint, last losses; not written to log.txt) and nothing
    is trained or written, as ``train dit`` does."""
    shown = idle_lines(run, latest, steps)
    if shown is None:
        return False
    log_lines(progress, "refine", lines + shown)
    return True


def _build_triplets(
    settings: Settings,
    entry: DatasetEntry,
    features: str,
    pack: Any,
    progress: ProgressFactory,
) -> None:
    """The pack run's triplets in ``entry`` (resumable)."""
    from repackctl.runtime import resolve_device

    cfg = settings.refine
    log_lines(
        progress,
        "triplets",
        [f"building refiner triplets of {pack.pack_id} in {entry.name}"],
    )
    build_triplets(
        entry,
        features,
        pack,
        noise=cfg.noise,
        seed=settings.seed,
        batch_size=cfg.triplet_batch,
        device=resolve_device(settings.device),
        progress=progress,
    )


def _again_flags(settings: Settings, record: dict[str, Any] | None, rec: Any) -> list[str]:
    """The flags besides --name that the command resuming this run needs to train what this one
    was to (``refine_train_command``): the refine settings given as flags now that a stored run
    does not hold (all of them for a new run: it has no stored settings yet; only the changes
    for a resume, with their --allow-change), and the --runs / --cache that find it."""
    sources = (record or {}).get("sources", {})
    values = (record or {}).get("values", {}).get("refine", {})
    if rec is None:
        keys = [k for k, src in sources.items() if k.startswith("refine.") and src == "flag"]
    else:
        keys = [k for k, _, _ in [*rec.changes, *rec.allowed] if k.startswith("refine.")]
    flags: list[str] = []
    for key in keys:
        name = key.partition(".")[2]
        value = values.get(name)
        if name in ("name", "allow_change") or value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags += [flag, str(value)]
    for key, _, _ in rec.allowed if rec is not None else []:
        flags += ["--allow-change", key.partition(".")[2]]
    return flags + root_flags(settings.runs, settings.cache)


def _refine_task(
    settings: Settings,
    entry: DatasetEntry,
    rcfg: RefinerConfig,
    disc: DiscriminatorConfig,
    pack: Any,
    messages: list[str],
    again: str,
) -> RefineTask:
    """The ``RefineTask`` of ``settings.refine`` over the pack run's triplets (LPIPS and the
    feature distance loaded as the weights ask; warnings go to ``messages``; ``again``: the
    command that resumes the run)."""
    cfg = settings.refine
    triplets = open_triplets(entry, pack.pack_id, cfg.noise, settings.seed)
    feature_loss = None
    if cfg.feature_weight > 0:
        from repackctl.pack.load import builtin_feature_loss

        feature_loss = builtin_feature_loss(entry.resolution, settings.seed)
    return RefineTask(
        entry,
        triplets,
        rcfg,
        disc,
        RefineLossWeights(cfg.l1_weight, cfg.perceptual_weight, cfg.gan_weight, cfg.feature_weight),
        _lpips(settings, messages),
        {"run": pack.run_name, "checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
        memory_gb=settings.memory_gb,
        feature_loss=feature_loss,
        flip=cfg.flip,
        seed=settings.seed,
        again=again,
    )
