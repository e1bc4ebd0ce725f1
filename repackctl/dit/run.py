"""`repackctl train dit`: a DiT on packed latents with flow matching and REPA (RePack stage 2).

Follows the official RePack-then-Refine stage 2 (LightningDiT recipe: linear path, velocity
prediction, logit-normal t, MSE + (1 − cos) loss, AdamW 2e-4 (0.9, 0.95), EMA 0.9999; see
``reference/methods.md``) in our time convention (t = 0 data, t = 1 noise, DESIGN.md §2), plus
REPA (Yu et al. 2025, sihyun-yu/REPA ``train.py`` / ``loss.py``): an MLP projector on the hidden
state after block k, negative cosine against the frozen encoder's tokens of the same images and
the same flip, read from the cache (the encoder never runs here), weight λ = 0.5, optionally
switched off at a step (HASTE).

Randomness: every sample's flip, posterior noise, t, noise and label-drop come from a generator
keyed by (seed, step, sample index), never from the global RNG or the batch split. So a run gives
the same numbers with any number of processes or micro-batches, and resumes bit-identically.

``run_dit_train`` is the library entry of the CLI; ``load_dit`` rebuilds a trained model from
a run or checkpoint (the contract used by sampling). A ``--preset paper`` run also gets the
official sampling settings as its ``sampling.json`` (``write_sampling_json``, shared with
``repackctl import official``), a ``--preset repa`` run REPA's (README.md "Evaluation": SDE,
250 steps, CFG 1.8, guidance for t ≤ 0.7), a ``train t2i --preset repa`` run REPA's
text-to-image ones (``generate_t2i.py``: Euler ODE, 50 steps, CFG 1.5 at every t); ``repackctl
sample`` uses them where no flag overrides them. Shapes: B batch, d latent channels, h×w latent
grid, T tokens, D width, C encoder width.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repackctl.dit.task import build_task, check_flip, dit_run_dir, flip_warning
from repackctl.errors import CheckpointError, ConfigError
from repackctl.files import write_json_atomic
from repackctl.paths import SAMPLING_JSON
from repackctl.progress import LOG_FILE, ProgressFactory, null_progress, with_log_file
from repackctl.run_files import json_sha256
from repackctl.run_lock import LOCK_FILE, lock_run, released_after
from repackctl.settings.checks import unreached_steps
from repackctl.settings.resume import (
    check_new_run,
    keep_started_values,
    record_resolved,
    resume_lines,
    resume_settings,
    with_resolved,
)
from repackctl.train.checkpoint import (
    checkpoint_to_resume,
    latest_checkpoint,
    read_state,
    restore_interrupted_resaves,
)
from repackctl.train.logging import log_lines
from repackctl.train.loop import TrainResult, train
from repackctl.train.shown import shown_run
from repackctl.train.trainer import HEADER

if TYPE_CHECKING:
    from repackctl.dit.task import DiTTask
    from repackctl.settings import Settings
    from repackctl.train.config import TrainConfig

# --------------------------------------------------------------------------- official sampling

# official sampling settings (stage2/configs/lightningdit_xl_repack_f16d32_dinov3.yaml)
OFFICIAL_SAMPLING = {
    "timestep_shift": 0.3,
    "cfg_interval_start": 0.11,
    "cfg_scale": 15.0,
    "cfg_channels": 3,
    "num_sampling_steps": 250,  # grid points: 249 Euler updates
    "sampling_method": "euler",
}
OFFICIAL_SOURCE = "official RePack-then-Refine sampling settings, in our conventions"


def official_sampling_defaults(sample_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Their sampling section (``OFFICIAL_SAMPLING`` updated by ``sample_cfg``) translated into
    our sample settings: shift 0.3 → ours 1/0.3, ``cfg_interval_start`` 0.11 → ``cfg_t_hi``
    0.89, CFG on channels 0–2 → ``cfg_channels`` 3, an N-point Euler grid → N − 1 steps."""
    from repackctl.transport.interpolant import (
        their_interval_start_to_our_t_hi,
        their_shift_to_ours,
    )

    s = dict(OFFICIAL_SAMPLING)
    for key in ("timestep_shift", "cfg_interval_start", "cfg_scale", "num_sampling_steps"):
        if sample_cfg and key in sample_cfg:
            s[key] = sample_cfg[key]
    if (sample_cfg or {}).get("sampling_method", "euler") != "euler":
        raise ConfigError(
            f"unsupported official sampler {sample_cfg['sampling_method']!r}",
            "only the released Euler sampling settings are supported",
        )
    return {
        "sampler": "euler",
        "steps": int(s["num_sampling_steps"]) - 1,  # their N-point grid = N − 1 updates
        "shift": their_shift_to_ours(float(s["timestep_shift"])),
        "cfg": float(s["cfg_scale"]),
        "cfg_t_lo": 0.0,
        "cfg_t_hi": their_interval_start_to_our_t_hi(float(s["cfg_interval_start"])),
        "cfg_channels": int(s["cfg_channels"]),
    }


# REPA's evaluation command (sihyun-yu/REPA README.md "Evaluation", generate.py flags)
REPA_SAMPLING = {
    "mode": "sde",
    "num_steps": 250,
    "cfg_scale": 1.8,
    "guidance_low": 0.0,
    "guidance_high": 0.7,
    "path_type": "linear",
}
REPA_SOURCE = "REPA sampling settings (sihyun-yu/REPA README.md, generate.py), in our conventions"


def repa_sampling_defaults() -> dict[str, Any]:
    """REPA's evaluation sampling (``REPA_SAMPLING``) as our sample settings.

    REPA's linear path already runs in our time (t = 1 noise → t = 0 data, ``samplers.py``
    ``linspace(1, 0.04, num_steps)``), so its guidance interval [guidance_low, guidance_high]
    is ours unchanged: CFG for t ≤ 0.7. Its ``euler_maruyama_sampler`` makes ``num_steps``
    calls: ``num_steps − 1`` Euler–Maruyama steps to t = 0.04 and a last mean step to 0, which
    is our ``sde`` sampler with ``steps = num_steps`` (t_last 0.04, last step ``mean``). It
    guides every latent channel and applies no timestep shift."""
    return _repa_style_sampling(REPA_SAMPLING, "sde")


def _repa_style_sampling(r: dict[str, Any], sampler: str) -> dict[str, Any]:
    """REPA's generation flags ``r`` as our sample settings: ``num_steps`` calls, no timestep
    shift, CFG ``cfg_scale`` where ``guidance_low ≤ t ≤ guidance_high`` (REPA's time is ours),
    on every latent channel."""
    return {
        "sampler": sampler,
        "steps": int(r["num_steps"]),
        "shift": 1.0,
        "cfg": float(r["cfg_scale"]),
        "cfg_t_lo": float(r["guidance_low"]),
        "cfg_t_hi": float(r["guidance_high"]),
        "cfg_channels": 0,
    }


#: REPA's text-to-image sampling (sihyun-yu/REPA ``generate_t2i.py`` argument defaults: --mode
#: ode, --num-steps 50, --no-heun, --cfg-scale 1.5, --guidance-low 0, --guidance-high 1)
REPA_T2I_SAMPLING = {
    "mode": "ode",
    "num_steps": 50,
    "heun": False,
    "cfg_scale": 1.5,
    "guidance_low": 0.0,
    "guidance_high": 1.0,
    "path_type": "linear",
}
REPA_T2I_SOURCE = (
    "REPA text-to-image sampling settings (sihyun-yu/REPA generate_t2i.py, samplers_t2i.py), "
    "in our conventions"
)


def repa_t2i_sampling_defaults() -> dict[str, Any]:
    """REPA's text-to-image sampling (``REPA_T2I_SAMPLING``) as our sample settings.

    ``samplers_t2i.euler_sampler`` steps over ``linspace(1, 0, num_steps + 1)`` (t = 1 noise, as
    ours: our ``euler`` with ``steps = num_steps`` and shift 1) and guides where
    ``guidance_low ≤ t ≤ guidance_high`` (our ``cfg_t_lo`` / ``cfg_t_hi``), every channel."""
    r = REPA_T2I_SAMPLING
    return _repa_style_sampling(r, "heun" if r["heun"] else "euler")


def write_sampling_json(
    run_dir: Path,
    sample_cfg: dict[str, Any] | None = None,
    source: str = OFFICIAL_SOURCE,
    preset: str = "paper",
) -> dict[str, Any]:
    """Write ``run_dir/sampling.json``: the sampling settings of ``preset`` (``paper``: the
    official RePack ones, ``sample_cfg`` being a released config's sampling section, if any;
    ``repa``: REPA's; ``t2i-repa``: REPA's text-to-image ones) as the run's defaults for
    ``repackctl sample``. The file sets no labels, for any preset: ``sample`` draws balanced
    labels (N/classes each) unless given ``--labels random``, which is how both official
    class-conditional recipes draw them (``torch.randint``). The file carries the sha256 of its
    content: a sampler never takes defaults from an edited or damaged one."""
    if preset == "repa":
        defaults, upstream = repa_sampling_defaults(), dict(REPA_SAMPLING)
    elif preset == "t2i-repa":
        defaults, upstream = repa_t2i_sampling_defaults(), dict(REPA_T2I_SAMPLING)
    else:
        defaults = official_sampling_defaults(sample_cfg)
        upstream = sample_cfg or OFFICIAL_SAMPLING
    doc = {"defaults": defaults, "source": source, "official": upstream}
    doc["sha256"] = json_sha256(doc)  # checked by ``sample.plan.read_sampling_defaults``
    write_json_atomic(Path(run_dir) / SAMPLING_JSON, doc)
    return defaults


# --------------------------------------------------------------------------- the run


@dataclass
class DiTTrainResult:
    """What ``train_dit`` did, for the CLI to render."""

    run_dir: Path
    result: TrainResult
    model_id: str
    num_params: int
    latents: str
    entry: str
    features: str | None
    num_samples: int
    latent_shape: tuple[int, int, int]
    in_memory: bool
    grid_note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Whether this call trained any step (a run already at its steps is only shown)."""
        return self.result.resumed_from != self.result.step

    @property
    def idle_note(self) -> str | None:
        """What to do when nothing was trained (the run is already at the steps asked for)."""
        if self.trained:
            return None
        step = self.result.step
        return (
            f"nothing to train: run {self.run_dir.name} is at step {step} (pass --steps N with "
            f"N > {step} to train on)"
        )

    @classmethod
    def of(cls, task: Any, result: TrainResult, **more: Any) -> Any:
        """What the trained ``task`` and its ``result`` say (``more``: a subclass's fields)."""
        return cls(
            run_dir=result.run_dir,
            result=result,
            # the built network's name: an id with --depth / --width / --heads gains their suffix
            model_id=task.model_config.get("name") or task.spec.model_id,
            num_params=task.num_params,
            latents=task.data.ref.pack_id,
            entry=task.data.ref.entry,
            features=task.data.features_id,
            num_samples=len(task.data),
            latent_shape=task.data.shape,
            in_memory=task.data.in_memory,
            grid_note=task._grid_note,
            **more,
        )


@released_after()
def resume_and_train(
    settings: Any,
    record: dict | None,
    progress: ProgressFactory,
    section: str,
    run_dir_of: Callable[[Any], Path],
    build: Callable[..., tuple[Any, Any]],
) -> tuple[Any, TrainResult]:
    """Resume from the run's stored settings, build the task, train it with ``log.txt``.

    A run without a checkpoint must train at least one step (refused before anything is read in
    bulk or written); a run whose checkpoint is at or past ``steps`` is shown as it is, with
    nothing trained and nothing written."""
    from repackctl.runtime import resolve_device

    # a device this machine lacks is an error before anything is read (the engine fell back to
    # the CPU: `--device cuda` trained there with only "cpu" in the banner)
    resolve_device(settings.device)
    settings, record, rec = resume_settings(run_dir_of(settings), settings, record, section)
    restore_interrupted_resaves(run_dir_of(settings))
    settings, record, kept = keep_started_values(
        run_dir_of(settings), settings, record, section, STARTED_WITHOUT
    )
    # shown; in log.txt by the engine once it accepted the resume (it may still refuse it: a
    # change of the sample order, of the precision), never before
    resumed = resume_lines(rec, kept)
    run_dir = run_dir_of(settings)
    steps = int(getattr(settings, section).steps)
    # the checkpoint the engine would resume from (the same verification, warnings left to it;
    # a run whose every checkpoint fails it is refused here, before anything is read in bulk)
    latest = checkpoint_to_resume(run_dir, warn=None)
    if latest is None:
        check_new_run(steps, run_dir, section, (record or {}).get("sources"))
    with flip_warning(latest is None):  # said once, when the run starts
        task, config = build(settings, sources=(record or {}).get("sources"))
    if latest is not None:
        check_repa_resumable(latest, task, section, (record or {}).get("sources") or {})
    if latest is not None and steps <= int(read_state(latest).get("step", 0)):
        log_lines(progress, section, resumed)  # not in log.txt: nothing in the run changes
        return task, shown_run(task, latest)
    if record is not None:
        config.extra["settings"] = record
        # the latents and entry a new run resolved, in its task settings too (as a resume has)
        if isinstance(config.extra.get("train"), dict):
            config.extra["train"] = with_resolved(config.extra["train"], record, section)
    values = getattr(settings, section)
    # given values that do not act by this run's last step: logged with its first lines
    resumed = [
        *resumed,
        *unreached_steps(values, section, (record or {}).get("sources") or {}, steps),
    ]
    progress = with_log_file(progress, Path(config.run_dir) / LOG_FILE)
    with official_sampling_file(Path(config.run_dir), getattr(values, "preset", None), section):
        return task, train(task, config, progress, resumed)


def check_repa_resumable(latest: Path, task: Any, section: str, sources: dict[str, str]) -> None:
    """Refuse a resume that turns REPA on or off (``repa_weight`` to or from 0, passed by the
    settings layer with ``--allow-change``) against the checkpoint it resumes from: switched
    off, the engine's load of the optimizer state (which covers the projector) failed with a
    traceback; switched on, it was refused as an incomplete checkpoint ("projector.safetensors
    is missing"). Nothing is written before this. ``--repa-stop-step`` switches the alignment
    off from a step on. Without ``--allow-change`` the settings layer refuses the change first,
    without offering it (``repa_weight`` in ``settings.resume.FIXED_ON_RESUME``)."""
    saved = read_state(latest).get("modules")
    repa_on = getattr(task, "repa_on", None)
    if not isinstance(saved, list) or repa_on is None or ("projector" in saved) == repa_on:
        return
    key = f"{section}.repa_weight"
    now = f"{key} {task.spec.repa_weight:g} (from {sources.get(key, 'default')})"
    if repa_on:
        raise CheckpointError(
            f"{latest.parent.parent} was trained without REPA: its checkpoint {latest.name} holds "
            f"no REPA projector, so {now} cannot resume from it (the projector would start "
            "untrained mid-run; --allow-change does not apply to it)",
            f"resume with --repa-weight 0, or start a new run with another --name and "
            f"--repa-weight {task.spec.repa_weight:g}",
        )
    raise CheckpointError(
        f"{latest.parent.parent} was trained with REPA: its checkpoint {latest.name} holds the "
        f"REPA projector and its optimizer state, so {now}, which builds no projector, cannot "
        "resume from it (--allow-change does not apply to it)",
        "resume with the run's --repa-weight and pass --repa-stop-step N --allow-change "
        "repa_stop_step to switch the alignment off from step N on, or start a new run with "
        "another --name",
    )


# settings that a run's stored record may lack (it started before they existed), with the value
# such a run trained with: TF32 matmuls were always on on CUDA, and the cosine term always
# floored |v̂| at 0.01·|v|
STARTED_WITHOUT: dict[str, Any] = {"tf32": True, "cos_norm_floor": 0.01}


# the presets whose runs get their method's sampling settings, with the source they name (a
# section other than dit prefixes its name: t2i's repa is REPA's text-to-image recipe)
PRESET_SAMPLING_SOURCES = {
    "paper": OFFICIAL_SOURCE,
    "repa": REPA_SOURCE,
    "t2i-repa": REPA_T2I_SOURCE,
}


@contextmanager
def official_sampling_file(
    run_dir: Path, preset: str | None, section: str = "dit"
) -> Iterator[None]:
    """The ``sampling.json`` of a ``--preset paper`` (official RePack) or ``--preset repa``
    (REPA) run of ``section`` (``train dit``; ``train t2i --preset repa``: REPA's text-to-image
    sampling), written before it trains (so a killed run has it too) when the run has none; a
    file already there is left as it is. Training that fails before the engine accepted it
    removes the file this call wrote: a new run's before its first checkpoint, a resume's
    before the engine took its checkpoint (:func:`_accepted`). A refused resume under another
    preset (``--preset repa --allow-change preset``, refused by the checkpoint) left REPA's file
    in the run, which ``sample`` then used without a word."""
    path = run_dir / SAMPLING_JSON
    wrote = new_dir = False
    key = preset if section == "dit" else f"{section}-{preset}"
    source = PRESET_SAMPLING_SOURCES.get(key or "")
    header = _header_stamp(run_dir)
    if source and int(os.environ.get("RANK", 0)) == 0:
        new_dir = not run_dir.exists()
        # the run's lock before the check: a second start of the same new run is refused here,
        # before it writes (it passed the check beside the first, then removed the first's file)
        lock_run(run_dir, create=True)
        if not path.exists():
            write_sampling_json(
                run_dir, source=f"{source} (train {section} --preset {preset})", preset=str(key)
            )
            wrote = True
    try:
        yield
    except BaseException:
        if wrote and not _accepted(run_dir, header):
            path.unlink(missing_ok=True)
            if new_dir and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
                (run_dir / LOCK_FILE).unlink(missing_ok=True)  # ours (held): nothing else there
                with suppress(OSError):  # another start may have made its lock file since
                    run_dir.rmdir()
        raise


def _header_stamp(run_dir: Path) -> tuple[int, int] | None:
    """The identity (inode, mtime) of the run's ``header.json``, which the engine writes (by a
    rename) once it accepted the run's checkpoint; None while there is none."""
    with suppress(OSError):
        stat = (run_dir / HEADER).stat()
        return stat.st_ino, stat.st_mtime_ns
    return None


def _accepted(run_dir: Path, header: tuple[int, int] | None) -> bool:
    """Whether the training that started when the run's header was ``header`` got as far as the
    engine accepting it: the run has a checkpoint and the engine wrote its header since (a
    refused resume, by the checkpoint's weights, data or sample order, writes none)."""
    if latest_checkpoint(run_dir, warn=None) is None:
        return False
    return _header_stamp(run_dir) not in (header, None)


def train_dit(
    settings: Settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> DiTTrainResult:
    """Train (or resume) a DiT on the packed latents the settings select.

    Resuming an existing run starts from the settings it was started with; see
    ``repackctl.settings.resume`` (changes are printed, breaking ones refused).
    """

    def build(
        resolved: Settings, sources: dict[str, str] | None = None
    ) -> tuple[DiTTask, TrainConfig]:
        task, config = build_task(resolved, sources)
        check_flip(task.data, "dit", sources)
        record_latents(config_record, "dit", task.data.ref)
        return task, config

    task, result = resume_and_train(settings, config_record, progress, "dit", dit_run_dir, build)
    return DiTTrainResult.of(task, result)


def record_latents(record: dict | None, section: str, ref: Any) -> None:
    """Record the latents (and entry) the run trains on when no layer named them
    (``settings.resume.record_resolved``): a resume then uses them whatever `pack encode` added
    since (it picked the newest latents and was refused as a change of latents)."""
    record_resolved(record, section, {"latents": ref.pack_id, "entry": ref.entry})


def run_dit_train(
    settings: Settings, progress: ProgressFactory = null_progress, config_record: dict | None = None
) -> Path:
    """Train (or resume) ``settings.dit``'s DiT; returns the run folder."""
    return train_dit(settings, progress, config_record).run_dir


# --------------------------------------------------------------------------- loading
