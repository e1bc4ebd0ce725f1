"""`repackctl sample` for text-to-image runs: prompts → MMDiT latents → pack decoder → PNGs.

The same samplers, timestep shift, guidance interval, per-index seeds, resumable folder and ADM
``samples.npz`` as class-conditional sampling (``repackctl.sample.run``); what differs:

- **Prompts** instead of labels: ``--prompt`` (repeatable) and/or ``--prompts FILE`` (one per
  line); sample i gets prompt ``i mod P``. With neither, the evaluation prompts are the first
  caption of each image of the val entry (same dataset and resolution), or of the training entry
  when there is no val entry, read from the cache (``text/<id>/captions``).
- Prompts are encoded once by the run's own text encoder (checked against the weights the
  training captions were encoded with); the model never sees a caption it could not have.
- Guidance: classifier-free guidance against the model's null caption, conditional and null rows
  in ONE batched forward of 2B (``MMDiT.forward_with_cfg``), active for t_lo ≤ t ≤ t_hi.
- ``prompts.txt`` (one line per sample index) and the prompts in ``protocol.json``; ``arr_1`` of
  ``samples.npz`` holds each sample's prompt id (its line in the list of distinct prompts).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.errors import CacheError, ConfigError, DataError
from repackctl.files import to_uint8, write_json_atomic, write_npy_atomic, write_png_atomic
from repackctl.pack.load import denormalise, load_decoder
from repackctl.paths import PROTOCOL_JSON, local_path, run_root_of
from repackctl.progress import ProgressFactory, null_progress
from repackctl.runtime import DistInfo, resolve_device
from repackctl.sample.folder import (
    LATENTS_DIR,
    assemble,
    claim_folder,
    generation_card,
    missing_indices,
    named_folder,
    owned_range,
    png_path,
)
from repackctl.sample.plan import (
    index_generators,
    initial_noise,
    network_evaluations,
    read_sampling_defaults,
    resolve_plan,
)
from repackctl.transport.samplers import sample


# --------------------------------------------------------------------------- prompts
def given_prompts(cfg: Any) -> list[str]:
    """``--prompt`` values, then the lines of ``--prompts FILE`` (blank lines ignored)."""
    prompts = [" ".join(p.split()) for p in (cfg.prompt or [])]
    if cfg.prompts:
        path = Path(cfg.prompts).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read the prompts file {path}: {e}", "pass a UTF-8 text file, one per line"
            ) from None
        prompts += [" ".join(line.split()) for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if (cfg.prompt or cfg.prompts) and not prompts:
        raise ConfigError("the given prompts are all empty", "pass --prompt 'a red star'")
    return prompts


def cached_prompts(extra: dict[str, Any], num: int) -> tuple[list[str], str]:
    """The first caption of each image of the val entry (else the training entry)."""
    from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries
    from repackctl.captions_cache import open_text_group

    cache = extra.get("cache") or {}
    root, train_entry, text_id = cache.get("root"), cache.get("entry"), extra["text"]["features"]
    hint = "pass prompts: --prompt 'a red star on a blue striped background' or --prompts FILE"
    try:
        names = list_entries(root) if root else []
    except Exception:  # noqa: BLE001 - an unreachable cache only means: no default prompts
        names = []
    if train_entry not in names:
        raise CacheError(f"the run's cache entry {train_entry} is not in {root}", hint)
    dataset, _, res = train_entry.split("--")
    base = dataset.rsplit("-n", 1)[0]
    vals = [
        n
        for n in names
        if n.split("--")[1:] == ["val", res] and n.split("--")[0].rsplit("-n", 1)[0] == base
    ]
    for name in [*sorted(vals), train_entry]:
        ds = DatasetEntry.open(root, name)
        if text_id not in ds.complete_groups("text", ("captions", "done")):
            continue
        grp = open_text_group(ds, text_id)
        ok = np.flatnonzero(grp.done_mask() == WRITTEN)[:num]
        caps = grp["captions"]
        return [str(caps[int(i)]).split("\n")[0] for i in ok], name
    raise CacheError(f"no cached captions {text_id} for the run's entries in {root}", hint)


def resolve_prompts(cfg: Any, extra: dict[str, Any]) -> tuple[list, list, np.ndarray, str]:
    """(prompts, distinct prompts, prompt id of each sample (N,), where they came from)."""
    prompts = given_prompts(cfg)
    source = "given"
    if not prompts:
        prompts, entry = cached_prompts(extra, cfg.num)
        source = f"first caption of each image of {entry}"
    distinct = list(dict.fromkeys(prompts))
    ids = np.array([distinct.index(prompts[i % len(prompts)]) for i in range(cfg.num)], np.int64)
    return prompts, distinct, ids, source


def encode_prompts(encoder: Any, prompts: list[str], device: torch.device) -> dict[str, Any]:
    """Text features of each distinct prompt: tokens (P, L, C), mask (P, L), pooled (P, C)."""
    parts = [encoder.encode(prompts[i : i + 64]) for i in range(0, len(prompts), 64)]
    return {
        "tokens": torch.cat([p.tokens.float() for p in parts]).to(device),
        "mask": torch.cat([p.mask for p in parts]).to(device),
        "pooled": torch.cat([p.pooled.float() for p in parts]).to(device),
    }


# --------------------------------------------------------------------------- generation
def prompt_grid(folder: Path, ids: np.ndarray, per_sample: list[str], limit: int) -> Path:
    """``grid.png`` with one labelled row per prompt (≤ 8 rows of ≤ 8 samples, ≤ ``limit``)."""
    from repackctl.files import read_png
    from repackctl.metrics.recon import save_grid

    rows, labels, used = [], [], 0
    for k in list(dict.fromkeys(ids.tolist()))[:8]:
        take = [i for i in np.flatnonzero(ids == k)[:8].tolist()][: max(0, limit - used)]
        if not take:
            break
        rows.append(np.stack([read_png(png_path(folder, i)) for i in take]))
        labels.append(per_sample[take[0]][:60])
        used += len(take)
    return save_grid(rows, folder / "grid.png", labels=labels)


def _finish(
    folder: Path,
    cfg: Any,
    ids: np.ndarray,
    extra: dict[str, Any],
    per_sample: list[str],
    protocol: dict[str, Any],
) -> tuple[int, ...]:
    """samples.npz, latents.npy, grid.png, prompts.txt and protocol.json of a full folder."""
    lost = missing_indices(folder, range(cfg.num))
    if lost:
        raise DataError(
            f"{len(lost)} samples are missing after sampling (e.g. {lost[:3]})",
            "run the same command again to finish them",
        )
    image_shape = assemble(folder, ids, cfg.grid, tuple(extra["latent_shape"]))
    if cfg.grid > 0:
        prompt_grid(folder, ids, per_sample, cfg.grid)
    tmp = folder / ".prompts.txt.tmp"
    tmp.write_text("\n".join(per_sample) + "\n", encoding="utf-8")
    tmp.replace(folder / "prompts.txt")
    write_json_atomic(folder / PROTOCOL_JSON, protocol)
    return image_shape


def generate_t2i_latents(
    model: torch.nn.Module,
    plan: Any,
    extra: dict[str, Any],
    text: dict[str, torch.Tensor],
    ids: np.ndarray,
    seed: int,
    indices: list[int],
    autocast: bool,
) -> torch.Tensor:
    """Raw packed latents (B, d, h, w) of samples ``indices``, each from its own generator."""
    device = text["tokens"].device
    shape = tuple(int(s) for s in extra["latent_shape"])
    gens = index_generators(seed, indices)
    noise = initial_noise(gens, shape).to(device)  # (B, d, h, w)
    rows = torch.from_numpy(ids[indices]).to(device)  # (B,) prompt ids
    f = model.velocity_fn(
        text["tokens"][rows],  # (B, L, C)
        text["mask"][rows],  # (B, L)
        text["pooled"][rows],  # (B, C)
        scale=plan.cfg,
        t_lo=plan.t_lo,
        t_hi=plan.t_hi,
    )

    def velocity(x: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return f(x, t).float()  # (B, d, h, w)

    out = sample(plan.spec, velocity, noise, None, generator=gens)
    return denormalise(out.x.float(), extra["latent_stats"])  # (B, d, h, w)


def _write_batch(
    folder: Path,
    idx: list[int],
    model: torch.nn.Module,
    plan: Any,
    extra: dict[str, Any],
    text: dict[str, torch.Tensor],
    ids: np.ndarray,
    settings: Any,
    decoder: Any,
    refiner: Any,
) -> None:
    """Generate, decode (and refine) samples ``idx``; write each latent, then its PNG."""
    device = text["tokens"].device
    autocast = settings.precision != "fp32" and device.type == "cuda"
    with torch.no_grad():
        raw = generate_t2i_latents(model, plan, extra, text, ids, settings.seed, idx, autocast)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            images = to_uint8(decoder.decode(raw))  # (B, H, W, 3)
        if refiner is not None:
            images = refiner.refine(images, raw)  # (B, H, W, 3)
    raw_np = raw.cpu().numpy().astype(np.float32)  # (B, d, h, w)
    for j, i in enumerate(idx):
        # the latent first: a PNG (the done marker) implies its latent is on disk
        write_npy_atomic(folder / LATENTS_DIR / f"{i:06d}.npy", raw_np[j])
        write_png_atomic(png_path(folder, i), images[j])


def _check_options(cfg: Any) -> None:
    if cfg.guide:
        raise ConfigError(
            "autoguidance is not available for text-to-image runs yet", "drop --guide"
        )
    if cfg.cfg_channels:
        raise ConfigError("legacy CFG channels do not apply to text-to-image runs", "drop it")
    if cfg.labels != "balanced":
        raise ConfigError("--labels does not apply to text-to-image runs", "use --prompt")


def _folder(
    settings: Any,
    cfg: Any,
    ckpt: Path,
    plan: Any,
    prompts: list[str] | None,
    fingerprint: dict[str, Any],
) -> Path:
    """``--out``, else the folder named as class-conditional sampling names it (precision
    included, a folder of the legacy name resumed in place) + ``--p<hash>`` of given
    ``prompts`` (other prompts → another folder, never mixed with the default prompts)."""
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    suffix = ""
    if prompts is not None:
        suffix = "--p" + hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:8]
    which = (run_root_of(ckpt).name, ckpt.name, plan, settings.seed, cfg.weights, cfg.refiner)
    base = local_path(settings.samples)
    return named_folder(base, which, fingerprint, precision=settings.precision, suffix=suffix)


def _protocol(
    plan: Any,
    nfe: int,
    settings: Any,
    handle: Any,
    distinct: list[str],
    ids: np.ndarray,
    source: str,
    refiner: Any,
) -> dict[str, Any]:
    """The protocol card of a t2i samples folder (prompts included)."""
    return generation_card(
        plan=plan,
        nfe=nfe,
        label_scheme="prompts",
        seed=settings.seed,
        precision=settings.precision,
        checkpoint=Path(handle.checkpoint),
        checkpoint_sha256=handle.sha256,
        num=len(ids),
        extra={
            "weights": handle.which,
            "dit_run": run_root_of(Path(handle.checkpoint)).name,
            "stage": "t2i",
            "text": {k: handle.extra["text"].get(k) for k in ("features", "encoder", "max_length")},
            "prompt_source": source,
            "prompts": distinct,
            "prompt_ids": ids.tolist(),
            "guidance": "classifier-free, null caption = features of the empty caption",
            "pack": handle.extra.get("pack"),
            "latent_shape": list(handle.extra["latent_shape"]),
            "latent_convention": "raw",
            "refiner": None if refiner is None else str(refiner.checkpoint),
        },
    )


def run_t2i_sample(
    settings: Any, progress: ProgressFactory = null_progress, dist: DistInfo | None = None
):
    """Generate (or finish generating) ``settings.sample.num`` samples of a t2i run."""
    from repackctl.dit.t2i_load import load_t2i, load_text_encoder
    from repackctl.sample.run import SampleResult

    cfg = settings.sample
    dist = dist or DistInfo.from_env()
    _check_options(cfg)
    device = resolve_device(settings.device, dist.local_rank)
    handle = load_t2i(settings.runs, cfg.run, cfg.checkpoint, cfg.weights)
    extra, ckpt = handle.extra, Path(handle.checkpoint)
    plan = resolve_plan(cfg, read_sampling_defaults(ckpt))
    model = handle.model.to(device).eval()
    prompts, distinct, ids, source = resolve_prompts(cfg, extra)
    text = encode_prompts(load_text_encoder(extra).to(device), distinct, device)
    decoder = load_decoder(settings.runs, extra).model.to(device).eval()
    refiner = None
    if cfg.refiner:
        from repackctl.refine.load import load_refiner

        refiner = load_refiner(settings.runs, cfg.refiner, extra["pack"].get("pack_id"))
        refiner.model.to(device).eval()

    fingerprint = {
        "checkpoint_sha256": handle.sha256,
        "prompts_sha256": hashlib.sha256("\n".join(distinct).encode()).hexdigest(),
        "refiner": None if refiner is None else refiner.sha256,
        **{k: getattr(cfg, k) for k in ("weights", "num")},
        **{"seed": settings.seed, "precision": settings.precision},
        **{"sampler": plan.spec.to_dict(), "cfg": [plan.cfg, plan.t_lo, plan.t_hi]},
    }
    folder = _folder(settings, cfg, ckpt, plan, prompts if source == "given" else None, fingerprint)
    claim_folder(folder, fingerprint)
    todo = missing_indices(folder, owned_range(cfg.num, dist.rank, dist.world))
    if todo:
        (folder / LATENTS_DIR).mkdir(exist_ok=True)
    already = len(owned_range(cfg.num, dist.rank, dist.world)) - len(todo)
    t0 = time.perf_counter()
    with progress(f"sample {run_root_of(ckpt).name}", total=len(todo), unit="img") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            idx = todo[start : start + cfg.batch_size]
            _write_batch(folder, idx, model, plan, extra, text, ids, settings, decoder, refiner)
            bar.advance(len(idx))
    seconds = time.perf_counter() - t0
    dist.barrier()
    nfe = network_evaluations(plan.spec, plan, False)
    protocol = _protocol(plan, nfe, settings, handle, distinct, ids, source, refiner)
    image_shape: tuple[int, ...] = ()
    if dist.rank == 0:
        image_shape = _finish(folder, cfg, ids, extra, [distinct[int(k)] for k in ids], protocol)
    dist.barrier()
    return SampleResult(
        out_dir=folder,
        num=cfg.num,
        written=len(todo),
        already_done=already,
        nfe=nfe,
        image_shape=image_shape,
        seconds=seconds,
        protocol=protocol,
        refined=refiner is not None,
    )
