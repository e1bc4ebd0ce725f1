"""What to generate: the plan (N, labels, steps, CFG), per-index seeds and labels, time grids."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import CheckpointError, ConfigError
from repackctl.paths import SAMPLING_JSON, run_root_of
from repackctl.run_files import json_sha256
from repackctl.transport.samplers import SamplerSpec, sampler_times, stalled_steps, time_grid
from repackctl.transport.timesteps import shift_time


@dataclass
class GenerationPlan:
    """Resolved sampler and guidance settings (explicit setting > sampling.json > default)."""

    spec: SamplerSpec
    cfg: float
    t_lo: float
    t_hi: float
    legacy_channels: int  # 0 = all channels
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


SEED_MAX = 2**32 - 1  # the settings refuse other seeds too (repackctl.settings.Settings.seed)


def index_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index``, derived from (seed, index) by NumPy's SeedSequence.

    ``seed`` must lie in 0 … 2**32 − 1: it is used as one 32-bit word, never folded (a larger
    or negative seed would silently give another seed's images)."""
    if not 0 <= int(seed) <= SEED_MAX:
        raise ConfigError(
            f"seed {seed} is outside 0 … {SEED_MAX} (2**32 − 1): it would repeat the samples of "
            "another seed",
            f"pass --seed between 0 and {SEED_MAX}",
        )
    words = np.random.SeedSequence([int(seed), int(index), 0x5A3D1E]).generate_state(2)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def index_generators(seed: int, indices: np.ndarray | list[int]) -> list[torch.Generator]:
    """One CPU generator per sample index (noise is drawn on the CPU: device-independent)."""
    return [torch.Generator("cpu").manual_seed(index_seed(seed, int(i))) for i in indices]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> Tensor:
    """(B, d, h, w) standard normal, row b from ``generators[b]``."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])  # (B, d, h, w)


def make_labels(num: int, num_classes: int, scheme: str, seed: int) -> np.ndarray:
    """Labels of all N samples: ``balanced``, ``random`` or a comma list of class ids."""
    if num_classes < 1:
        raise ConfigError("the DiT has no classes", "sample a class-conditional run")
    if scheme == "balanced":
        # class c gets indices [N·c/K, N·(c+1)/K): N/K each (± 1), classes in order
        return (np.arange(num, dtype=np.int64) * num_classes) // num
    if scheme == "random":
        return np.random.default_rng([seed, 0x1AB]).integers(0, num_classes, num, dtype=np.int64)
    given = label_classes(scheme)
    bad = [c for c in given if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(
            f"class ids {bad} are outside 0..{num_classes - 1}", "pick classes the DiT knows"
        )
    return np.asarray([given[i % len(given)] for i in range(num)], dtype=np.int64)


def label_classes(scheme: str) -> list[int]:
    """The class ids of a ``--labels 3,7`` list (sample i gets class ``ids[i mod len]``)."""
    try:
        given = [int(c) for c in scheme.split(",") if c.strip()]
    except ValueError:
        given = []
    if not given:
        raise ConfigError(
            f"unknown label scheme {scheme!r}",
            "use --labels balanced, --labels random or class ids such as --labels 3,7",
        )
    return given


def canonical_labels(scheme: str) -> str:
    """One spelling per label scheme, as it is recorded and named: ``balanced``, ``random`` or
    the class ids joined by commas (``"3, 7"``, ``" 3,7,"`` and ``"03,7"`` all give ``"3,7"``:
    the same images must find the same samples folder and settings)."""
    word = scheme.strip().lower()
    if word in ("balanced", "random"):
        return word
    return ",".join(str(c) for c in label_classes(scheme))


def label_scheme_name(scheme: str) -> str:
    """The card's name of a label scheme: ``balanced``, ``uniform-random`` or ``classes:3,7``."""
    scheme = canonical_labels(scheme)
    if scheme in ("balanced", "random"):
        return "balanced" if scheme == "balanced" else "uniform-random"
    return f"classes:{scheme}"


def evaluation_times(spec: SamplerSpec) -> list[float]:
    """The times at which each sampler calls the velocity function (one entry per call)."""
    if spec.kind == "sde":
        grid = shift_time(
            torch.linspace(1.0, spec.t_last, spec.steps, dtype=torch.float64), spec.shift
        )
        return [float(t) for t in grid]
    times = [float(t) for t in time_grid(spec.steps, spec.shift)]
    if spec.kind == "euler":
        return times[:-1]
    calls = []
    for i in range(spec.steps):
        calls.append(times[i])
        if not (spec.heun_final_euler and i == spec.steps - 1):
            calls.append(times[i + 1])
    return calls


def network_evaluations(spec: SamplerSpec, plan: GenerationPlan) -> int:
    """Network forwards per sample: guided calls cost two (cond + uncond, or main + guide). At
    scale 1 neither CFG nor autoguidance runs its second model (``transport.guidance``)."""
    two = plan.guided
    return sum(2 if two and plan.t_lo <= t <= plan.t_hi else 1 for t in evaluation_times(spec))


def resolve_plan(
    cfg: Any, defaults: dict[str, Any], latent_channels: int | None = None
) -> GenerationPlan:
    """Explicit setting > the run's sampling.json > built-in default, with each value's source.

    Guidance that would change nothing is refused (``check_guidance_acts``); ``latent_channels``
    (the DiT's latent channels, when known) bounds the legacy ``cfg_channels``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, builtin in DEFAULTS.items():
        given = getattr(cfg, key)
        if given is not None:
            values[key], sources[key] = given, "setting"
        elif key in defaults:
            values[key], sources[key] = defaults[key], SAMPLING_JSON
        else:
            values[key], sources[key] = builtin, "default"
    spec = SamplerSpec(
        kind=values["sampler"], steps=int(values["steps"]), shift=float(values["shift"])
    )
    if not 0.0 <= values["cfg_t_lo"] <= values["cfg_t_hi"] <= 1.0:
        raise ConfigError(
            f"guidance interval [{values['cfg_t_lo']}, {values['cfg_t_hi']}] is not ordered",
            "our time: 0 data, 1 noise; --cfg-t-hi 0.89 is the official interval start 0.11",
        )
    if float(values["cfg"]) == 1.0:
        _without_guidance(values, sources)
    plan = GenerationPlan(
        spec=spec,
        cfg=float(values["cfg"]),
        t_lo=float(values["cfg_t_lo"]),
        t_hi=float(values["cfg_t_hi"]),
        legacy_channels=int(values["cfg_channels"]),
        sources=sources,
    )
    check_time_grid(plan)
    check_guidance_acts(plan, latent_channels)
    return plan


def check_time_grid(plan: GenerationPlan) -> None:
    """Refuse a shift (with a step count) whose time grid stalls in float32, the dtype of the
    sampler's state and times (``stalled_steps``): ``--shift 1e30`` rounds every time to 1.0,
    so a "2-step" folder and card would hold one Euler jump from noise to data."""
    spec = plan.spec
    times = sampler_times(spec)  # (steps+1,) float64
    stalled = stalled_steps(times)
    if not stalled:
        return
    grid = ", ".join(f"{float(t):.8g}" for t in times.to(torch.float32)[: min(len(times), 6)])
    more = ", …" if len(times) > 6 else ""
    fix = "pass fewer --steps" if spec.shift == 1.0 else "pass a --shift nearer 1 (1 = no shift)"
    raise ConfigError(
        f"--shift {spec.shift:g}{_source(plan, 'shift')} with --steps {spec.steps}"
        f"{_source(plan, 'steps')} gives a degenerate {spec.kind} time grid: in float32 (the "
        f"sampler's precision) it is {grid}{more}, so {len(stalled)} of its {spec.steps} steps "
        f"do not move (repeated or non-finite times, the first at step {stalled[0] + 1}), and "
        "the folder and card would name steps never taken",
        fix + (f", or override the run's {SAMPLING_JSON}" if _came_from(plan, "shift") else ""),
    )


def _came_from(plan: GenerationPlan, key: str) -> bool:
    return plan.sources.get(key) == SAMPLING_JSON


def _source(plan: GenerationPlan, key: str) -> str:
    """`` (from sampling.json)``, `` (given)`` or `` (the default)``: where ``key`` came from."""
    source = plan.sources.get(key, "default")
    if source == SAMPLING_JSON:
        return f" (from the run's {SAMPLING_JSON})"
    return " (the default)" if source == "default" else " (given)"


def check_guidance_acts(plan: GenerationPlan, latent_channels: int | None = None) -> None:
    """Refuse guidance (scale ≠ 1) that changes nothing, whose folder and card would still name
    it: an interval holding none of the sampler's evaluation times, or legacy channels that
    cover every latent channel (the same images as guiding all channels)."""
    if not plan.guided:
        return
    times = evaluation_times(plan.spec)
    if not any(plan.t_lo <= t <= plan.t_hi for t in times):
        raise ConfigError(
            f"guidance interval [{plan.t_lo:g}, {plan.t_hi:g}]{_from(plan, 'cfg_t_lo', 'cfg_t_hi')}"
            f" holds none of the {plan.spec.kind} sampler's evaluation times "
            f"({_listed(times)}): --cfg {plan.cfg:g} would never guide, yet the folder and card "
            "would say it did",
            "widen --cfg-t-lo/--cfg-t-hi to hold a step time, or pass more --steps",
        )
    k = plan.legacy_channels
    if latent_channels is not None and k >= latent_channels:
        raise ConfigError(
            f"--cfg-channels {k}{_from(plan, 'cfg_channels')} covers all {latent_channels} latent "
            f"channels: the same images as plain --cfg {plan.cfg:g}, under a folder named -ch{k}",
            f"drop --cfg-channels (or pass --cfg-channels 0) to guide all channels, or pass "
            f"fewer than {latent_channels}",
        )


def _from(plan: GenerationPlan, *keys: str) -> str:
    """`` (from sampling.json)`` when a value of ``keys`` came from the run's defaults, else ''."""
    return (
        f" (from {SAMPLING_JSON})"
        if any(plan.sources.get(k) == SAMPLING_JSON for k in keys)
        else ""
    )


def _listed(times: list[float], most: int = 8) -> str:
    """The distinct times, in calling order, as ``1, 0.5`` (elided in the middle when long)."""
    distinct = [f"{t:.4g}" for t in dict.fromkeys(times)]
    if len(distinct) > most:
        distinct = [*distinct[:3], f"… {len(distinct) - 6} more …", *distinct[-3:]]
    return ", ".join(distinct)


# the settings that only shape guidance: at scale 1 they change nothing
GUIDANCE_ONLY = ("cfg_t_lo", "cfg_t_hi", "cfg_channels")


def _without_guidance(values: dict[str, Any], sources: dict[str, str]) -> None:
    """At scale 1 every step is the plain conditional model, whatever the guidance interval and
    channels: they take their defaults, so the same images get one folder name, fingerprint and
    card; their sources say they do not apply (and which value was ignored)."""
    for key in GUIDANCE_ONLY:
        note = "not applicable at cfg 1"
        if values[key] != DEFAULTS[key]:
            note += f" ({sources[key]} {values[key]:g} ignored)"
        values[key], sources[key] = DEFAULTS[key], note


def plan_from_protocol(protocol: dict[str, Any]) -> GenerationPlan:
    """The plan a samples folder was made with (its protocol.json), to regenerate latents."""
    spec = SamplerSpec(**protocol["sampler_spec"])
    lo, hi = protocol["cfg_interval"]
    return GenerationPlan(
        spec,
        float(protocol["cfg_scale"]),
        float(lo),
        float(hi),
        int(protocol["cfg_legacy_channels"]),
    )


# built-in defaults of the sampler settings left at None (see sections/sample.py)
DEFAULTS: dict[str, Any] = {
    "sampler": "euler",
    "steps": 50,
    "shift": 1.0,
    "cfg": 1.0,
    "cfg_t_lo": 0.0,
    "cfg_t_hi": 1.0,
    "cfg_channels": 0,
}


# the DiT checkpoint flag of models trained in the official convention (t = 1 data, v = x − ε)
OFFICIAL_VELOCITY = "official"


def _check_digest(path: Path, data: dict[str, Any]) -> None:
    """Refuse a ``sampling.json`` whose content is not what was written (its ``sha256``): one
    flipped digit changed the guidance scale of every sample silently. Files written before the
    checksum (no ``sha256``) are read as they are."""
    if "sha256" in data and data["sha256"] != json_sha256(data):
        raise CheckpointError(
            f"{path} does not match the sha256 it was written with (edited or damaged): its "
            "sampling defaults cannot be trusted",
            "restore the file (or import the run again into a new --out), or delete it and give "
            "the sampling settings as flags (--sampler, --steps, --shift, --cfg, --cfg-t-lo, "
            "--cfg-t-hi, --cfg-channels)",
        )


def sampling_file(checkpoint: Path) -> Path | None:
    """The ``sampling.json`` that :func:`read_sampling_defaults` reads for ``checkpoint`` (the
    checkpoint's own, else its run's), or None when there is none."""
    for folder in (checkpoint, run_root_of(checkpoint)):
        if (folder / SAMPLING_JSON).is_file():
            return folder / SAMPLING_JSON
    return None


def sampling_source(path: Path | None) -> str:
    """The source that `sample` names for a value the run's ``sampling.json`` at ``path`` gave
    (``--show-config``, the summary)."""
    return f"the run's {SAMPLING_JSON} ({path})"


def shown_sample_settings(resolved: Any) -> Any:
    """``resolved`` (``ResolvedSettings`` of `sample`) with the sampler settings it left unset
    filled as `sample` fills them (:func:`resolve_plan`): from the run's ``sampling.json``,
    named as their source, else the built-in default. `sample --show-config` printed them as
    ``None # default``, wrong in value and source, so a run's recorded sampler went unseen.
    Where the run cannot be found the settings are shown as given (`sample` itself names the
    problem)."""
    from repackctl.errors import RepackError
    from repackctl.paths import resolve_checkpoint_arg
    from repackctl.runs import newest_run
    from repackctl.settings import ResolvedSettings
    from repackctl.train.checkpoint import checkpoint_for_loading

    settings, sources = resolved.settings, dict(resolved.sources)
    cfg = settings.sample
    stage = "t2i" if cfg.prompt or cfg.prompts else "dit"
    defaults: dict[str, Any] = {}
    path = None
    try:
        run = cfg.run or newest_run(Path(settings.runs).expanduser().resolve(), stage)
        folder = resolve_checkpoint_arg(settings.runs, run, cfg.checkpoint) if run else None
        ckpt = checkpoint_for_loading(folder) if folder is not None else None
        if ckpt is not None:
            defaults, path = read_sampling_defaults(ckpt), sampling_file(ckpt)
    except RepackError:
        pass  # no such run, no checkpoint: `sample` refuses it by name
    update: dict[str, Any] = {}
    for key, builtin in DEFAULTS.items():
        if getattr(cfg, key) is not None:
            continue
        update[key] = defaults.get(key, builtin)
        sources[f"sample.{key}"] = sampling_source(path) if key in defaults else "default"
    shown = settings.model_copy(update={"sample": cfg.model_copy(update=update)})
    return ResolvedSettings(shown, sources)


def sampling_rows(protocol: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary row of `sample` that names the settings the run's ``sampling.json`` gave
    (the card's ``setting_sources``) and that file; none when it gave none. Without it the
    summary showed a run's recorded sampler and guidance as if they were the defaults."""
    sources = protocol.get("setting_sources")
    keys = (
        [k for k, v in sources.items() if v == SAMPLING_JSON] if isinstance(sources, dict) else []
    )
    if not keys:
        return []
    checkpoint = protocol.get("checkpoint")
    path = sampling_file(Path(checkpoint)) if isinstance(checkpoint, str) else None
    where = sampling_source(path) if path else f"the run's {SAMPLING_JSON} (no longer there)"
    return [("run defaults", f"{', '.join(keys)} from {where}")]


def read_sampling_defaults(checkpoint: Path) -> dict[str, Any]:
    """The run's ``sampling.json`` (written by `import official` and `train dit --preset
    paper`), or {}; refused when it does not verify against its recorded sha256."""
    path = sampling_file(checkpoint)  # the checkpoint's own, else its run's
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}", "fix or delete it") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object", "fix or delete it")
    _check_digest(path, data)
    if not isinstance(data.get("defaults", {}), dict):
        raise CheckpointError(
            f"{path}: 'defaults' is not a JSON object of sampling settings",
            "fix or delete it (and give the sampling settings as flags)",
        )
    unknown = sorted(set(data.get("defaults", {})) - set(DEFAULTS))
    if unknown:
        raise CheckpointError(
            f"{path} names unknown sampling settings {unknown}",
            f"valid keys: {', '.join(DEFAULTS)}",
        )
    _check_values(path, data.get("defaults", {}))
    return dict(data.get("defaults", {}))


def _check_values(path: Path, defaults: dict[str, Any]) -> None:
    """Refuse a default the flag itself would refuse (a NaN or negative cfg, 0 steps): the file
    stands in for the flags, so its values get the flags' checks."""
    from pydantic import ValidationError

    from repackctl.settings.sample import SampleSettings

    try:
        SampleSettings.model_validate(defaults)
    except ValidationError as e:
        bad = e.errors()[0]
        key = ".".join(str(k) for k in bad["loc"])
        raise CheckpointError(
            f"{path}: the default {key} = {defaults.get(key)!r} is refused ({bad['msg']})",
            f"fix the file, or delete it and give the sampling settings as flags "
            f"(--{key.replace('_', '-')} and the others)",
        ) from None


def check_null_condition_trained(
    plan: GenerationPlan, extra: dict[str, Any], checkpoint: Path, key: str, null: str
) -> None:
    """Refuse guidance against the null condition of a model that never trained it.

    Classifier-free guidance (Ho & Salimans 2022) moves each sample away from the model's
    prediction for the null class / empty caption, which it learns only from the training
    examples whose condition was dropped (``key``: ``class_dropout`` / ``caption_dropout``). At
    0 the null embedding keeps its initial value, so a guided sample is steered by an input the
    model never saw, silently. A run that records no dropout (older versions) is sampled as
    before; autoguidance (``--guide``) guides against another model and is not checked here."""
    dropout = (extra.get("model_config") or {}).get(key)
    if not plan.guided or dropout is None or float(dropout) > 0:
        return
    raise ConfigError(
        f"--cfg {plan.cfg:g} guides against the {null}, which {checkpoint} never trained "
        f"({key} 0: no training example had its condition dropped)",
        f"pass --cfg 1 (no guidance), or sample a run trained with a {key.replace('_', '-')} "
        "above 0 (the default is 0.1)",
    )
