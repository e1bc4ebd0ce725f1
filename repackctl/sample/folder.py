"""The samples-folder format: PNG names, ownership, claim, assembly to .npz, the card."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.errors import ConfigError
from repackctl.files import (
    ensure_writable_dir,
    read_png,
    remove_stale_temp_files,
    temp_writer_pid,
    write_json_atomic,
)
from repackctl.paths import LATENTS_DIR, LATENTS_FILE, SETTINGS_JSON
from repackctl.sample.plan import GenerationPlan, label_classes


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def iter_pngs(folder: Path, num: int, batch: int = 256) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches of ``000000.png …`` in index order."""
    for start in range(0, num, batch):
        idx = range(start, min(start + batch, num))
        yield np.stack([read_png(png_path(folder, i)) for i in idx])


def missing_indices(folder: Path, indices: range) -> list[int]:
    return [i for i in indices if not png_path(folder, i).is_file()]


def aligned_batches(owned: range, missing: set[int], batch: int) -> list[list[int]]:
    """The batches ``owned[k·B:(k+1)·B]`` that still hold a missing index, whole.

    A resumed run recomputes a half-written batch with exactly the samples it had, so its
    latents equal an uninterrupted run's bit for bit (batched matmuls round by batch shape).
    """
    out = []
    for start in range(0, len(owned), batch):
        idx = list(owned[start : start + batch])
        if missing.intersection(idx):
            out.append(idx)
    return out


def owned_range(num: int, rank: int, world: int) -> range:
    """Contiguous share ``[N·r/W, N·(r+1)/W)`` of process r."""
    return range(num * rank // world, num * (rank + 1) // world)


def out_hint(out_given: bool) -> str:
    """Where else a refused samples folder's images can go, for a command that did (not) pass
    ``--out``."""
    return "pass another --out" if out_given else "pass --out to write elsewhere"


def claim_folder(
    folder: Path, fingerprint: dict[str, Any], elsewhere: str = out_hint(False)
) -> None:
    """Record the settings that fix the images; a folder made with other settings is refused.

    The settings file is the folder's marker: a folder that exists without it must be empty (or
    hold only our temporary files), since later steps delete ``latents/`` and overwrite
    ``samples.npz``; a folder with foreign content is refused, never emptied. Temporary files of
    killed writers (``.000033.png.<pid>.tmp`` …) are removed.
    """
    ensure_writable_dir(folder, "samples folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_JSON
    if not path.is_file():
        foreign = sorted(p.name for p in folder.iterdir() if temp_writer_pid(p.name) is None)
        if foreign:
            raise ConfigError(
                f"{folder} already holds files that `repackctl` did not write there "
                f"({', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''})",
                f"{elsewhere} (a new or empty folder); nothing in this one was changed",
            )
    remove_stale_temp_files(folder)
    remove_stale_temp_files(folder / LATENTS_DIR)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            old = {"unreadable": str(path)}
        diff = settings_diff(old, fingerprint)
        if diff:
            hint = f"{elsewhere}, or delete the folder"
            if diff == ["num"] and isinstance(old.get("num"), int):
                hint = (
                    f"pass --num {old['num']} to use its samples, or {elsewhere}: a samples folder "
                    "is never extended or cut to another --num (balanced labels depend on N)"
                )
            raise ConfigError(
                f"{folder} holds samples made with other settings ({_differences(diff, old, fingerprint)})",
                hint,
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


@dataclass(frozen=True)
class FolderKey:
    """The settings a default samples folder is named after: run, checkpoint, plan, seed,
    weights (``ema``/``raw``), refiner run, autoguidance guide, label scheme and precision."""

    run: str
    ckpt: str
    plan: GenerationPlan
    seed: int
    weights: str
    refiner: str | None
    guide: str | None = None
    labels: str = field(default="balanced", kw_only=True)
    precision: str = field(default="fp32", kw_only=True)

    def name(self) -> str:
        """``<run>--<ckpt>--<sampler>-<steps>--cfg<s>--seed<k>`` (+ ``-raw`` / ``--refine-<name>``).

        Every recorded setting that changes the images and differs from its default adds a
        suffix, so that changing only it gives another folder (a default setting adds nothing,
        so default names stay as they were): ``-shift<s>`` after the steps; guidance that is not
        plain CFG on all steps and channels ``-t<lo>-<hi>`` (an interval) and ``-ch<k>`` (legacy
        channels) after the scale (never at scale 1: they change nothing there);
        ``--labels-random`` / ``--labels-3-7`` and ``--bf16`` / ``--fp16`` after the seed; then
        ``--guide-<run>[-<checkpoint>]`` (autoguidance) and the refiner."""
        plan = self.plan
        name = f"{self.run}--{self.ckpt}{'' if self.weights == 'ema' else '-raw'}"
        name += f"--{plan.spec.kind}-{plan.spec.steps}{_shift_suffix(plan)}"
        name += f"--cfg{plan.cfg:g}{_guidance_suffix(plan)}--seed{self.seed}"
        name += _labels_suffix(self.labels) + (
            "" if self.precision == "fp32" else f"--{self.precision}"
        )
        if self.guide:
            name += f"--guide-{self.guide}"
        if self.refiner:
            name += refined_suffix(Path(self.refiner).name)
        return name

    def legacy_name(self) -> str:
        """The name before shift, labels and precision were in it (see ``resume_folder``): the
        name of the same settings with those three at their defaults."""
        unshifted = replace(self.plan, spec=replace(self.plan.spec, shift=1.0))
        return replace(self, plan=unshifted, labels="balanced", precision="fp32").name()


def sample_folder_name(*key: Any, **options: Any) -> str:
    """``FolderKey(*key, **options).name()``: the default samples folder of these settings."""
    return FolderKey(*key, **options).name()


def legacy_sample_folder_name(*key: Any, **options: Any) -> str:
    """``FolderKey(*key, **options).legacy_name()``: its name before shift, labels and
    precision were in it."""
    return FolderKey(*key, **options).legacy_name()


def _shift_suffix(plan: GenerationPlan) -> str:
    """``-shift<s>`` for a time shift other than 1 (no shift)."""
    return "" if plan.spec.shift == 1.0 else f"-shift{plan.spec.shift:g}"


# a class list longer than this many characters is named by its length and hash instead
_LABELS_NAME_MAX = 32


def _labels_suffix(scheme: str) -> str:
    """``--labels-random``, ``--labels-3-7`` (given classes) or nothing (balanced, the default).

    A long class list is named ``--labels-<n>cls-<hash>`` to keep the name one short path
    component (the settings file records the list itself)."""
    if scheme == "balanced":
        return ""
    if scheme == "random":
        return "--labels-random"
    ids = "-".join(str(c) for c in label_classes(scheme))
    if len(ids) <= _LABELS_NAME_MAX:
        return f"--labels-{ids}"
    digest = hashlib.sha256(ids.encode()).hexdigest()[:8]
    return f"--labels-{len(label_classes(scheme))}cls-{digest}"


def _guidance_suffix(plan: GenerationPlan) -> str:
    """``-t<lo>-<hi>`` for a guidance interval other than [0, 1], ``-ch<k>`` for legacy channels."""
    if not plan.guided:
        return ""
    out = "" if (plan.t_lo, plan.t_hi) == (0.0, 1.0) else f"-t{plan.t_lo:g}-{plan.t_hi:g}"
    return out + (f"-ch{plan.legacy_channels}" if plan.legacy_channels else "")


def resume_folder(base: Path, name: str, legacy: str, fingerprint: dict[str, Any]) -> Path:
    """``base/name``, or ``base/legacy`` when only that one exists and holds these very settings.

    Folders made before a setting was in the name (e.g. a shift from an imported run's
    ``sampling.json``, or ``--precision bf16``) have the shorter legacy name; they are resumed
    where they are rather than started again under the new name."""
    new, old = base / name, base / legacy
    if name == legacy or new.exists() or not (old / SETTINGS_JSON).is_file():
        return new
    try:
        recorded = json.loads((old / SETTINGS_JSON).read_text())
    except ValueError:
        return new
    return old if isinstance(recorded, dict) and not settings_diff(recorded, fingerprint) else new


def settings_diff(recorded: dict[str, Any], fingerprint: dict[str, Any]) -> list[str]:
    """The keys whose recorded settings differ from ``fingerprint``, sorted.

    Guidance at scale 1 is no guidance: ``cfg`` entries ``[1, lo, hi, …]`` are equal whatever
    their interval and channels (folders written before those were reset at scale 1 recorded
    them; they hold the very same images and are resumed, never refused)."""
    keys = set(recorded) | set(fingerprint)
    diff = {k for k in keys if recorded.get(k) != fingerprint.get(k)}
    if "cfg" in diff and _unguided(recorded.get("cfg")) and _unguided(fingerprint.get("cfg")):
        diff.discard("cfg")
    return sorted(diff)


def _differences(keys: list[str], there: dict[str, Any], now: dict[str, Any]) -> str:
    """``key: <recorded> there, <now> now`` for each differing setting (long values cut)."""

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 60 else text[:57] + "…"

    return "; ".join(f"{k}: {short(there.get(k))} there, {short(now.get(k))} now" for k in keys)


def _unguided(entry: Any) -> bool:
    """Whether a recorded ``cfg`` entry ``[scale, lo, hi, …]`` has scale 1."""
    return isinstance(entry, list) and bool(entry) and entry[0] == 1.0


def named_folder(
    base: Path,
    which: tuple[str, str, GenerationPlan, int, str, str | None],
    fingerprint: dict[str, Any],
    *,
    guide: str | None = None,
    labels: str = "balanced",
    precision: str = "fp32",
    suffix: str = "",
) -> Path:
    """The samples folder of these settings under ``base``: the ``FolderKey`` name of ``which``
    (run, checkpoint, plan, seed, weights, refiner) + ``suffix``, or its legacy name + ``suffix``
    when only that one exists and holds ``fingerprint`` (``resume_folder``)."""
    key = FolderKey(*which, guide, labels=labels, precision=precision)
    return resume_folder(base, key.name() + suffix, key.legacy_name() + suffix, fingerprint)


def refined_suffix(refiner_run: str) -> str:
    """``--refine-<run>``, or ``--<run>`` when the run's name already says refine."""
    return f"--{refiner_run}" if refiner_run.startswith("refine") else f"--refine-{refiner_run}"


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
