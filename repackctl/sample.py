"""`repackctl sample`: DiT checkpoint → latents → pack decoder → (refiner) → PNGs, ADM npz, card.

The generation path of RePack then Refine (guanfangdong/RePack-then-Refine
``stage2/inference_batch.py`` then ``stage3/refine_batch.py``), rebuilt around the things its
users could not reproduce (``reference/methods.md``):

- **Per-index seeds.** Sample ``i`` draws its initial noise and every SDE noise from its own
  ``torch.Generator`` seeded from ``(seed, i)`` (``index_seed``), so an image does not depend on
  the batch size or on the number of processes (the official code drew one batch of noise per
  process and step).
- **Labels** are class-balanced by default (N/classes per class, in class order), or seeded
  random, or given classes; the official sampler drew them uniformly at random.
- **Latent stats come from the DiT checkpoint** (``extra["latent_stats"]``): sampling never reads
  the cache (the official sampler recomputed them from the training latents). The de-normalised,
  *raw* packed latent is what the pack decoder and the refiner see, and what ``latents.npy``
  stores for ``refine apply``.
- **Resumable, several processes.** Process r of W owns the contiguous index range
  ``[N·r/W, N·(r+1)/W)``; ``000123.png`` is written atomically after its latent and is the
  "done" marker, so a killed run redoes only indices without a PNG. ``samples.npz`` (ADM layout),
  ``latents.npy`` and ``grid.png`` are assembled from the per-index files at the end.
- **Imported official DiTs** (``repackctl import official``) run in the opposite time
  convention with the opposite velocity sign; their checkpoint says so
  (``extra["velocity_convention"] == "official"``) and ``model_velocity`` wraps them:
  ``v_ours(x, t) = −v_theirs(x, 1 − t)``. Their sampling settings arrive as defaults through the
  run's ``sampling.json``.

Output (DESIGN.md §7): ``samples/<run>--<ckpt>--<sampler>-<steps>--cfg<s>--seed<k>/`` with
``000000.png …``, ``samples.npz``, ``latents.npy``, ``grid.png`` and ``protocol.json`` (the
generation half of ``metrics.protocol.ProtocolCard``; ``evaluate`` adds the scoring half).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.errors import CheckpointError, ConfigError, DataError
from repackctl.extract import DistInfo, resolve_device
from repackctl.paths import local_path, run_dir
from repackctl.progress import ProgressFactory, null_progress
from repackctl.settings import Settings
from repackctl.transport.guidance import AutoGuidance, ClassifierFreeGuidance
from repackctl.transport.samplers import SamplerSpec, VelocityFn, sample, time_grid
from repackctl.transport.timesteps import shift_time

SAMPLING_JSON = "sampling.json"
SETTINGS_JSON = ".sample-settings.json"
PROTOCOL_JSON = "protocol.json"
LATENTS_DIR = "latents"
LATENTS_FILE = "latents.npy"
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


@dataclass
class SampleResult:
    """What a sampling call did, for the CLI to render."""

    out_dir: Path
    num: int
    written: int
    already_done: int
    nfe: int
    image_shape: tuple[int, ...]
    seconds: float
    protocol: dict[str, Any]
    refined: bool = False

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Seeds and labels


def index_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index``, derived from (seed, index) by NumPy's SeedSequence."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x5A3D1E]).generate_state(2)
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
    try:
        given = [int(c) for c in scheme.split(",") if c.strip()]
    except ValueError:
        given = []
    if not given:
        raise ConfigError(
            f"unknown label scheme {scheme!r}",
            "use --labels balanced, --labels random or class ids such as --labels 3,7",
        )
    bad = [c for c in given if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(
            f"class ids {bad} are outside 0..{num_classes - 1}", "pick classes the DiT knows"
        )
    return np.asarray([given[i % len(given)] for i in range(num)], dtype=np.int64)


def label_scheme_name(scheme: str) -> str:
    if scheme in ("balanced", "random"):
        return "balanced" if scheme == "balanced" else "uniform-random"
    return f"classes:{scheme}"


# --------------------------------------------------------------------------------------------
# Model → velocity, guidance, NFE


def model_velocity(model: torch.nn.Module, extra: dict[str, Any], autocast: bool) -> VelocityFn:
    """The DiT as a ``VelocityFn`` in our convention (wrapping official-convention models)."""
    official = extra.get("velocity_convention") == OFFICIAL_VELOCITY
    device_type = next(model.parameters()).device.type

    def f(x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            if official:
                # theirs: τ = 1 − t (τ = 1 data) and v_theirs = x − ε = −v_ours
                return -model(x, 1.0 - t, y).float()  # (B, d, h, w)
            return model(x, t, y).float()  # (B, d, h, w)

    return f


def guided_velocity(
    main: VelocityFn, plan: GenerationPlan, null_label: int, guide: VelocityFn | None
) -> VelocityFn:
    """CFG (or autoguidance with ``guide``) per ``plan``; the plain model at scale 1."""
    if guide is not None:
        return AutoGuidance(main, guide, plan.cfg, plan.t_lo, plan.t_hi)
    if not plan.guided:
        return main
    return ClassifierFreeGuidance(
        main, plan.cfg, null_label, plan.t_lo, plan.t_hi, plan.legacy_channels or None
    )


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


def network_evaluations(spec: SamplerSpec, plan: GenerationPlan, autoguide: bool) -> int:
    """Network forwards per sample: guided calls cost two (cond + uncond, or main + guide)."""
    two = plan.guided or autoguide
    return sum(2 if two and plan.t_lo <= t <= plan.t_hi else 1 for t in evaluation_times(spec))


def resolve_plan(cfg: Any, defaults: dict[str, Any]) -> GenerationPlan:
    """Explicit setting > the run's sampling.json > built-in default, with each value's source."""
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
    return GenerationPlan(
        spec=spec,
        cfg=float(values["cfg"]),
        t_lo=float(values["cfg_t_lo"]),
        t_hi=float(values["cfg_t_hi"]),
        legacy_channels=int(values["cfg_channels"]),
        sources=sources,
    )


def generate_raw_latents(
    velocity: VelocityFn,
    plan: GenerationPlan,
    extra: dict[str, Any],
    labels: np.ndarray,
    seed: int,
    indices: list[int],
    device: torch.device,
) -> Tensor:
    """Raw packed latents (B, d, h, w) of samples ``indices``, each from its own generator."""
    shape = tuple(int(s) for s in extra["latent_shape"])
    gens = index_generators(seed, indices)
    noise = initial_noise(gens, shape).to(device)  # (B, d, h, w)
    y = torch.from_numpy(labels[indices]).to(device)  # (B,)
    out = sample(plan.spec, velocity, noise, y, generator=gens)
    return denormalise(out.x.float(), extra["latent_stats"])  # (B, d, h, w)


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


# --------------------------------------------------------------------------------------------
# Runs and checkpoints


def resolve_checkpoint_arg(runs: str, run: str, checkpoint: str | None = None) -> Path:
    """A run name (under ``runs``), run folder or checkpoint folder → the folder to load."""
    path = Path(run).expanduser()
    base = path if path.exists() else run_dir(runs, run)
    if not base.exists():
        raise CheckpointError(
            f"no run {run!r} (looked in {base})", "train one first, or check --runs / the name"
        )
    if checkpoint is None:
        return base.resolve()
    ck = Path(checkpoint).expanduser()
    if ck.is_dir():
        return ck.resolve()
    folder = base / "checkpoints" / checkpoint
    if not folder.is_dir():
        have = (
            sorted(p.name for p in (base / "checkpoints").glob("step-*")) if base.is_dir() else []
        )
        raise CheckpointError(
            f"run {run!r} has no checkpoint {checkpoint!r} (have: {', '.join(have) or 'none'})",
            "pass --checkpoint step-NNNNNNN, or leave it out for the latest",
        )
    return folder.resolve()


def run_root_of(checkpoint: Path) -> Path:
    """``runs/<name>/checkpoints/step-…`` → ``runs/<name>``."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def read_sampling_defaults(checkpoint: Path) -> dict[str, Any]:
    """The run's ``sampling.json`` (written by `import official`), or {}."""
    for folder in (checkpoint, run_root_of(checkpoint)):
        path = folder / SAMPLING_JSON
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                raise CheckpointError(f"{path} is not valid JSON: {e}", "fix or delete it") from e
            unknown = sorted(set(data.get("defaults", {})) - set(DEFAULTS))
            if unknown:
                raise CheckpointError(
                    f"{path} names unknown sampling settings {unknown}",
                    f"valid keys: {', '.join(DEFAULTS)}",
                )
            return dict(data.get("defaults", {}))
    return {}


def load_dit_for_sampling(runs: str, run: str, checkpoint: str | None, which: str):
    """``repackctl.train.dit.load_dit`` on the resolved folder, with the stage checked."""
    from repackctl.train.dit import load_dit

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


def load_decoder(runs: str, extra: dict[str, Any]):
    """The pack model the DiT was trained on (from the checkpoint recorded in its extra)."""
    from repackctl.pack.io import load_pack

    pack = extra["pack"]
    where = Path(pack.get("checkpoint") or "")
    if not where.is_dir():  # the runs folder moved: look the run up under the current root
        where = resolve_checkpoint_arg(
            runs, pack["run"], Path(pack.get("checkpoint", "")).name or None
        )
    handle = load_pack(where)
    if pack.get("pack_id") and handle.pack_id != pack["pack_id"]:
        raise CheckpointError(
            f"pack model {handle.pack_id} is not the one the DiT was trained on ({pack['pack_id']})",
            "restore the pack run the DiT was trained with",
        )
    return handle


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


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [−1, 1] → uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # (B, 3, H, W)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def from_uint8(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, H, W, 3) → (B, 3, H, W) in [−1, 1] (what the refiner is trained on)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (B, H, W, 3)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)


# --------------------------------------------------------------------------------------------
# Files of a samples folder


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write one PNG through a temporary name: an existing PNG is always complete."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def iter_pngs(folder: Path, num: int, batch: int = 256) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches of ``000000.png …`` in index order."""
    for start in range(0, num, batch):
        idx = range(start, min(start + batch, num))
        yield np.stack([read_png(png_path(folder, i)) for i in idx])


def missing_indices(folder: Path, indices: range) -> list[int]:
    return [i for i in indices if not png_path(folder, i).is_file()]


def owned_range(num: int, rank: int, world: int) -> range:
    """Contiguous share ``[N·r/W, N·(r+1)/W)`` of process r."""
    return range(num * rank // world, num * (rank + 1) // world)


def claim_folder(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Record the settings that fix the images; a folder made with other settings is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_JSON
    if path.is_file():
        old = json.loads(path.read_text())
        if old != fingerprint:
            diff = sorted(
                k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)
            )
            raise ConfigError(
                f"{folder} holds samples made with other settings ({', '.join(diff)})",
                "pass --out to write elsewhere, or delete the folder",
            )
        return
    write_json_atomic(path, fingerprint)


def assemble(
    folder: Path, labels: np.ndarray, grid: int, latent_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    """samples.npz (ADM), latents.npy and grid.png from the per-index files; returns H, W, 3."""
    from repackctl.metrics.adm import write_samples_npz
    from repackctl.metrics.recon import save_grid

    num = len(labels)
    write_samples_npz(folder / "samples.npz", iter_pngs(folder, num), labels, num=num)
    lat_dir = folder / LATENTS_DIR
    if latent_shape is not None and lat_dir.is_dir():
        complete = all((lat_dir / f"{i:06d}.npy").is_file() for i in range(num))
        if not complete and (folder / LATENTS_FILE).is_file():
            shutil.rmtree(lat_dir)  # a finished folder reopened: latents.npy is already there
        else:
            out = np.lib.format.open_memmap(
                folder / f".{LATENTS_FILE}.tmp",
                mode="w+",
                dtype=np.float32,
                shape=(num, *latent_shape),
            )
            for i in range(num):
                out[i] = np.load(lat_dir / f"{i:06d}.npy", allow_pickle=False)
            out.flush()
            del out
            os.replace(folder / f".{LATENTS_FILE}.tmp", folder / LATENTS_FILE)
            shutil.rmtree(lat_dir)
    first = read_png(png_path(folder, 0))
    if grid > 0:
        images = next(iter_pngs(folder, min(grid, num), batch=grid))
        cols = max(1, math.ceil(math.sqrt(len(images))))
        save_grid([images[i : i + cols] for i in range(0, len(images), cols)], folder / "grid.png")
    return tuple(first.shape)


def sample_folder_name(
    run: str, ckpt: str, plan: GenerationPlan, seed: int, weights: str, refiner: str | None
) -> str:
    """``<run>--<ckpt>--<sampler>-<steps>--cfg<s>--seed<k>`` (+ ``-raw`` / ``--refine-<name>``)."""
    name = f"{run}--{ckpt}{'' if weights == 'ema' else '-raw'}--{plan.spec.kind}-{plan.spec.steps}"
    name += f"--cfg{plan.cfg:g}--seed{seed}"
    if refiner:
        name += f"--refine-{Path(refiner).name}"
    return name


def generation_card(
    *,
    plan: GenerationPlan,
    nfe: int,
    label_scheme: str,
    seed: int,
    precision: str,
    checkpoint: Path,
    checkpoint_sha256: str,
    num: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The generation fields of ``metrics.protocol.ProtocolCard`` plus what produced them."""
    from repackctl.metrics.protocol import git_revision, package_versions

    return {
        "sampler": {"euler": "euler-ode", "heun": "heun-ode", "sde": "euler-maruyama-sde"}[
            plan.spec.kind
        ],
        "steps": plan.spec.steps,
        "nfe": nfe,
        "cfg_scale": plan.cfg,
        "cfg_interval": [plan.t_lo, plan.t_hi],
        "cfg_legacy_channels": plan.legacy_channels,
        "shift": plan.spec.shift,
        "label_scheme": label_scheme,
        "seed": seed,
        "precision": precision,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "num_samples": num,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "sampler_spec": plan.spec.to_dict(),
        "setting_sources": plan.sources,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# The command


def run_sample(
    settings: Settings, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
) -> SampleResult:
    """Generate (or finish generating) ``settings.sample.num`` samples of a DiT run."""
    cfg = settings.sample
    dist = dist or DistInfo.from_env()
    if not cfg.run:
        raise ConfigError(
            "no DiT run given", "pass --run NAME (a run made by `repackctl train dit`)"
        )
    device = resolve_device(settings.device, dist.local_rank)
    autocast = settings.precision != "fp32" and device.type == "cuda"

    dit = load_dit_for_sampling(settings.runs, cfg.run, cfg.checkpoint, cfg.weights)
    extra = dit.extra
    plan = resolve_plan(cfg, read_sampling_defaults(Path(dit.checkpoint)))
    if plan.legacy_channels and cfg.guide:
        raise ConfigError("legacy CFG channels do not apply to autoguidance", "drop --cfg-channels")
    model = dit.model.to(device).eval()
    main_fn = model_velocity(model, extra, autocast)
    guide_fn = None
    guide_info = None
    if cfg.guide:
        guide = load_dit_for_sampling(settings.runs, cfg.guide, cfg.guide_checkpoint, cfg.weights)
        if list(guide.extra["latent_shape"]) != list(extra["latent_shape"]) or guide.extra[
            "pack"
        ].get("pack_id") != extra["pack"].get("pack_id"):
            raise ConfigError(
                "the guide model was trained on other latents than the main model",
                "autoguidance needs a weaker DiT of the same pack model and latent shape",
            )
        guide_fn = model_velocity(guide.model.to(device).eval(), guide.extra, autocast)
        guide_info = {"checkpoint": str(guide.checkpoint), "sha256": guide.sha256}
    velocity = guided_velocity(main_fn, plan, int(extra["num_classes"]), guide_fn)
    nfe = network_evaluations(plan.spec, plan, guide_fn is not None)

    pack = load_decoder(settings.runs, extra)
    decoder = pack.model.to(device).eval()
    refiner = None
    if cfg.refiner:
        from repackctl.refine.apply import load_refiner

        refiner = load_refiner(settings.runs, cfg.refiner, pack.pack_id)
        refiner.model.to(device).eval()

    ckpt = Path(dit.checkpoint)
    run_name = run_root_of(ckpt).name
    latent_shape = tuple(int(s) for s in extra["latent_shape"])
    labels = make_labels(cfg.num, int(extra["num_classes"]), cfg.labels, settings.seed)
    folder = (
        Path(cfg.out).expanduser().resolve()
        if cfg.out
        else local_path(settings.samples)
        / sample_folder_name(run_name, ckpt.name, plan, settings.seed, cfg.weights, cfg.refiner)
    )
    fingerprint = {
        "checkpoint_sha256": dit.sha256,
        "weights": cfg.weights,
        "num": cfg.num,
        "labels": cfg.labels,
        "seed": settings.seed,
        "sampler": plan.spec.to_dict(),
        "cfg": [plan.cfg, plan.t_lo, plan.t_hi, plan.legacy_channels],
        "guide": guide_info,
        "refiner": None if refiner is None else refiner.sha256,
        "precision": settings.precision,
    }
    claim_folder(folder, fingerprint)

    mine = owned_range(cfg.num, dist.rank, dist.world)
    todo = missing_indices(folder, mine)
    if todo:
        (folder / LATENTS_DIR).mkdir(exist_ok=True)
    already = len(mine) - len(todo)
    t0 = time.perf_counter()
    written = 0
    with progress(f"sample {run_name}", total=len(todo), unit="img") as bar:
        if already:
            bar.log(f"resuming: {already} samples of this process were already written")
        for start in range(0, len(todo), cfg.batch_size):
            idx = todo[start : start + cfg.batch_size]
            with torch.no_grad():
                raw = generate_raw_latents(
                    velocity, plan, extra, labels, settings.seed, idx, device
                )  # (B, d, h, w)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    images = to_uint8(decoder.decode(raw))  # (B, H, W, 3)
                if refiner is not None:
                    images = refiner.refine(images, raw)  # (B, H, W, 3)
            raw_np = raw.cpu().numpy().astype(np.float32)
            for j, i in enumerate(idx):
                # the latent first: a PNG (the done marker) implies its latent is on disk
                write_npy_atomic(folder / LATENTS_DIR / f"{i:06d}.npy", raw_np[j])
                write_png_atomic(png_path(folder, i), images[j])
            written += len(idx)
            bar.advance(len(idx))
    seconds = time.perf_counter() - t0

    dist.barrier()
    protocol = generation_card(
        plan=plan,
        nfe=nfe,
        label_scheme=label_scheme_name(cfg.labels),
        seed=settings.seed,
        precision=settings.precision,
        checkpoint=ckpt,
        checkpoint_sha256=dit.sha256,
        num=cfg.num,
        extra={
            "weights": cfg.weights,
            "dit_run": run_name,
            "pack": {"checkpoint": str(pack.checkpoint), "pack_id": pack.pack_id},
            "latent_shape": list(latent_shape),
            "latent_convention": "raw",
            "velocity_convention": extra.get("velocity_convention", "ours"),
            "guide": guide_info,
            "refiner": None
            if refiner is None
            else {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256},
            "labels": labels.tolist(),
        },
    )
    image_shape: tuple[int, ...] = ()
    if dist.rank == 0:
        lost = missing_indices(folder, range(cfg.num))
        if lost:
            raise DataError(
                f"{len(lost)} samples are missing after sampling (e.g. {lost[:3]})",
                "run the same command again to finish them",
            )
        image_shape = assemble(folder, labels, cfg.grid, latent_shape)
        write_json_atomic(folder / PROTOCOL_JSON, protocol)
    dist.barrier()
    return SampleResult(
        out_dir=folder,
        num=cfg.num,
        written=written,
        already_done=already,
        nfe=nfe,
        image_shape=image_shape,
        seconds=seconds,
        protocol=protocol,
        refined=refiner is not None,
    )
