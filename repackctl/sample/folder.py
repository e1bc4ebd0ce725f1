"""The samples-folder format: PNG names, ownership, claim, assembly to .npz, the card.

Integrity (nothing damaged or swapped is assembled or scored silently):

- **Per-sample files.** For each batch, ``sample`` writes ``latents/written-<a>-<b>.json``
  (atomically, after the batch's ``.npy`` files and before its ``.png`` files, the done
  markers): the sha256 of each file. A sample is done when its PNG and latent match such an
  entry; a sample without its PNG is simply made again, a file that no longer matches
  (damaged from outside) is made again with a ``Warning:`` line. Sampling an index is
  deterministic for a given batch (and, on the CPU, thread count: the folder's recorded one,
  ``sampling_threads``), and a resumed batch is recomputed whole (``aligned_batches``), so the
  repaired folder equals an uninterrupted run's byte for byte.
  Assembly hashes each file as it reads it and refuses one that does not match. `refine apply`
  writes its refined PNGs the same way (manifests of their sha256 only: it writes no latents)
  and removes the manifests once its card is written.
- **Assembled files.** ``protocol.json`` records ``files``: the sha256 and size of
  ``samples.npz`` (with ``images_sha256``, the digest of its pixels, which a rebuild from the
  PNGs can reproduce although a zip's write times change its bytes) and of ``latents.npy``.
  Readers (``evaluate``, ``refine apply``) refuse a file that does not match
  (:func:`check_recorded_file`); a rerun of ``sample`` rebuilds a damaged ``samples.npz`` from
  the PNGs when their pixels still give the recorded digest.
- **The PNGs of a finished folder.** Its per-sample manifests are gone, so its PNGs are tied to
  the card by ``images_sha256``. A rerun of ``sample`` compares each PNG's pixels with the
  verified ``samples.npz`` and rewrites every one that differs, does not decode or is missing
  from it (:func:`restore_pngs`, the bytes ``sample`` writes), so the folder is again the one
  first written; readers that score the PNGs check them (:func:`verify_recorded_pngs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.errors import ConfigError, DataError, name_items
from repackctl.files import (
    ensure_writable_dir,
    read_png,
    remove_stale_temp_files,
    sha256_file,
    sha256_file_cached,
    write_json_atomic,
    write_npy_atomic,
    write_png_atomic,
)
from repackctl.paths import (
    LATENTS_DIR,
    LATENTS_FILE,
    PROTOCOL_JSON,
    SAMPLES_NPZ,
    SETTINGS_JSON,
)
from repackctl.progress import warn
from repackctl.run_files import checkpoint_weights_sha256, protocol_card, read_json_dict
from repackctl.run_lock import SAMPLES_LOCK, lock_samples
from repackctl.sample.plan import GenerationPlan, label_classes, make_labels
from repackctl.temp_names import temp_parts, writer_tag


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def iter_pngs(folder: Path, num: int, batch: int = 256) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches of ``000000.png …`` in index order."""
    for start in range(0, num, batch):
        idx = range(start, min(start + batch, num))
        yield np.stack([read_png(png_path(folder, i)) for i in idx])


def missing_indices(folder: Path, indices: range) -> list[int]:
    return [i for i in indices if not png_path(folder, i).is_file()]


def undecodable_pngs(folder: Path, indices: range) -> list[int]:
    """The indices whose PNG is there but does not decode (cut short, overwritten with other
    bytes): in a finished folder without a samples.npz to restore them from, they can only be
    made again, as missing ones are (the samples are the same: each batch is made as first)."""
    from PIL import Image

    bad = []
    for i in indices:
        path = png_path(folder, i)
        if not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, ValueError, SyntaxError):
            bad.append(i)
    return bad


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


#: the settings-file keys of a folder's batching: the batch size its samples were made in, and
#: the number of processes whose shares (``owned_range``) those batches were cut from. Batched
#: matmuls and convolutions round by batch shape, so latents differ by ~1e-6 and pixels by
#: ±1/255 between batchings (folders started before these were recorded lack them)
BATCH_KEY = "batch_size"
WORLD_KEY = "world_size"
#: the settings-file key of the number of torch threads per process (``torch.get_num_threads()``,
#: ``OMP_NUM_THREADS``) a folder's samples are computed with on the CPU: CPU matmuls split their
#: sums by thread count, so latents differ by ~1e-7 and pixels by ±1/255 between thread counts.
#: Recorded by folders made on the CPU only (``cpu_threads``), and used by every later call on
#: the CPU that makes samples in them (``sampling_threads``, ``torch_threads``)
THREADS_KEY = "cpu_threads"
BATCHING_KEYS = (BATCH_KEY, WORLD_KEY, THREADS_KEY)
#: the settings-file key of the device type (``cpu``, ``cuda`` …) a folder's samples are computed
#: on: CPU and CUDA kernels round differently (latents by ~1e-6, pixels by ±1/255), so a folder
#: is made on one device type; a later call on another is refused (``check_device``). Folders
#: made before this was recorded lack it, and are resumed on any device as before
DEVICE_KEY = "device_type"
#: what a folder's settings file records of how its samples are computed (not what they are):
#: left out where a folder's settings are compared with a name's (``resume_folder``)
MACHINE_KEYS = (*BATCHING_KEYS, DEVICE_KEY)


def job_batches(num: int, world: int, missing: set[int], batch: int) -> list[list[int]]:
    """The batches of an uninterrupted run of ``world`` processes over ``num`` samples (each
    one's share cut in batches of ``batch``) that still hold a ``missing`` index, whole.

    A folder resumed by another number of processes recomputes the batches of the job that
    started it (a batch may straddle two shares of this job: each process computes it and
    writes its own samples), so its samples are those of an uninterrupted run."""
    return [
        idx
        for rank in range(world)
        for idx in aligned_batches(owned_range(num, rank, world), missing, batch)
    ]


def recorded_batching(settings: dict[str, Any]) -> dict[str, int]:
    """The batch size, world size and CPU thread count a folder's settings record
    (``BATCHING_KEYS``), those that are positive integers: another value (an edited file) is
    left out, so ``claim_folder`` refuses the folder as one of other settings rather than
    batching by it."""
    return {
        k: v
        for k in BATCHING_KEYS
        if type(v := settings.get(k)) is int and v > 0  # not a bool or a float
    }


def batching_record(
    batch: int, world: int, threads: int | None, device: Any = None
) -> dict[str, Any]:
    """What a new folder records of its batching: ``batch``, ``world``, computed on the CPU
    ``threads`` (``cpu_threads``; None on CUDA: nothing recorded), and the type of ``device``
    (``device_type``: ``cpu``, ``cuda`` …; None: nothing recorded)."""
    record: dict[str, Any] = {BATCH_KEY: batch, WORLD_KEY: world}
    if threads is not None:
        record[THREADS_KEY] = threads
    return record if device is None else {**record, DEVICE_KEY: device_type(device)}


def recorded_device(settings: dict[str, Any]) -> dict[str, str]:
    """``{device_type: …}`` when a folder's settings record the device type its samples are
    computed on as a string; {} otherwise (an older folder; an edited value is left out, so
    ``claim_folder`` refuses the folder as one of other settings)."""
    found = settings.get(DEVICE_KEY)
    return {DEVICE_KEY: found} if isinstance(found, str) else {}


def check_device(folder: Path, settings: dict[str, Any], device: Any, elsewhere: str) -> None:
    """Refuse to compute in ``folder`` on ``device`` when its settings record another device
    type (``device_type``): CPU and CUDA kernels round differently, so its images would be
    those of two devices. ``elsewhere``: where else the images can go. Nothing is checked for
    a folder that records none (made before it was recorded) or when ``device`` is None."""
    made = recorded_device(settings).get(DEVICE_KEY)
    if made is None or device is None or made == device_type(device):
        return
    now = device_type(device)
    raise ConfigError(
        f"{folder} was started on {made}, and this call computes on {now}: {made} and {now} "
        "kernels round differently (latents by ~1e-6, pixels by ±1/255), so going on here would "
        "mix the images of two devices in one folder",
        f"pass --device {made} to go on with it, or {elsewhere}; nothing in it was changed",
    )


def claim_batching(
    folder: Path,
    fingerprint: dict[str, Any],
    batch: int,
    world: int,
    elsewhere: str,
    threads: int | None = None,
    device: Any = None,
) -> tuple[dict[str, Any], int, int]:
    """(the fingerprint to claim ``folder`` with, the batch size and the world size whose
    batches its samples are made in: ``job_batches``).

    A new folder records ``batch`` and ``world``, and ``threads`` when given (``cpu_threads``:
    on the CPU); an existing one keeps the thread count it records, if any, which every call on
    the CPU computes with (``sampling_threads``). An unfinished folder started with another
    batch size is refused: finishing it with ``batch`` mixed two batchings in one folder. A
    finished folder keeps its own (whatever it makes again matches the rest). Every folder keeps
    its world size: the batches of the job that started it are recomputed whatever the number
    of processes now. A folder started before they were recorded is resumed with those given
    and left as it is. A folder of other settings is left to ``claim_folder`` to refuse.

    ``device`` (the device computed on) is recorded by type for a new folder (``device_type``);
    a folder of these settings started on another device type is refused, finished or not
    (``check_device``); one started before it was recorded is not checked."""
    old = read_json_dict(folder / SETTINGS_JSON)
    if old is None:
        return {**fingerprint, **batching_record(batch, world, threads, device)}, batch, world
    kept: dict[str, Any] = {**recorded_batching(old), **recorded_device(old)}
    claim = {**fingerprint, **kept}
    if not settings_diff(old, claim):
        check_device(folder, old, device, elsewhere)
    recorded = kept.get(BATCH_KEY, batch)
    if recorded != batch and not settings_diff(old, claim) and not is_finished(folder):
        raise ConfigError(
            f"{folder} is an unfinished samples folder whose samples were made with "
            f"--batch-size {recorded}, not {batch}: latents and pixels round differently "
            "between batch sizes, so finishing it with another would mix two batchings in one "
            "folder",
            f"pass --batch-size {recorded} to finish it, or {elsewhere}",
        )
    return claim, recorded, kept.get(WORLD_KEY, world)


def cpu_threads(device: Any) -> int | None:
    """The thread count a new folder made on ``device`` records: ``torch.get_num_threads()`` on
    the CPU. None on CUDA (or any other accelerator): the samples are computed by its kernels,
    whose results do not depend on the number of CPU threads, so it is neither recorded nor
    checked there."""
    import torch

    return torch.get_num_threads() if device_type(device) == "cpu" else None


def sampling_threads(claim: dict[str, Any], device: Any) -> int | None:
    """The torch thread count to make a folder's samples with on ``device``: on the CPU the one
    its settings (``claim``) record, so that samples made by a call given another count
    (``OMP_NUM_THREADS``) round as the rest of the folder; None (the count given) on CUDA, and
    for a folder started before this was recorded (or on CUDA), resumed as before."""
    if device_type(device) != "cpu":
        return None
    return claim.get(THREADS_KEY)  # kept by ``claim_batching`` only when a positive int


def device_type(device: Any) -> str:
    """``cpu`` / ``cuda`` … of a ``torch.device`` or its name."""
    return str(getattr(device, "type", device)).split(":")[0]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Compute with ``threads`` torch threads per process (None: those given), then with the
    count there was before (an in-process caller keeps its own)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def out_hint(out_given: bool) -> str:
    """Where else a refused samples folder's images can go, for a command that did (not) pass
    ``--out``."""
    return "pass another --out" if out_given else "pass --out to write elsewhere"


#: how long a command answering "already done" waits for another process that holds the
#: samples folder's lock (the same command run twice, redrawing the grid or restoring PNGs)
LOCK_WAIT_S = 120.0


def lock_waiting(out: Path, wait_s: float = LOCK_WAIT_S) -> bool:
    """Take the writer's lock of the finished samples folder ``out``, waiting up to ``wait_s``
    seconds while another process holds it (said once on stderr); past that, its refusal.
    Returns whether it waited: the other process may have done the work meanwhile. Only for a
    folder that is finished: its writers there are commands answering "already done" (a grid
    redrawn, a PNG restored), quick and with the same result; an unfinished folder's writer
    is refused at once (``claim_folder``)."""
    deadline, waited = time.monotonic() + wait_s, False
    while True:
        try:
            lock_samples(out)
            return waited
        except ConfigError as e:  # another process holds it (``_samples_busy``)
            if time.monotonic() >= deadline:
                raise
            if not waited:
                busy = e.message.removesuffix("; nothing was written there")
                warn(f"{busy}: waiting up to {wait_s:.0f} s for it to finish")
            waited = True
            time.sleep(0.2)


def claim_folder(
    folder: Path, fingerprint: dict[str, Any], elsewhere: str = out_hint(False)
) -> None:
    """Record the settings that fix the images; a folder made with other settings is refused.

    The settings file is the folder's marker: a folder that exists without it must be empty (or
    hold only our temporary files), since later steps delete ``latents/`` and overwrite
    ``samples.npz``; a folder with foreign content is refused, never emptied. Temporary files of
    killed writers of the files written there (``.000033.png.<pid>.tmp`` …) are removed; any
    other file, even one named like a temporary, is the user's and is left alone.
    """
    ensure_writable_dir(folder, "samples folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_JSON
    if not path.is_file():
        foreign = sorted(
            p.name
            for p in folder.iterdir()
            if p.name != SAMPLES_LOCK and not _our_temp(p.name, _FOLDER_FILES)
        )
        if foreign:
            raise ConfigError(
                f"{folder} already holds files that `repackctl` did not write there "
                f"({name_items(foreign, 3)})",
                f"{elsewhere} (a new or empty folder); nothing in this one was changed",
            )
    # one writer: given up when the command ends (``released_after``); another process in a
    # finished folder answers "already done" as this one will: waited for (the same command
    # run twice), not refused
    if is_finished(folder):
        lock_waiting(folder)
    else:
        lock_samples(folder)
    remove_stale_temp_files(folder, lambda name: _our_temp(name, _FOLDER_FILES))
    remove_stale_temp_files(folder / LATENTS_DIR, lambda name: _our_temp(name, _LATENT_FILES))
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
            elif diff == ["checkpoint_sha256"]:
                hint = _checkpoint_hint(folder, elsewhere, old)
            raise ConfigError(
                f"{folder} holds samples made with other settings ({_differences(diff, old, fingerprint)})",
                hint,
            )
        return
    write_json_atomic(path, fingerprint)


def _checkpoint_hint(folder: Path, elsewhere: str, recorded: dict[str, Any]) -> str:
    """How to go on with a samples folder made from another checkpoint of the model (the run
    trained on since): "pass another --out, or delete the folder" did not say that the same
    command with the checkpoint it was made from finishes (or reuses) it. The checkpoint is
    named when the folder's protocol.json records it (a finished folder) and it still holds
    the weights the folder records (``recorded``: its settings file); after the run was
    removed and trained again, a checkpoint of that name holds other weights, and naming it
    sent the user back to this very error."""
    try:
        made = Path(str(json.loads((folder / PROTOCOL_JSON).read_text())["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        made = None
    if made is None:
        which = (
            "--checkpoint with the step it was made from (`repackctl runs info RUN` lists them; "
            "it lists this folder under `samples of another run of this name` when the run was "
            "removed and trained again: then no checkpoint of the run makes these samples)"
        )
    elif not made.is_dir():
        return (
            f"it was made from {made}, which is no longer kept: {elsewhere} for samples of this "
            "checkpoint, or delete the folder"
        )
    elif not _holds_recorded_weights(made, recorded):
        return (
            f"it was made from {made}, whose weights are gone: that checkpoint now holds other "
            f"weights (run {made.parent.parent.name} was removed and trained again), so no "
            f"checkpoint makes these samples: {elsewhere} for samples of this run, or delete the "
            "folder (the earlier run's samples)"
        )
    else:
        which = f"--checkpoint {made.name} (the checkpoint it was made from)"
    return (
        f"the model's checkpoint changed since this folder was made: pass {which} to finish or "
        f"reuse it, or {elsewhere} for samples of this checkpoint"
    )


def _holds_recorded_weights(checkpoint: Path, recorded: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` holds the weights file whose sha256 a samples folder records
    (``checkpoint_sha256``, ``weights``): by its ``state.json`` record, else by the file; True
    when the folder records none (nothing to compare)."""
    sha, which = recorded.get("checkpoint_sha256"), recorded.get("weights") or "ema"
    if not isinstance(sha, str) or which not in ("ema", "model"):
        return True
    known = checkpoint_weights_sha256(checkpoint, which)
    if known is not None:
        return known == sha
    weights = checkpoint / f"{which}.safetensors"
    try:
        return weights.is_file() and sha256_file_cached(weights) == sha
    except FileNotFoundError:  # removed since it was listed: it holds nothing now
        return False


def assemble(
    folder: Path, labels: np.ndarray, grid: int, latent_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    """samples.npz (ADM), latents.npy and grid.png from the per-index files; returns H, W, 3."""
    return assemble_recorded(folder, labels, grid, latent_shape)[0]


def assemble_recorded(
    folder: Path,
    labels: np.ndarray,
    grid: int,
    latent_shape: tuple[int, ...] | None,
    verify: bool = False,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """``assemble``, and the ``files`` entry of the card for what it wrote (or kept).

    With ``verify``, each per-sample file must match the manifest written with it
    (``latents/written-*.json``); a file that does not, or does not decode, is refused by name
    before samples.npz is replaced."""
    num = len(labels)
    checks = _Checker(folder, read_manifests(folder) if verify else None)
    files = {SAMPLES_NPZ: write_npz_recorded(folder, labels, checks)}
    _assemble_latents(folder, num, latent_shape, checks)
    if (folder / LATENTS_FILE).is_file():
        files[LATENTS_FILE] = file_record(folder / LATENTS_FILE)
    return write_grid(folder, num, grid), files


def hash_pixels(batches: Iterable[np.ndarray], digest: Any) -> Iterator[np.ndarray]:
    """Yield the uint8 (b, H, W, 3) ``batches`` as they are, adding each to the sha256
    ``digest``: the one rule of ``images_sha256`` (the pixels in index order), so that a
    digest taken while samples.npz is written, of a folder's PNGs and of a samples.npz read
    back (``pixels_sha256``) are the same number for the same samples."""
    for b in batches:
        digest.update(np.ascontiguousarray(b, dtype=np.uint8).tobytes())
        yield b


def pixels_sha256(batches: Iterable[np.ndarray]) -> str:
    """sha256 of the pixels of uint8 (b, H, W, 3) ``batches`` in index order: what a samples
    card records as ``images_sha256`` (:func:`hash_pixels`). For PNGs (``pngs_digest``), a
    samples.npz (``npz_pixels_sha256``; `evaluate` checks the file it scores with it)."""
    h = hashlib.sha256()
    for _ in hash_pixels(batches, h):
        pass
    return h.hexdigest()


def npz_pixels_sha256(npz: Path) -> str:
    """:func:`pixels_sha256` of the images of the samples.npz ``npz``, streamed."""
    from repackctl.metrics.adm import iter_npz_images

    return pixels_sha256(iter_npz_images(npz))


def write_npz_recorded(
    folder: Path, labels: np.ndarray, checks: _Checker | None = None
) -> dict[str, Any]:
    """samples.npz from the PNGs; returns its card record (sha256, size, ``images_sha256``)."""
    from repackctl.metrics.adm import write_samples_npz

    images = hashlib.sha256()
    npz, num = folder / SAMPLES_NPZ, len(labels)
    checks = checks or _Checker(folder, None)
    write_samples_npz(npz, hash_pixels(checks.pngs(num), images), labels, num=num)
    return {**file_record(npz), "images_sha256": images.hexdigest()}


def pngs_digest(folder: Path, num: int) -> str:
    """sha256 of the pixels of ``000000.png …`` (what ``images_sha256`` records)."""
    return pixels_sha256(_Checker(folder, None).pngs(num))


#: the preview of a samples folder's first samples, and the card field that records how many
#: it shows (``--grid``; 0: none): `refine apply` shows as many in the refined folder's grid
GRID_PNG = "grid.png"
GRID_KEY = "grid"


def write_grid(folder: Path, num: int, grid: int) -> tuple[int, ...]:
    """grid.png of the first ``grid`` samples; returns the image shape (H, W, 3). At ``grid``
    0 the grid.png that an earlier call wrote there is removed (``remove_own_grid``), so the
    folder holds a grid exactly when its card says so."""
    from repackctl.metrics.recon import save_grid

    first = _decoded_png(png_path(folder, 0))
    if grid > 0:
        images = [_decoded_png(png_path(folder, i)) for i in range(min(grid, num))]
        cols = max(1, math.ceil(math.sqrt(len(images))))
        save_grid([images[i : i + cols] for i in range(0, len(images), cols)], folder / GRID_PNG)
    else:
        remove_own_grid(folder)
    return tuple(first.shape)


def remove_own_grid(folder: Path) -> None:
    """Delete ``folder``'s grid.png when the card there (written before this call) says that
    `sample` or `refine apply` drew it: the card records a grid above 0, or records none
    (versions before ``grid`` was recorded drew one whenever --grid was above 0). A grid.png
    that no card claims (no card yet, or a card that records no grid: 0) is not ours, and a
    link is never followed: both are left as they are."""
    path = folder / GRID_PNG
    card = read_json_dict(folder / PROTOCOL_JSON)
    if card is None or path.is_symlink() or not path.is_file():
        return
    recorded = card.get(GRID_KEY, 1)  # none recorded: an earlier version's grid
    if type(recorded) is int and recorded > 0:  # not a bool or an edited value
        path.unlink()


def _assemble_latents(
    folder: Path, num: int, latent_shape: tuple[int, ...] | None, checks: _Checker
) -> None:
    """latents.npy from ``latents/000000.npy …``, then ``latents/`` removed."""
    lat_dir = folder / LATENTS_DIR
    if latent_shape is None or not lat_dir.is_dir():
        return
    complete = all((lat_dir / f"{i:06d}.npy").is_file() for i in range(num))
    if not complete and (folder / LATENTS_FILE).is_file():
        remove_latents_dir(lat_dir)  # a finished folder reopened: latents.npy is already there
        return
    out = np.lib.format.open_memmap(
        folder / f".{LATENTS_FILE}.tmp", mode="w+", dtype=np.float32, shape=(num, *latent_shape)
    )
    for i in range(num):
        out[i] = checks.latent(i)
    out.flush()
    del out
    os.replace(folder / f".{LATENTS_FILE}.tmp", folder / LATENTS_FILE)
    remove_latents_dir(lat_dir)


def _decoded_png(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) of a per-sample PNG; an undecodable one is refused by name."""
    try:
        return read_png(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise _damaged(path, f"it does not decode: {e}") from None


def _damaged(path: Path, why: str) -> DataError:
    return DataError(
        f"{path} was damaged after it was written ({why})",
        "run the same command again: a damaged per-sample file is made again (or delete "
        "that file, then run it again)",
    )


class _Checker:
    """Reads per-sample files, each checked against its manifest entry when there are any."""

    def __init__(self, folder: Path, manifest: dict[int, list[dict[str, str]]] | None) -> None:
        self.folder, self.manifest = folder, manifest

    def _bytes(self, path: Path, index: int, kind: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise _damaged(path, f"it cannot be read: {e}") from None
        if self.manifest is not None:
            sha = hashlib.sha256(data).hexdigest()
            if not any(e.get(kind) == sha for e in self.manifest.get(index, ())):
                raise _damaged(path, "its sha256 is not the one recorded when it was written")
        return data

    def pngs(self, num: int, batch: int = 256) -> Iterator[np.ndarray]:
        """uint8 (b, H, W, 3) batches of ``000000.png …`` in index order."""
        from PIL import Image

        for start in range(0, num, batch):
            out = []
            for i in range(start, min(start + batch, num)):
                path = png_path(self.folder, i)
                try:
                    with Image.open(io.BytesIO(self._bytes(path, i, "png"))) as im:
                        out.append(np.asarray(im.convert("RGB")))
                except (OSError, ValueError, SyntaxError) as e:
                    raise _damaged(path, f"it does not decode: {e}") from None
            yield np.stack(out)

    def latent(self, index: int) -> np.ndarray:
        path = self.folder / LATENTS_DIR / f"{index:06d}.npy"
        try:
            return np.load(io.BytesIO(self._bytes(path, index, "npy")), allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise _damaged(path, f"it does not decode: {e}") from None


# --------------------------------------------------------------------------------------------
# Per-sample manifests and recorded files

# the names `sample` writes in a samples folder and in its latents/ folder (their temporaries,
# and only theirs, are ours to remove)
_FOLDER_FILES = re.compile(
    r"\d{6}\.png|samples\.npz|latents\.npy|grid\.png|protocol\.json|\.sample-settings\.json"
    r"|prompts\.txt|adherence\.json|metrics\.json|\.sample\.lock"
)
_LATENT_FILES = re.compile(r"\d{6}\.npy|written-\d{6}-\d{6}\.json")


def _our_temp(name: str, targets: re.Pattern[str]) -> bool:
    """Whether ``name`` is a temporary of one of the files ``targets`` names."""
    parts = temp_parts(name)
    return parts is not None and targets.fullmatch(parts[0]) is not None


def remove_latents_dir(lat_dir: Path) -> None:
    """Delete ``latents/`` (the per-sample latents and manifests `sample` wrote there, now in
    ``latents.npy``) file by file. A path there that `sample` does not write (a name outside
    ``_LATENT_FILES`` and their temporaries, a folder, a link) is refused before anything is
    deleted; a kill midway leaves only files of ours, which the rerun deletes."""
    entries = sorted(lat_dir.iterdir())
    foreign = [
        p
        for p in entries
        if p.is_symlink()
        or not p.is_file()
        or not (_LATENT_FILES.fullmatch(p.name) or _our_temp(p.name, _LATENT_FILES))
    ]
    if foreign:
        raise ConfigError(
            f"{lat_dir} holds files that `repackctl` did not write there: "
            f"{name_items(foreign)}; nothing was deleted",
            f"move them out of {lat_dir}, then run the command again",
        )
    for p in entries:
        p.unlink()
    lat_dir.rmdir()


def _manifest_path(folder: Path, indices: list[int]) -> Path:
    return folder / LATENTS_DIR / f"written-{min(indices):06d}-{max(indices):06d}.json"


def write_samples(folder: Path, samples: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    """Write the per-sample files of ``(index, raw latent, uint8 image)``: each latent, then
    the manifest of the batch (the sha256 of each latent and PNG), then each PNG, the done
    marker. Each write is atomic, so a kill at any instant leaves a PNG only beside its latent
    and its manifest entry; an index without its PNG is simply made again."""
    if not samples:
        return
    npy_sha = {}
    for i, raw, _ in samples:
        write_npy_atomic(folder / LATENTS_DIR / f"{i:06d}.npy", raw)
        npy_sha[i] = sha256_file(folder / LATENTS_DIR / f"{i:06d}.npy")
    write_recorded_pngs(folder, [(i, image) for i, _, image in samples], npy_sha)


def write_recorded_pngs(
    folder: Path,
    images: list[tuple[int, np.ndarray]],
    npy_sha: dict[int, str] | None = None,
    after_png: Callable[[int], None] | None = None,
) -> None:
    """Write the PNGs of ``(index, uint8 (H, W, 3) image)`` after the manifest of the batch
    (``latents/written-<a>-<b>.json``: the sha256 of each PNG, and of each latent in
    ``npy_sha``), so a PNG of an unfinished folder is only taken as done when it still holds
    the bytes written (``unverified_indices``). ``after_png(index)`` runs after each PNG (crash
    tests). `refine apply` writes its refined PNGs through it too (no latents)."""
    from PIL import Image

    if not images:
        return
    entries, pngs = {}, {}
    for i, image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")  # the bytes `write_png_atomic` writes
        pngs[i] = buf.getvalue()
        entries[f"{i:06d}"] = {"png": hashlib.sha256(pngs[i]).hexdigest()}
        if npy_sha is not None:
            entries[f"{i:06d}"]["npy"] = npy_sha[i]
    (folder / LATENTS_DIR).mkdir(exist_ok=True)
    write_json_atomic(_manifest_path(folder, list(pngs)), entries)
    for i, data in pngs.items():
        path = png_path(folder, i)
        tmp = path.with_name(f".{path.name}.{writer_tag()}.tmp")  # ours (claim_folder)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        if after_png is not None:
            after_png(i)


def read_manifests(folder: Path) -> dict[int, list[dict[str, str]]]:
    """index → the manifest entries recorded for it (an unreadable manifest counts as none)."""
    out: dict[int, list[dict[str, str]]] = {}
    lat_dir = folder / LATENTS_DIR
    if not lat_dir.is_dir():
        return out
    for path in sorted(lat_dir.glob("written-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, entry in doc.items() if isinstance(doc, dict) else ():
            if key.isdigit() and isinstance(entry, dict):
                out.setdefault(int(key), []).append(entry)
    return out


def unverified_indices(
    folder: Path, indices: range, kinds: tuple[str, ...] = ("png", "npy")
) -> tuple[list[int], list[Path]]:
    """(indices to make again, the files found damaged among them), for a folder `sample` (or
    `refine apply`, ``kinds=("png",)``: no latents) is still making: an index is done when its
    files of ``kinds`` match a manifest entry."""
    manifest = read_manifests(folder)
    todo, damaged = [], []
    for i in indices:
        files = {"png": png_path(folder, i), "npy": folder / LATENTS_DIR / f"{i:06d}.npy"}
        files = {k: files[k] for k in kinds}
        entries = manifest.get(i)
        if not entries or not all(p.is_file() for p in files.values()):
            todo.append(i)
            continue
        sha = {k: sha256_file(p) for k, p in files.items()}
        if not any(all(e.get(k) == v for k, v in sha.items()) for e in entries):
            todo.append(i)
            damaged += [p for k, p in files.items() if all(e.get(k) != sha[k] for e in entries)]
    return todo, damaged


def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256", "size"}`` of a file, as the card records it."""
    return {"sha256": sha256_file_cached(path), "size": path.stat().st_size}


def file_mismatch(path: Path, recorded: Any) -> str | None:
    """What about ``path`` differs from the card's record of it, or None when it matches (or
    nothing was recorded: folders written before cards recorded their files)."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return None
    if not path.is_file():
        return "it is missing"
    size = path.stat().st_size
    if "size" in recorded and size != recorded["size"]:
        return f"it has {size} bytes, {recorded['size']} were written"
    if sha256_file_cached(path) != recorded["sha256"]:
        return "its sha256 is not the one recorded when it was written"
    return None


def npz_mismatch(npz: Path, recorded: Any) -> str | None:
    """:func:`file_mismatch` of a samples.npz, and where its file record matches, whether its
    pixels give the ``images_sha256`` recorded beside it: that record of the file (sha256, size)
    can be rewritten to name another samples.npz (all-zero images), the digest of the pixels
    `sample` made is what the card vouches for. None: it is the recorded samples (or nothing
    was recorded)."""
    why = file_mismatch(npz, recorded)
    images = recorded.get("images_sha256") if isinstance(recorded, dict) else None
    if why is None and images is not None and npz.is_file() and npz_pixels_sha256(npz) != images:
        why = (
            "its pixels are not the images_sha256 recorded beside its file record: that record "
            "was rewritten to name another file"
        )
    return why


def check_recorded_file(folder: Path, name: str, protocol: dict[str, Any], rebuild: str) -> None:
    """Refuse ``folder/name`` when it is not the file the folder's protocol.json recorded."""
    recorded = (protocol.get("files") or {}).get(name) if isinstance(protocol, dict) else None
    why = file_mismatch(folder / name, recorded)
    if why is not None:
        raise DataError(
            f"{folder / name} is not the {name} that `repackctl sample` recorded in "
            f"{folder / PROTOCOL_JSON} ({why})",
            f"the folder was edited or damaged (or holds another folder's file): {rebuild}",
        )


def is_finished(folder: Path) -> bool:
    """Whether ``sample`` finished ``folder`` before (its card written, its per-sample
    latents assembled and their manifests removed)."""
    return (folder / PROTOCOL_JSON).is_file() and not (folder / LATENTS_DIR).is_dir()


def indices_to_make(folder: Path, mine: range, finished: bool) -> tuple[list[int], list[str]]:
    """(indices of ``mine`` to make, ``Warning:`` lines on the damaged files found).

    A finished folder has no manifests left: its PNGs that are not the recorded samples are
    first rewritten from its verified samples.npz (:func:`restore_pngs`); the PNGs still
    missing after that are made. Otherwise an index is done when its files match the manifest
    written with them (``unverified_indices``). A finished folder whose card is not the one of
    its settings (edited: its cfg_scale, labels, prompts …) is refused first, whatever its
    samples.npz (:func:`check_card_is_the_folders`): the card written at the end would
    otherwise keep the edit or overwrite it unsaid."""
    if finished:
        check_card_is_the_folders(folder)
        restored = restore_pngs(folder, mine)
        todo, notes = missing_indices(folder, mine), [restored] if restored else []
        rec = recorded_files(folder).get(SAMPLES_NPZ)
        if isinstance(rec, dict) and file_mismatch(folder / SAMPLES_NPZ, rec) is None:
            return todo, notes  # restore_pngs rewrote every PNG that does not decode
        broken = undecodable_pngs(folder, mine)
        if broken:
            named = name_items([png_path(folder, i) for i in broken], _NAMED)
            notes.append(
                f"Warning: {len(broken)} PNG(s) of {folder} do not decode ({named}) and its "
                "samples.npz cannot restore them (missing or not the recorded one): they are "
                "made again"
            )
        return sorted({*todo, *broken}), notes
    todo, damaged = unverified_indices(folder, mine)
    return todo, [
        f"Warning: {p} was damaged after it was written: it is made again" for p in damaged
    ]


# how many restored PNGs the warning names
_NAMED = 3


def restore_pngs(folder: Path, mine: range) -> str | None:
    """Rewrite from samples.npz each PNG of ``mine`` whose pixels are not the sample there
    (other pixels, does not decode, missing); a ``Warning:`` line naming them, or None.

    Only for a finished folder whose card records ``images_sha256``, whose samples.npz is the
    recorded file and whose pixels give that digest: the card's file record can be rewritten to
    name another samples.npz (all-zero images, say), and restoring from it would overwrite the
    good PNGs. Otherwise nothing is rewritten (``reopen_finished`` then rebuilds samples.npz
    from the PNGs, or refuses). A card that is not the one of the folder's settings is refused
    before anything is rewritten.
    """
    from repackctl.metrics.adm import iter_npz_images

    npz, rec = folder / SAMPLES_NPZ, recorded_files(folder).get(SAMPLES_NPZ)
    if not isinstance(rec, dict) or rec.get("images_sha256") is None:
        return None
    if file_mismatch(npz, rec) is not None:
        return None
    check_card_is_the_folders(folder)
    digest, index, todo = hashlib.sha256(), 0, []
    for batch in hash_pixels(iter_npz_images(npz), digest):  # (b, H, W, 3); all of them
        for image in batch:
            why = _png_differs(png_path(folder, index), image) if index in mine else None
            if why is not None:
                todo.append((index, why))
            index += 1
    if not todo or digest.hexdigest() != rec["images_sha256"]:
        return None  # nothing to restore, or not from this samples.npz (``reopen_finished``)
    _rewrite_pngs(folder, npz, dict(todo))
    fixed = [f"{png_path(folder, i).name}: {why}" for i, why in todo]
    more = " …" if len(fixed) > _NAMED else ""
    return (
        f"Warning: {len(fixed)} PNG{'s' if len(fixed) > 1 else ''} of {folder} did not hold the "
        f"samples recorded in {PROTOCOL_JSON} ({'; '.join(fixed[:_NAMED])}{more}): rewritten "
        f"from its {SAMPLES_NPZ}"
    )


def _rewrite_pngs(folder: Path, npz: Path, indices: dict[int, str]) -> None:
    """Write the PNGs ``indices`` of ``folder`` from the images of ``npz`` (checked to be the
    recorded samples just before), with the bytes `sample` writes."""
    from repackctl.metrics.adm import iter_npz_images

    index, last = 0, max(indices)
    batches = iter_npz_images(npz)
    try:
        for batch in batches:  # (b, H, W, 3)
            for image in batch:
                if index in indices:
                    write_png_atomic(png_path(folder, index), image)
                index += 1
            if index > last:
                break
    finally:
        batches.close()


def _png_differs(path: Path, image: np.ndarray) -> str | None:
    """Why the PNG at ``path`` is not the uint8 (H, W, 3) ``image``, or None when it is."""
    if not path.is_file():
        return "missing"
    try:
        pixels = read_png(path)
    except (OSError, ValueError, SyntaxError):
        return "does not decode"
    return None if np.array_equal(pixels, image) else "other pixels"


# (card field, settings-file field) that record the same setting, compared as they are
_CARD_SETTINGS = (
    ("checkpoint_sha256", "checkpoint_sha256"),
    ("weights", "weights"),
    ("seed", "seed"),
    ("num_samples", "num"),
    ("sampler_spec", "sampler"),
    ("precision", "precision"),
    ("guide", "guide"),
)
# card fields that repeat a part of the settings file's ``sampler`` / ``cfg``: (card field,
# settings-file field, the part of it)
_CARD_PARTS = (
    ("steps", "sampler", "steps"),
    ("shift", "sampler", "shift"),
    ("cfg_scale", "cfg", 0),
    ("cfg_interval", "cfg", slice(1, 3)),
    ("cfg_legacy_channels", "cfg", 3),  # class-conditional folders record it, t2i ones do not
)
# how far past its largest label the class count K of a card's ``random`` labels is looked for
# (``make_labels``; K is recorded nowhere in the folder): at most this many labels drawn and
# class counts tried. N labels of K classes miss the top g classes with a chance of
# (1 − g/K)^N: nil within these bounds, but for a few samples of 10 000s of classes
_RANDOM_TRIES, _RANDOM_MOST = 10**7, 2_000  # labels drawn, class counts tried


def card_differences(card: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The card fields whose value is not the one the folder's settings file records (the
    settings that fix the images: checkpoint, seed, count, sampler, guidance, labels, prompts,
    refiner, precision). Fields either side does not record (older versions, folders of
    `refine apply`, which records fewer) are not compared."""
    differ = [
        k for k, s in _CARD_SETTINGS if k in card and s in settings and card[k] != settings[s]
    ]
    for key, source, part in _CARD_PARTS:
        value = settings.get(source)
        if source == "cfg" and key != "cfg_scale" and _unguided(value):
            continue  # at scale 1 no interval or channels apply (``settings_diff``)
        try:
            recorded = list(value[part]) if isinstance(part, slice) else value[part]
        except (TypeError, KeyError, IndexError):
            continue  # not recorded there (an older settings file)
        if key in card and card[key] != recorded:
            differ.append(key)
    if "refiner" in card and "refiner" in settings:
        refiner = card["refiner"]
        sha = refiner.get("sha256") if isinstance(refiner, dict) else refiner
        if (refiner is None or isinstance(refiner, dict)) and sha != settings["refiner"]:
            differ.append("refiner")  # a path only (older t2i cards): not compared
    differ += _label_differences(card, settings)
    if "prompts_sha256" in settings and "prompts" in card:
        if _card_prompts_sha256(card) != settings["prompts_sha256"]:
            differ.append("prompts")
    return differ


def prompts_sha256(per_sample: list[str]) -> str:
    """The digest of a text-to-image folder's prompts, one per sample, that `sample` records in
    its settings file (``sample.t2i``) and every reader compares the card's prompts with."""
    return hashlib.sha256(json.dumps(per_sample, ensure_ascii=False).encode()).hexdigest()


def _card_prompts_sha256(card: dict[str, Any]) -> str | None:
    """:func:`prompts_sha256` of the card's per-sample prompts; None when they do not
    resolve."""
    try:
        per_sample = [card["prompts"][int(k)] for k in card["prompt_ids"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return prompts_sha256(per_sample)


def _label_differences(card: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``label_scheme`` / ``labels`` when the card's are not those of the scheme the settings
    file records (``--labels``: balanced, random or class ids; ``make_labels``)."""
    from repackctl.sample.plan import canonical_labels, label_scheme_name

    try:
        scheme = canonical_labels(settings["labels"])
    except (KeyError, AttributeError, ConfigError):
        return []  # none recorded (t2i, `refine apply`) or not a scheme: claim_folder's
    differ = []
    if "label_scheme" in card and card["label_scheme"] != label_scheme_name(scheme):
        differ.append("label_scheme")
    num, seed = settings.get("num"), settings.get("seed")
    if "labels" in card and isinstance(num, int) and isinstance(seed, int):
        if not _labels_of_scheme(card["labels"], scheme, num, seed):
            differ.append("labels")
    return differ


def _labels_of_scheme(labels: Any, scheme: str, num: int, seed: int) -> bool:
    """Whether ``labels`` are ``make_labels(num, K, scheme, seed)`` for some class count K,
    tried from one past the largest label (:func:`_class_counts`)."""
    if not isinstance(labels, list) or len(labels) != num or num < 1:
        return False
    if not all(type(c) is int and c >= 0 for c in labels):
        return False
    got = np.asarray(labels, dtype=np.int64)
    for classes in _class_counts(scheme, int(got.max()), num):
        try:
            if np.array_equal(make_labels(num, classes, scheme, seed), got):
                return True
        except ConfigError:  # class ids the scheme names outside 0..K-1: not this scheme's
            return False
    return False


def _class_counts(scheme: str, top: int, num: int) -> range:
    """The class counts K that can have made N = ``num`` labels of ``scheme`` whose largest is
    ``top``: ``balanced`` (N·i/K) ends at K − ceil(K/N), so K ≤ 2·top + 2; ``random``, up to
    ``_RANDOM_MOST`` past it (at most ``_RANDOM_TRIES`` labels drawn); class ids, one past the
    largest id they name (their labels do not depend on K)."""
    if scheme == "balanced":
        return range(top + 1, 2 * top + 3)
    if scheme == "random":
        return range(top + 1, top + 2 + min(_RANDOM_TRIES // num, _RANDOM_MOST))
    least = max(top, *label_classes(scheme)) + 1
    return range(least, least + 1)


def check_card_is_the_folders(folder: Path) -> None:
    """Refuse a card whose settings (checkpoint, seed, count, sampler, guidance, labels,
    prompts, refiner, precision: :func:`card_differences`) are not those the folder's settings
    file records: the card was edited, or copied from another folder with its files, and every
    reader takes the card's word for what the images are (`evaluate` records it beside the
    score, `sample` and `refine apply` go on from it). One rule for all of them; a folder
    without a readable card or settings file (older versions, folders `sample` did not write)
    is left to its readers."""
    try:
        card = json.loads((folder / PROTOCOL_JSON).read_text())
        settings = json.loads((folder / SETTINGS_JSON).read_text())
    except (OSError, ValueError):
        return  # recorded_files read the card; the settings file was read by claim_folder
    card = protocol_card(card)  # the card itself, or its ``protocol`` object
    if card is None or not isinstance(settings, dict):
        return
    differ = card_differences(card, settings)
    if differ:
        raise DataError(
            f"{folder / PROTOCOL_JSON} is not the card of the samples of {folder} (fields "
            f"that differ from the folder's {SETTINGS_JSON}: {', '.join(differ)}): it was "
            f"edited, or copied from another folder with the files it records ({SAMPLES_NPZ}, "
            f"{LATENTS_FILE}); nothing in the folder was changed",
            card_repair_hint(folder),
        )


def card_repair_hint(folder: Path) -> str:
    """How to write a samples folder's card again when it is damaged, removed or edited: its
    settings file still says what the images are. `sample` rewrites the card of a folder it
    made (with ``--out`` the command lands on this folder; a folder it does not take as
    finished is checked file by file, and what does not match is made again); `refine apply`
    refines a folder of its own again. A folder without a settings file was not written by
    `repackctl`: it has nothing to write the card from."""
    settings = read_json_dict(folder / SETTINGS_JSON)
    if settings is None:
        return "the samples folder is damaged: sample again into a new folder (--out)"
    if "source_sha256" in settings:  # written by `refine apply`
        return f"move {folder} away and run the same `repackctl refine apply` command again"
    remove = f"remove {folder / PROTOCOL_JSON}, then " if (folder / PROTOCOL_JSON).exists() else ""
    return (
        f"{remove}run the same `repackctl sample` command with --out {folder} (it writes "
        f"{PROTOCOL_JSON} again), or sample again into a new folder (--out)"
    )


def edited_images_record(
    folder: Path, num: int, card: dict[str, Any], pixels: str
) -> DataError | None:
    """The refusal of a card whose ``images_sha256`` alone is wrong, or None: ``pixels`` (the
    digest of one copy of the samples that did not give it, samples.npz or the PNGs) is also
    the other copy's, and samples.npz is the file the card's record names (sha256, size).
    Every sample file then agrees with the others and with that record: the card's digest
    was edited (or every file was replaced, record and all), and blaming samples.npz or the
    PNGs sent the user to rebuild one from the other, which the same digest refused again.
    Only the error path reads the second copy."""
    from repackctl.metrics.frechet import NPZ_READ_ERRORS

    files = card.get("files")
    rec = files.get(SAMPLES_NPZ) if isinstance(files, dict) else None
    npz = folder / SAMPLES_NPZ
    if not isinstance(rec, dict) or not npz.is_file() or file_mismatch(npz, rec) is not None:
        return None
    try:
        same = npz_pixels_sha256(npz) == pixels and pngs_digest(folder, num) == pixels
    except (DataError, OSError, ValueError, KeyError, *NPZ_READ_ERRORS):
        return None  # a copy does not read: the files disagree, the card may be right
    if not same:
        return None
    return DataError(
        f"{folder / PROTOCOL_JSON} records images_sha256 {rec.get('images_sha256')}, but "
        f"{npz} (the file its sha256 and size name) and the PNGs 000000.png … {num - 1:06d}.png "
        f"hold the same images, whose digest is {pixels}: the card's images_sha256 was edited "
        "(the sample files agree with each other); nothing in the folder was changed",
        card_repair_hint(folder),
    )


def verify_recorded_pngs(folder: Path, num: int, card: dict[str, Any]) -> bool:
    """Refuse ``000000.png …`` (``num`` of them) when their pixels do not give the digest
    `sample` recorded (``files.samples.npz.images_sha256``); whether they were checked (False:
    cards of older versions, or of folders `sample` did not write, record none).

    Shared by every reader that scores a folder's PNGs (`evaluate fid` without samples.npz,
    `evaluate adherence`)."""
    files = card.get("files") if isinstance(card, dict) else None
    rec = (files.get(SAMPLES_NPZ) if isinstance(files, dict) else None) or {}
    recorded = rec.get("images_sha256") if isinstance(rec, dict) else None
    if recorded is None:
        return False
    digest = None
    try:
        digest = pngs_digest(folder, num)
        why = None if digest == recorded else "one was edited, damaged or swapped"
    except DataError as e:  # one does not decode, or cannot be read
        why = e.message
    if why is None:
        return True
    edited = None if digest is None else edited_images_record(folder, num, card, digest)
    if edited is not None:
        raise edited
    if card.get("refined_from"):
        again = f"move {folder} away and run the same `repackctl refine apply` command again"
    else:
        again = (
            f"run the same `repackctl sample` command with --out {folder} to restore them from "
            f"its {SAMPLES_NPZ} (put that back first if it was moved)"
        )
    raise DataError(
        f"the images 000000.png … {num - 1:06d}.png of {folder} are not the samples `repackctl "
        f"sample` recorded in {folder / PROTOCOL_JSON} (images_sha256): {why}",
        f"{again}, or sample again into a new folder (--out), then evaluate that",
    )


def latents_hint(card: dict[str, Any] | None, folder: Path | None = None) -> str:
    """What to do about a damaged latents.npy of a samples folder (its ``card``): `refine
    apply` recomputes the latents of a class-conditional folder from its DiT once the file is
    moved away, but not those of a text-to-image or autoguided folder (``_check_regenerable``
    refuses them): their refined images come from sampling again with the refiner. ``folder``:
    given by `sample --out` (``reopen_finished``), which keeps the images once the file is
    moved away; None: `refine apply`, which must have the latents."""
    card = card or {}
    if not (card.get("stage") == "t2i" or card.get("guide")):
        return (
            "move latents.npy out of the folder (`refine apply` then recomputes the latents from "
            "the DiT that made the samples), or sample again into a new folder (--out)"
        )
    kind = "a text-to-image" if card.get("stage") == "t2i" else "an autoguided"
    refine = (
        f"the latents of {kind} folder cannot be recomputed: to refine its samples, sample "
        "them again with the refiner (the same `repackctl sample` command with --refiner RUN)"
    )
    if folder is None:
        return f"{refine}, or sample again into a new folder (--out)"
    return (
        f"move latents.npy out of the folder and run the same `repackctl sample` command with "
        f"--out {folder} (it keeps the images and writes {PROTOCOL_JSON} without the file), or "
        f"sample again into a new folder (--out); {refine}"
    )


def recorded_files(folder: Path) -> dict[str, Any]:
    """The ``files`` a finished folder's card recorded ({} when none, or unreadable)."""
    try:
        files = json.loads((folder / PROTOCOL_JSON).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def reopen_finished(folder: Path, labels: np.ndarray, grid: int) -> tuple[tuple, dict]:
    """A finished folder sampled again: keep samples.npz and latents.npy when they are the
    recorded ones (its PNGs were restored from that samples.npz before: ``restore_pngs``),
    rebuild a damaged samples.npz from the PNGs when their pixels are the recorded ones;
    refuse a latents.npy that is not (its per-sample files are gone).
    Returns (image shape, the card's ``files``)."""
    recorded = recorded_files(folder)
    files: dict[str, Any] = {}
    if (folder / LATENTS_DIR).is_dir():  # made by this call for PNGs deleted since: not needed
        remove_latents_dir(folder / LATENTS_DIR)
    lat = folder / LATENTS_FILE
    if lat.is_file():
        why = file_mismatch(lat, recorded.get(LATENTS_FILE))
        if why is not None:
            raise DataError(
                f"{lat} is not the latents.npy that `repackctl sample` recorded in "
                f"{folder / PROTOCOL_JSON} ({why})",
                "the folder was edited or damaged; its per-sample latents are gone, so it "
                "cannot be rebuilt: "
                + latents_hint(read_json_dict(folder / PROTOCOL_JSON), folder),
            )
        files[LATENTS_FILE] = file_record(lat)
    npz, rec = folder / SAMPLES_NPZ, recorded.get(SAMPLES_NPZ) or {}
    images = rec.get("images_sha256")
    why = npz_mismatch(npz, rec) if images is not None else "no digest recorded"
    if why is None:
        files[SAMPLES_NPZ] = rec
    else:
        if images is not None and pngs_digest(folder, len(labels)) != images:
            raise DataError(
                f"{npz} does not match {folder / PROTOCOL_JSON} ({why}), and the PNGs of the "
                "folder do not hold the recorded samples either: it cannot be rebuilt; "
                "nothing was rewritten",
                "the folder was edited or damaged: sample again into a new folder (--out)",
            )
        files[SAMPLES_NPZ] = write_npz_recorded(folder, labels)  # rebuilt from the PNGs
    # in the order `assemble_recorded` wrote them: the card comes out byte for byte the same
    files = {name: files[name] for name in (SAMPLES_NPZ, LATENTS_FILE) if name in files}
    return write_grid(folder, len(labels), grid), files


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
            name += refined_suffix(refiner_label(self.refiner))
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
    if not isinstance(recorded, dict):
        return new
    recorded = {k: v for k, v in recorded.items() if k not in MACHINE_KEYS}  # not the name's
    return old if not settings_diff(recorded, fingerprint) else new


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


def refiner_label(ref: str) -> str:
    """The refiner ``--refiner`` names, as samples folders name it: its run (``refine-a``), and
    the checkpoint where one is named (``runs/refine-a/checkpoints/step-0000300`` →
    ``refine-a-step-0000300``). The checkpoint's name alone put two runs' step-N in one folder
    (the second refused), and a run's name alone two of its checkpoints."""
    path = Path(ref)
    if re.fullmatch(r"step-\d{7}", path.name) and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}-{path.name}"
    return path.name


#: card fields that say which call made the samples (its machine, precision source, package
#: versions and git revision): a rerun that finds the folder finished (and makes no new samples)
#: keeps those of the call that made them (``kept_provenance``)
_PROVENANCE = ("run_header", "versions", "git_revision")


def kept_provenance(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """``card`` (this call's, for a folder that was finished before it) with the provenance
    fields of the card the folder holds: its samples are those recorded there (checked against
    its ``files``), made by that call, not by this one. A field that card does not record
    (older versions, an unreadable card) is left out rather than credited to this call. The
    other fields keep their order, so a rerun on the same machine writes the same bytes."""
    old = read_json_dict(folder / PROTOCOL_JSON) or {}
    return {
        k: old[k] if k in _PROVENANCE else v
        for k, v in card.items()
        if k not in _PROVENANCE or k in old
    }


#: the most samples a folder holds: sample i is ``{i:06d}.png`` (and ``latents/{i:06d}.npy``),
#: the names ``_FOLDER_FILES`` / ``_LATENT_FILES`` know; index 1000000 would have seven digits
MAX_SAMPLES = 1_000_000


def check_num(num: int) -> None:
    """Refuse, before anything is loaded or written, more samples than a folder's names hold
    (they were all generated, then the assembly refused the seven-digit names)."""
    if num > MAX_SAMPLES:
        raise ConfigError(
            f"--num {num} is more samples than a samples folder holds: at most {MAX_SAMPLES} "
            f"(their files are named 000000.png … {MAX_SAMPLES - 1:06d}.png); nothing was "
            "written",
            f"pass --num {MAX_SAMPLES} or fewer (the published FID protocol uses 50000)",
        )


def plan_fields(plan: GenerationPlan) -> dict[str, Any]:
    """The card fields of a generation plan's guidance (scale, interval, channels) and time
    shift, in the card's order: what ``generation_card`` records, and what `sample --refiner`
    compares with the card of a `refine apply` folder (with ``sampler_spec``)."""
    return {
        "cfg_scale": plan.cfg,
        "cfg_interval": [plan.t_lo, plan.t_hi],
        "cfg_legacy_channels": plan.legacy_channels,
        "shift": plan.spec.shift,
    }


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
        **plan_fields(plan),
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
