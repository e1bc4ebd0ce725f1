"""Apply a trained Latent-Guided Refiner: load it safely, refine a batch, refine a samples folder.

Follows guanfangdong/RePack-then-Refine ``stage3/refine_batch.py`` (decoded PNG ⊕ latent →
refined PNG) with its latent-scale defect fixed (``reference/methods.md``): the official refiner was
trained on raw packed latents and then given *normalised* DiT latents. Here a refiner checkpoint
records ``latent_convention`` in its metadata, ``load_refiner`` refuses anything but ``"raw"``,
and every caller hands it raw latents (``repackctl.sample.run`` de-normalises with the DiT
checkpoint's stats and stores the raw latents in ``latents.npy``).

The decoded image enters the refiner the way the triplets stored it: quantised to uint8 and
mapped back to [−1, 1]. So ``sample --refiner R`` and ``sample`` followed by
``refine apply --refiner R`` give the same PNGs, in the same folder name: each recognises the
other's folder of the same samples as its own result (``_refined_by_sample``,
``refined_by_apply``) and refuses one of other samples by what differs. Before answering
"already done" there, a PNG lost from that folder is rewritten from its recorded samples.npz,
or refused by name when it cannot be (``_restore_finished``).

Latents recomputed from the DiT (a folder without latents.npy) are computed in the batches and,
on the CPU, with the thread count the samples folder records (``_Regenerator``): those are the
latents that made its images, not ~1e-6 off them.

A refined folder is tied to the *content* of the samples it refines (``SamplesSource.digest``:
the arrays of samples.npz and the raw latents), never to the source's path or to a few settings:
samples made again with other labels, shift, guidance … in the same folder are never answered
with the old refined images. A refined folder of other samples is refused by name, and nothing in
it is changed. The images refined are read from that same samples.npz (held open from the digest
to the last batch), never from the source's PNGs: an edited PNG is not refined under the digest
of the original.

A refined folder is refined in one batch size (its settings file records ``batch_size``): the
refiner's pixels differ by ±1/255 between batch sizes, so an unfinished folder resumed with
another is refused by name; a finished one keeps its own for whatever it refines again.

A refined folder is refined on one device type (``device_type``, as `sample` records it): one
started on another is refused by name, and latents are recomputed only on the device type the
samples were made on. Its grid.png shows as many images as the source folder's (its card's
``grid``), or ``--grid``.

A refiner refines only what it was trained for: samples of another image side or latent grid
are refused before anything is written (``RefinerHandle.check_fits``).

Under several processes each refines its own share; the counts ``run_refine_apply`` returns (and
the CLI prints) are summed over the processes, so they are the job's, not rank 0's share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from repackctl.crash import crash_point
from repackctl.errors import ConfigError, DataError, RepackError
from repackctl.files import read_json_object, sha256_file, write_json_atomic
from repackctl.metrics.adm import IMAGES_KEY
from repackctl.paths import PROTOCOL_JSON, SAMPLES_NPZ, SETTINGS_JSON, run_root_of
from repackctl.progress import ProgressFactory, null_progress, warn
from repackctl.refine.load import LATENT_CONVENTION, RefinerHandle, load_refiner
from repackctl.run_files import card_refiner_sha, read_json_dict
from repackctl.run_lock import released_after
from repackctl.runtime import DistInfo, header_line, resolve_device, run_header
from repackctl.sample.folder import (
    BATCH_KEY,
    DEVICE_KEY,
    GRID_KEY,
    GRID_PNG,
    LATENTS_DIR,
    LATENTS_FILE,
    MACHINE_KEYS,
    WORLD_KEY,
    assemble_recorded,
    batching_record,
    card_repair_hint,
    check_card_is_the_folders,
    check_device,
    claim_folder,
    cpu_threads,
    device_type,
    edited_images_record,
    file_mismatch,
    is_finished,
    job_batches,
    latents_hint,
    lock_waiting,
    missing_indices,
    npz_mismatch,
    npz_pixels_sha256,
    owned_range,
    pixels_sha256,
    png_path,
    recorded_batching,
    recorded_device,
    recorded_files,
    refined_suffix,
    refiner_label,
    remove_latents_dir,
    restore_pngs,
    sampling_threads,
    torch_threads,
    undecodable_pngs,
    unverified_indices,
    verify_recorded_pngs,
    write_grid,
    write_recorded_pngs,
)
from repackctl.settings import Settings

# crash tests only (``repackctl.crash.crash_point``): exit as a kill would once refined PNG i is
# written (``refine-apply-png-<i>``), or once samples.npz is written but not the card
CRASH_AFTER_PNG = "refine-apply-png-"
CRASH_AFTER_NPZ = "refine-apply-npz"
# …and once `regrid_finished` drew grid.png again, before the card records its count
CRASH_AFTER_REGRID = "regrid-finished-grid"
# the keys of the settings file of a folder written by `refine apply` (``source`` in older ones)
# (``batch_size``: the batch size its images are refined in, recorded since the refiner's pixels
# were found to differ by ±1/255 between batch sizes, ``world_size``: the number of processes
# whose shares those batches were cut from, and ``device_type``: the device type it is refined
# on; folders started before lack them)
# (``checkpoint_sha256`` and ``weights``: the DiT weights that made the samples refined, copied
# from their card, so that an unfinished refined folder names the run checkpoint its images
# come from as `sample`'s own folders do; folders started before lack them)
_SOURCE_WEIGHTS_KEYS = ("checkpoint_sha256", "weights")
_APPLY_KEYS = frozenset(
    {"source", "source_sha256", "refiner", "num", *MACHINE_KEYS, *_SOURCE_WEIGHTS_KEYS}
)
# the card field that records who refined the samples (the refining call's run header, package
# versions and git revision); the card's own ``run_header``, ``versions`` and ``git_revision``
# are the source's: how the samples were generated
REFINED_BY = "refined_by"
# card fields that fix the generated samples: named when a refined folder holds other samples
_GENERATION_KEYS = (
    "checkpoint_sha256",
    "weights",
    "seed",
    "sampler_spec",
    "shift",
    "cfg_scale",
    "cfg_interval",
    "cfg_legacy_channels",
    "guide",
    "labels",
    "num_samples",
    "precision",
    # text-to-image cards: the prompts each sample got and the text features they were encoded
    # as (class-conditional cards record none of these)
    "prompts",
    "prompt_ids",
    "text",
)


@dataclass
class ApplyResult:
    """What ``run_refine_apply`` did."""

    out_dir: Path
    num: int
    written: int
    already_done: int
    latents_source: str
    seconds: float


class _Regenerator:
    """Raw latents of a samples folder without latents.npy, recomputed from the DiT its protocol
    names (the same weights, plan, labels, seed and precision). The DiT is loaded and checked
    once, by :meth:`load`, which ``run_refine_apply`` calls before it claims the refined folder:
    a DiT that is gone or changed is refused with nothing written (refused at the first batch,
    it left a claimed folder that a later run called one of "other refined images")."""

    def __init__(self, src: Path, protocol: dict[str, Any], runs: str, device: torch.device):
        _check_regenerable(src, protocol)
        self.protocol, self.runs, self.device = protocol, runs, device
        self._loaded: tuple[Any, Any, Any, np.ndarray] | None = None
        # the batching and CPU threads the samples were made in (the source's settings file):
        # latents round by batch shape (~1e-6) and thread count, so the latents recomputed in
        # the refiner's batches, with the refined folder's threads, were not those of the images
        recorded = read_json_dict(src / SETTINGS_JSON) or {}
        made = recorded_batching(recorded)
        self._batching = (made.get(BATCH_KEY), made.get(WORLD_KEY, 1))
        self._threads = sampling_threads(made, device)
        # and the device type they were made on (CPU and CUDA kernels round differently)
        self.src, self._made_on = src, recorded_device(recorded).get(DEVICE_KEY)
        self._made: dict[int, Tensor] = {}  # latents of source batches met, by sample index

    def load(self) -> None:
        """Load the DiT (refused unless it is the one that made the samples) and its sampler."""
        from repackctl.dit.load import load_dit_for_sampling
        from repackctl.runtime import check_precision
        from repackctl.sample.generate import guided_velocity, model_velocity
        from repackctl.sample.plan import plan_from_protocol

        if self._loaded is not None:
            return
        protocol, device = self.protocol, self.device
        _check_regeneration_device(self.src, self._made_on, device)
        dit = load_dit_for_sampling(self.runs, protocol["checkpoint"], None, protocol["weights"])
        if dit.sha256 != protocol["checkpoint_sha256"]:
            raise DataError(
                f"{protocol['checkpoint']} changed since the samples were made",
                "sample again, or keep latents.npy beside the samples",
            )
        plan = plan_from_protocol(protocol)
        # the precision the samples were made in, so the latents are those that made the images
        precision = protocol.get("precision", "fp32")
        check_precision(precision, device, "the regenerated latents")
        fn = model_velocity(dit.model.to(device).eval(), dit.extra, precision)
        velocity = guided_velocity(fn, plan, int(dit.extra["num_classes"]), None)
        labels = np.asarray(protocol["labels"], dtype=np.int64)
        self._loaded = (velocity, plan, dit.extra, labels)

    def __call__(self, indices: list[int]) -> Tensor:
        """Raw latents (B, d, h, w) of the samples ``indices``, each computed in its batch of the
        job that made the samples (``job_batches`` of the recorded batch and world size), with
        the thread count it recorded on the CPU; a folder that records no batching (older
        versions) is recomputed in ``indices`` as given."""
        from repackctl.sample.generate import generate_raw_latents

        self.load()
        velocity, plan, extra, labels = self._loaded  # type: ignore[misc]
        seed, (batch, world) = int(self.protocol["seed"]), self._batching
        num = int(self.protocol["num_samples"])
        wanted = set(indices)
        made = {i: t for i, t in self._made.items() if i in wanted}  # the batch met last time
        todo = [indices] if batch is None else job_batches(num, world, wanted - set(made), batch)
        with torch.no_grad(), torch_threads(self._threads):
            for idx in todo:
                raw = generate_raw_latents(velocity, plan, extra, labels, seed, idx, self.device)
                made.update(zip(idx, raw, strict=True))  # (d, h, w) each
        self._made = made  # kept for the next call: a source batch may straddle two
        return torch.stack([made[i] for i in indices])


def _check_regeneration_device(src: Path, made: str | None, device: torch.device) -> None:
    """Refuse to recompute the latents of ``src`` on ``device`` when its samples were made on
    another device type (``made``, its settings' ``device_type``; None: not recorded, as
    before): CPU and CUDA kernels round differently, so the latents recomputed are not those
    that made its images (~1e-6 off), and the refined images not those of its samples."""
    now = device_type(device)
    if made is None or made == now:
        return
    raise DataError(
        f"{src} has no latents.npy and its samples were made on {made}: latents recomputed on "
        f"{now} round differently (~1e-6), so they are not the latents that made its images",
        f"pass --device {made} to recompute them there, or put its latents.npy back; nothing "
        "was written",
    )


def _check_regenerable(src: Path, protocol: dict[str, Any]) -> None:
    """Refuse, before anything is written, a folder without latents.npy whose latents
    ``_Regenerator`` cannot recompute: made with autoguidance, or by a text-to-image run (its
    latents come from prompts through the run's text encoder, not from class labels)."""
    if protocol.get("guide"):
        why = "was made with autoguidance"
    elif protocol.get("stage") == "t2i":
        why = "was made by a text-to-image run (only class-conditional latents are recomputed)"
    else:
        return
    raise DataError(
        f"{src} has no latents.npy and {why}: its latents cannot be recomputed",
        "put its latents.npy back, or sample it again with the refiner: "
        "`repackctl sample ... --refiner RUN`",
    )


def _sample_ids(src: Path, protocol: dict[str, Any]) -> np.ndarray:
    """(N,) what the folder's samples.npz holds beside the images (``arr_1``): the class label
    of each sample, or for a text-to-image folder its prompt id (``prompt_ids``: text-to-image
    cards record no ``labels``). Checked before anything is written."""
    key = "prompt_ids" if protocol.get("stage") == "t2i" else "labels"
    ids, num = protocol.get(key), int(protocol["num_samples"])
    try:
        out = np.asarray(ids, dtype=np.int64)
    except (TypeError, ValueError):
        out = np.zeros(0, np.int64)
    if not isinstance(ids, list) or out.shape != (num,):
        raise DataError(
            f"{src / PROTOCOL_JSON} records no {key} of its {num} samples",
            card_repair_hint(src),
        )
    return out


_NPZ_HINT = (
    "run the same `repackctl sample` command with --out {src} to rebuild samples.npz from its "
    "PNGs, or sample again into a new folder"
)


def _unreadable(path: Path, why: object) -> DataError:
    return DataError(
        f"{path} is not a readable samples file ({why})",
        "finish the folder with the same `repackctl sample` command",
    )


def _hash_npz_members(zf: zipfile.ZipFile, where: Path, h: Any) -> None:
    """Feed the names, sizes and bytes of the arrays of the samples zip ``zf`` to the hash ``h``."""
    try:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.file_size}\0".encode())
            with zf.open(info) as f:
                while block := f.read(1 << 24):
                    h.update(block)
    except (zipfile.BadZipFile, OSError, zlib.error) as e:
        raise _unreadable(where, e) from None


def _latents_sha(folder: Path) -> str | None:
    """sha256 of the folder's latents.npy, or None when it has none."""
    path = folder / LATENTS_FILE
    return sha256_file(path) if path.is_file() else None


def _digest(zf: zipfile.ZipFile, where: Path, latents_sha: str | None) -> str:
    h = hashlib.sha256(b"samples.npz\0")
    _hash_npz_members(zf, where, h)
    h.update(f"\0latents.npy\0{latents_sha or 'none'}".encode())
    return h.hexdigest()


def _read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the ``.npy`` stream ``f``, left at its first data byte."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class SamplesSource:
    """samples.npz and latents.npy of a samples folder, each opened once, read-only.

    The digest, the images and the latents handed to the refiner are all read from the same open
    files: what is refined is exactly what :meth:`digest` covers. PNGs edited after `sample`
    wrote samples.npz are never read, nor is a file replaced meanwhile (an atomic rename leaves
    the open one as it was)."""

    def __init__(self, src: Path, protocol: dict[str, Any]) -> None:
        self.src, self.num = src, int(protocol["num_samples"])
        self.latent_shape = [int(s) for s in protocol.get("latent_shape") or ()]
        if len(self.latent_shape) != 3:
            raise DataError(
                f"{src / PROTOCOL_JSON} records no latent_shape",
                card_repair_hint(src),
            )
        self._files = contextlib.ExitStack()
        self._latents_file: BinaryIO | None = None
        self._latents_sha: str | None = None
        self._recorded = protocol.get("files") or {}
        self._latents_hint = latents_hint(protocol)  # t2i latents are never recomputed
        try:
            self._zip = self._open_npz(src / "samples.npz")
            self.latents = self._open_latents(src / LATENTS_FILE)
        except BaseException:
            self._files.close()
            raise

    def __enter__(self) -> SamplesSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._files.close()

    def _open_npz(self, path: Path) -> zipfile.ZipFile:
        """Open the zip, check ``arr_0`` is uint8 (num, H, W, 3) and keep a reader on it."""
        if not path.is_file():
            raise DataError(
                f"{self.src} has no samples.npz",
                "finish it with the same `repackctl sample` command",
            )
        handle = self._files.enter_context(path.open("rb"))
        self._check_recorded(handle, path, SAMPLES_NPZ)
        try:
            zf = self._files.enter_context(zipfile.ZipFile(handle))
            self._images = self._files.enter_context(zf.open(f"{IMAGES_KEY}.npy"))
            shape, fortran, dtype = _read_npy_header(self._images)
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, zlib.error) as e:
            raise _unreadable(path, e) from None
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[0] != self.num or shape[3] != 3:
            raise _unreadable(
                path, f"{IMAGES_KEY} is {dtype} {shape}, not uint8 ({self.num}, H, W, 3)"
            )
        self.image_shape: tuple[int, ...] = tuple(shape[1:])  # (H, W, 3)
        self._data_start = self._images.tell()
        self._check_pixels(path)
        return zf

    def _check_pixels(self, path: Path) -> None:
        """Refuse the open samples.npz when its pixels do not give the ``images_sha256`` the
        card records (checked after its file record, :meth:`_check_recorded`): that record can
        be rewritten to name another file (all-zero images), and refining it would vouch for
        pixels `sample` never made. Cards of older versions record no digest: not checked."""
        recorded = self._recorded.get(SAMPLES_NPZ)
        images = recorded.get("images_sha256") if isinstance(recorded, dict) else None
        if images is None:
            return
        batch = 256

        def batches() -> Iterator[np.ndarray]:  # (b, H, W, 3), from the open file
            for start in range(0, self.num, batch):
                yield self.images(list(range(start, min(start + batch, self.num))))

        digest = pixels_sha256(batches())
        self._images.seek(self._data_start)
        if digest != images:
            raise DataError(
                f"{path} is not the samples that `repackctl sample` recorded in "
                f"{self.src / PROTOCOL_JSON}: its pixels do not give the recorded images_sha256 "
                f"(the record of the file was rewritten to name another one); nothing was "
                f"refined",
                "the folder was edited or damaged: " + _NPZ_HINT.format(src=self.src),
            )

    def _open_latents(self, path: Path) -> np.ndarray | None:
        """The stored raw latents (memory-mapped), or None when they must be regenerated."""
        if not path.is_file():
            return None
        self._latents_file = self._files.enter_context(path.open("rb"))
        self._latents_sha = self._check_recorded(self._latents_file, path, LATENTS_FILE)
        try:
            shape, fortran, dtype = _read_npy_header(self._latents_file)
        except ValueError as e:
            raise DataError(
                f"{path} is not a readable .npy file ({e})", self._latents_hint
            ) from None
        if shape != (self.num, *self.latent_shape) or dtype.hasobject:
            raise DataError(f"{path} has shape {shape}", self._latents_hint)
        offset, order = self._latents_file.tell(), "F" if fortran else "C"
        size, need = (
            os.fstat(self._latents_file.fileno()).st_size,
            int(np.prod(shape)) * dtype.itemsize,
        )
        if size < offset + need:  # cut short (folders whose card records no sha256 of it)
            raise DataError(
                f"{path} is cut short ({size} bytes; its header needs {offset + need})",
                self._latents_hint,
            )
        return np.memmap(self._latents_file, dtype, "r", offset, shape, order)  # (N, d, h, w)

    def digest(self) -> str:
        """sha256 of what the folder holds: the arrays of its samples.npz (images, labels) and its
        raw latents (latents.npy, or ``none`` when they are regenerated from the DiT).

        The npz members are hashed, not the file: what a zip records beside them (write times,
        layout) says nothing about the samples."""
        latents_sha = self._latents_sha
        if self._latents_file is not None and latents_sha is None:
            h = hashlib.sha256()
            self._latents_file.seek(0)
            while block := self._latents_file.read(1 << 24):
                h.update(block)
            latents_sha = h.hexdigest()
        return _digest(self._zip, self.src / "samples.npz", latents_sha)

    def _check_recorded(self, handle: BinaryIO, path: Path, name: str) -> str | None:
        """The sha256 of the open file ``handle`` when the card records one, checked against
        it (and its size) before anything is read from it; None when nothing is recorded."""
        recorded = self._recorded.get(name)
        if not isinstance(recorded, dict) or "sha256" not in recorded:
            return None  # written before cards recorded their files
        size, why = os.fstat(handle.fileno()).st_size, None
        if "size" in recorded and size != recorded["size"]:
            why = f"it has {size} bytes, {recorded['size']} were written"
        sha = None
        if why is None:
            h = hashlib.sha256()
            while block := handle.read(1 << 24):
                h.update(block)
            handle.seek(0)
            sha = h.hexdigest()
            if sha != recorded["sha256"]:
                why = "its sha256 is not the one recorded when it was written"
        if why is not None:
            raise DataError(
                f"{path} is not the {name} that `repackctl sample` recorded in "
                f"{self.src / PROTOCOL_JSON} ({why})",
                "the folder was edited or damaged (or holds another folder's file): "
                + (self._latents_hint if name == LATENTS_FILE else _NPZ_HINT.format(src=self.src)),
            )
        return sha

    def images(self, indices: list[int]) -> np.ndarray:
        """uint8 (B, H, W, 3): the images ``indices`` of samples.npz (ascending indices read the
        file once, front to back)."""
        npz, per = self.src / "samples.npz", int(np.prod(self.image_shape))
        out = np.empty((len(indices), *self.image_shape), np.uint8)  # (B, H, W, 3)
        try:
            for j, i in enumerate(indices):
                self._images.seek(self._data_start + i * per)
                buf = self._images.read(per)
                if len(buf) != per:
                    raise _unreadable(npz, f"{IMAGES_KEY} ends before image {i}")
                out[j] = np.frombuffer(buf, np.uint8).reshape(self.image_shape)
        except (zipfile.BadZipFile, OSError, zlib.error) as e:
            raise _unreadable(npz, e) from None
        return out


def image_shape_of(folder: Path) -> tuple[int, ...]:
    """(H, W, 3) of the images of ``folder``'s samples.npz, from its header (() when it cannot
    be read: the shape is only shown)."""
    try:
        with zipfile.ZipFile(folder / SAMPLES_NPZ) as zf, zf.open(f"{IMAGES_KEY}.npy") as f:
            return tuple(int(n) for n in _read_npy_header(f)[0][1:])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, zlib.error):
        return ()


def source_digest(src: Path) -> str:
    """:meth:`SamplesSource.digest` of the samples folder ``src``, read from its paths."""
    npz = src / "samples.npz"
    if not npz.is_file():
        raise DataError(
            f"{src} has no samples.npz", "finish it with the same `repackctl sample` command"
        )
    try:
        with zipfile.ZipFile(npz) as zf:
            return _digest(zf, npz, _latents_sha(src))
    except (zipfile.BadZipFile, OSError) as e:
        raise _unreadable(npz, e) from None


def _move_away_hint(out: Path) -> str:
    return (
        f"move {out} away (or delete it if its images are no longer needed), then run "
        "`repackctl refine apply` again; nothing in it was changed"
    )


def _generation_diff(done: dict, protocol: dict) -> list[str]:
    """The generation fields in which two cards differ; at CFG scale 1 (no guidance) the
    interval and channels change nothing (cards written before they were reset there keep
    the given ones) and are not compared."""
    keys = _GENERATION_KEYS
    if done.get("cfg_scale") == protocol.get("cfg_scale") == 1.0:
        keys = tuple(k for k in keys if k not in ("cfg_interval", "cfg_legacy_channels"))
    return [k for k in keys if done.get(k) != protocol.get(k)]


def _refined_by_sample(out: Path, src: Path, protocol: dict, refiner_sha: str) -> bool:
    """True when ``out`` (a `sample --refiner` folder) holds the samples of ``src``, refined by
    this refiner: the same raw latents (byte for byte), labels and generation settings; else a
    ``ConfigError`` naming ``out`` and the settings that differ."""
    card = out / PROTOCOL_JSON
    if not card.is_file():
        raise ConfigError(
            f"{out} is an unfinished folder of `repackctl sample --refiner`",
            f"finish it with its `repackctl sample` command, or {_move_away_hint(out)}",
        )
    done = read_json_dict(card)
    if done is None:  # not a card of other samples: none that can be read
        raise DataError(
            f"{card} cannot be read (damaged, or not a JSON object): nothing shows which "
            f"samples the images of {out} were refined from; nothing was written",
            card_repair_hint(out),
        )
    diff = _generation_diff(done, protocol)
    if (done.get("pack") or {}).get("pack_id") != (protocol.get("pack") or {}).get("pack_id"):
        diff.append("pack model")
    if card_refiner_sha(out, done) != refiner_sha:
        diff.append("refiner checkpoint")
    src_latents = _latents_sha(src)
    if not diff:
        _check_refined_latents(out, done, src, src_latents)
    if not diff and (src_latents is None or _latents_sha(out) != src_latents):
        diff.append("latents")  # e.g. sampled on another device: not provably the same samples
    if not diff:
        return True
    raise ConfigError(
        f"{out} holds images that `repackctl sample --refiner` refined from other samples than "
        f"those in {src} (other {', '.join(diff)})",
        _move_away_hint(out),
    )


def _check_refined_latents(out: Path, done: dict, src: Path, src_latents: str | None) -> None:
    """Refuse the `sample --refiner` folder ``out`` (its card ``done``) when its own latents.npy
    is damaged (cut, flipped, removed) while its card records the latents of ``src`` (the
    sha256 of ``src``'s latents.npy, checked against ``src``'s card before): its images were
    refined from those latents, so it is not a folder of "other latents"; the copy in ``src``
    is the file its card records, and putting it back ends the refusal (`sample --refiner
    --out` then keeps the folder as it is too)."""
    recorded = (done.get("files") or {}).get(LATENTS_FILE)
    lat = out / LATENTS_FILE
    if src_latents is None:
        return
    if not isinstance(recorded, dict):
        if not lat.is_file():
            _refuse_unrecorded_latents(out, src)
        return
    if recorded.get("sha256") != src_latents:
        return  # other latents: `_refined_by_sample` names them
    why = file_mismatch(lat, recorded)
    if why is None:
        return
    state = "is missing" if not lat.is_file() else f"is damaged ({why})"
    raise DataError(
        f"{lat} {state}; {out / PROTOCOL_JSON} records it as the latents of "
        f"{src / LATENTS_FILE}, which its images were refined from: not other samples",
        f"copy {src / LATENTS_FILE} to {lat} (the file its card records), then run "
        "`repackctl refine apply` again; nothing was written",
    )


def _refuse_unrecorded_latents(out: Path, src: Path) -> None:
    """Refuse the `sample --refiner` folder ``out`` that keeps no latents.npy and whose card
    records none (it was moved away, then `sample --out` wrote the card again), though its card
    records every generation setting of ``src``'s: nothing ties its images to ``src``'s latents.
    When both folders were computed alike (device type, batching, CPU threads: their settings
    files), the same settings made the same latents, and ``src``'s copy put back ends it;
    otherwise they may differ (~1e-6) and only moving ``out`` away does."""
    lat = out / LATENTS_FILE
    mine = read_json_dict(out / SETTINGS_JSON) or {}
    theirs = read_json_dict(src / SETTINGS_JSON) or {}
    alike = all(k in mine and mine.get(k) == theirs.get(k) for k in MACHINE_KEYS)
    again = f"copy {src / LATENTS_FILE} to {lat}, then run `repackctl refine apply` again"
    raise DataError(
        f"{out} has no {LATENTS_FILE} and its card records none: nothing shows that its images "
        f"were refined from the latents of {src}, though its card records the same settings"
        + (" and it was computed alike (device, batching, threads)" if alike else ""),
        f"{again}; nothing was written" if alike else _move_away_hint(out),
    )


def written_by_apply(out: Path) -> bool:
    """Whether `refine apply` started the folder ``out`` (its settings file holds
    ``_APPLY_KEYS`` only)."""
    old = read_json_dict(out / SETTINGS_JSON)
    return old is not None and set(old) <= _APPLY_KEYS


def refined_by_apply(
    out: Path,
    expected: dict[str, Any],
    pack_id: str | None,
    refiner: tuple[str, str],
    hint: str,
    runs: str | None = None,
) -> dict[str, Any] | None:
    """The card of ``out`` when `refine apply` wrote it (its settings file holds ``_APPLY_KEYS``
    only) and it holds the samples ``expected`` describes (the card fields ``_GENERATION_KEYS``
    that `sample` records), of this pack model, refined by this refiner: `sample --refiner`
    then has nothing to make there, as `refine apply` after `sample --refiner` has nothing to
    refine (``_refined_by_sample``). None when ``out`` is not a `refine apply` folder (new, or
    `sample`'s own: ``claim_folder`` decides). Else a ``ConfigError`` that names what differs,
    or that the folder is unfinished. ``refiner``: (``--refiner`` as given, its sha256);
    ``hint``: where else the samples can go; ``runs``: the runs root (to name the refiner
    that started an unfinished folder: :func:`finish_apply_hint`)."""
    if not written_by_apply(out):
        return None
    done = read_json_dict(out / PROTOCOL_JSON) or {}
    name, refiner_sha = refiner
    suffix = refined_suffix(refiner_label(name))
    src = out.parent / out.name.removesuffix(suffix) if out.name.endswith(suffix) else "SAMPLES"
    if not done.get("refined_from"):
        finish = f"finish it with `repackctl refine apply {src} --refiner {name}`"
        if not out.name.endswith(suffix):  # --refiner names it otherwise: what the folder says
            finish = finish_apply_hint(out, runs)
        raise ConfigError(
            f"{out} is an unfinished folder of `repackctl refine apply` (the refined images of "
            "another samples folder), not one of `repackctl sample --refiner`",
            f"{finish}, or {hint}",
        )
    diff = _generation_diff(done, expected)
    if (done.get("pack") or {}).get("pack_id") != pack_id:
        diff.append("pack model")
    if card_refiner_sha(out, done) != refiner_sha:
        diff.append("refiner checkpoint")
    if not diff:
        return done
    raise ConfigError(
        f"{out} holds images that `repackctl refine apply` refined from the samples in "
        f"{done['refined_from']}, made with other settings than these (other {', '.join(diff)})",
        f"{hint}, or move {out} away; nothing in it was changed",
    )


def _apply_source(out: Path) -> tuple[Path, str] | None:
    """(the samples folder, the ``refine…`` tail of the name) that `refine apply` named ``out``
    after (``<SAMPLES>--refine-<label>`` beside SAMPLES, :func:`refined_suffix`), when that
    folder holds a card of unrefined samples; None otherwise (an ``--out`` of `sample
    --refiner`'s own naming, a source moved away)."""
    cut = out.name.rfind("--refine")
    if cut <= 0:
        return None
    src = out.parent / out.name[:cut]
    card = read_json_dict(src / PROTOCOL_JSON)
    if card is None or card.get("refiner"):
        return None
    return src, out.name[cut + 2 :]


def _refiner_arg(runs: str, label: str) -> str:
    """The ``--refiner`` that samples folders label ``label`` (:func:`refiner_label`): the run
    itself, or ``RUNS/<run>/checkpoints/step-N`` for ``<run>-step-N``."""
    m = re.fullmatch(r"(.+)-(step-\d{7})", label)
    if m and (Path(runs).expanduser() / m[1] / "checkpoints" / m[2]).is_dir():
        return str(Path(runs).expanduser() / m[1] / "checkpoints" / m[2])
    return label


def _started_by(runs: str, tail: str, sha: Any) -> str | None:
    """The ``--refiner`` of the `refine apply` that named its output ``…--<tail>``, checked
    against the sha256 its settings file recorded (``sha``): the refiner that ``--refiner``
    loads now (its newest complete checkpoint, for a run) must be that one; None when no run
    of the name, or its checkpoint now is another one."""
    from repackctl.files import sha256_file_cached
    from repackctl.paths import resolve_checkpoint_arg
    from repackctl.train.checkpoint import checkpoint_for_loading

    if not isinstance(sha, str):
        return None
    labels = [tail, tail.removeprefix("refine-")]
    for label in dict.fromkeys(x for x in labels if x and refined_suffix(x) == f"--{tail}"):
        arg = _refiner_arg(runs, label)
        try:
            ckpt = checkpoint_for_loading(resolve_checkpoint_arg(runs, arg))
            if ckpt is not None and sha256_file_cached(ckpt / "ema.safetensors") == sha:
                return arg
        except (RepackError, OSError):
            continue
    return None


def finish_apply_hint(out: Path, runs: str | None) -> str:
    """How to finish the unfinished `refine apply` folder ``out``, which records its source and
    refiner only by their sha256 (its settings file) until its card is written: the exact
    command where its name gives the samples folder beside it and a refiner run under ``runs``
    whose checkpoint has the recorded sha256; else as much of it as is known."""
    found = _apply_source(out)
    if found is None:
        return (
            "finish it with the `repackctl refine apply SAMPLES --refiner RUN` command that "
            "started it (`refine apply` writes SAMPLES--refine-RUN beside the samples folder "
            f"SAMPLES; {out.name} does not name one that is there)"
        )
    src, tail = found
    sha = (read_json_dict(out / SETTINGS_JSON) or {}).get("refiner")
    refiner = _started_by(runs, tail, sha) if runs is not None else None
    if refiner is not None:
        return f"finish it with `repackctl refine apply {src} --refiner {refiner}`"
    which = f" (the refiner whose ema.safetensors has sha256 {sha[:12]}…)" if sha else ""
    return f"finish it with `repackctl refine apply {src} --refiner RUN`{which}"


def refuse_apply_folder(out: Path, hint: str, runs: str | None = None) -> None:
    """Refuse `sample` without --refiner into ``out`` when `refine apply` wrote it (the refined
    images of another samples folder): said plainly, naming the refiner to pass to use its
    samples, rather than as a folder of "other settings" listing the null values of keys a
    `refine apply` folder does not record. ``hint``: where else the samples can go; ``runs``:
    the runs root, to name the command that finishes an unfinished folder
    (:func:`finish_apply_hint`)."""
    if not written_by_apply(out):
        return
    card = read_json_dict(out / PROTOCOL_JSON) or {}
    src = card.get("refined_from")
    if not src:
        raise ConfigError(
            f"{out} is an unfinished folder of `repackctl refine apply` (the refined images of "
            "another samples folder): `repackctl sample` without --refiner does not write there",
            f"{finish_apply_hint(out, runs)}, or {hint}; nothing in it was changed",
        )
    raise ConfigError(
        f"{out} is a folder of `repackctl refine apply`: it holds the refined samples of {src}, "
        "and `repackctl sample` without --refiner does not write there",
        f"pass --refiner {_applied_refiner(out, card)} to use its samples, or {hint}; nothing "
        "in it was changed",
    )


def _applied_refiner(out: Path, card: dict[str, Any]) -> str:
    """What to pass as --refiner for the refiner that refined the `refine apply` folder ``out``
    (its ``card``): the run's name when the folder is named after it, else the checkpoint
    folder the card records (``RUN`` when it records none)."""
    recorded = card.get("refiner")
    checkpoint = recorded.get("checkpoint") if isinstance(recorded, dict) else None
    if not isinstance(checkpoint, str):
        return "RUN"
    run = run_root_of(Path(checkpoint)).name
    return run if out.name.endswith(refined_suffix(refiner_label(run))) else checkpoint


#: The card's mark of a grid being drawn again (``regrid_finished``): set before grid.png is
#: touched, cleared with the new count; a card that carries it is mended by the next call.
GRID_PENDING = "grid_pending"


def _grid_agrees(out: Path, card: dict[str, Any], grid: int) -> bool:
    """Whether ``card`` records ``grid`` without the redraw mark, with a grid.png beside it
    when above 0: the folder already shows what ``grid`` asks for."""
    drawn = grid == 0 or (out / GRID_PNG).is_file()
    return card.get(GRID_KEY) == grid and drawn and card.get(GRID_PENDING) is not True


def _redraw(out: Path, card: dict[str, Any], new: dict[str, Any], grid: int) -> None:
    """Mark ``card`` (``GRID_PENDING``), draw grid.png again with ``grid`` images (or remove
    the card's own at 0), then write ``new``: the steps of :func:`regrid_finished`."""
    write_json_atomic(out / PROTOCOL_JSON, {**card, GRID_PENDING: True})
    ids = _sample_ids(out, card)
    write_grid(out, len(ids), grid)  # removes the card's grid.png at 0 (``remove_own_grid``)
    if grid > 0 and card.get("stage") == "t2i":  # one row per prompt, as the source's
        from repackctl.sample.t2i import prompt_grid

        prompts = card.get("prompts") or []
        prompt_grid(out, ids, [str(prompts[k]) for k in ids], grid)
    crash_point(CRASH_AFTER_REGRID)
    write_json_atomic(out / PROTOCOL_JSON, new)


def regrid_finished(out: Path, card: dict[str, Any], grid: int, dist: DistInfo) -> dict[str, Any]:
    """The card of the finished refined folder ``out`` (``card``, the one it holds) once its
    grid.png shows ``grid`` images, for the command that answers "already done" there (`sample
    --refiner` in a `refine apply` folder, or the reverse): it makes nothing, but the folder
    gets the grid it asks for, as one it finished itself does. A card that records ``grid``,
    with a grid.png beside it when above 0, is left byte for byte (nor is the lock taken).

    Otherwise rank 0, under the samples lock, marks the card (``GRID_PENDING``), draws grid.png
    again from the PNGs (checked against samples.npz just before: ``_restore_finished``) or
    removes the one the card claims at 0, then records ``grid`` without the mark. A kill in
    between leaves the mark, so the next call draws the grid again whatever count it asks for
    (the new grid beside the old count was left for good before the mark). Another process
    holding the lock (the same command run twice) is waited for (:func:`lock_waiting`), and
    the card read again: when it drew this grid, nothing is drawn a second time."""
    if _grid_agrees(out, card, grid):
        return card
    new = {k: v for k, v in card.items() if k != GRID_PENDING} | {GRID_KEY: grid}
    if dist.rank == 0:
        if lock_waiting(out):  # one writer (given up by ``released_after``)
            card = read_json_dict(out / PROTOCOL_JSON) or card  # as the other one left it
            new = {k: v for k, v in card.items() if k != GRID_PENDING} | {GRID_KEY: grid}
        if not _grid_agrees(out, card, grid):
            _redraw(out, card, new, grid)
    dist.barrier()
    return new


def restore_applied(out: Path, card: dict[str, Any], refiner: str, dist: DistInfo) -> int:
    """How many samples of this process's share a finished `refine apply` folder ``out`` (its
    ``card``, ``refined_by_apply``) holds, for `sample --refiner` to answer "already done" with
    (summed over the processes by the caller), once its PNGs are there (``_restore_finished``).
    ``refiner``: ``--refiner`` as given (the hint's `refine apply` command)."""
    src = card.get("refined_from") or "SAMPLES"
    hint = f"refine them again: `repackctl refine apply {src} --refiner {refiner}`"
    mine = owned_range(int(card["num_samples"]), dist.rank, dist.world)
    _restore_finished(out, mine, dist, "refine apply", hint)
    return len(mine)


def _restore_finished(out: Path, mine: range, dist: DistInfo, who: str, hint: str) -> None:
    """Before a finished refined folder ``out`` that the other command (``who`` made it) wrote
    is answered "already done", check it as `sample --out` checks a finished folder it reopens
    (``indices_to_make``, ``reopen_finished``): its PNGs of this process's share ``mine`` that
    are missing or not the recorded samples are rewritten from its verified samples.npz
    (``restore_pngs``; a ``Warning:`` names them). A PNG that stays missing or undecodable, a
    samples.npz that is not the recorded one, or PNGs that do not give the card's digest (with
    samples.npz gone) are refused by name on every process, with ``hint`` (the command that
    makes the folder whole); an edited images_sha256 gets its own refusal
    (``edited_images_record``): nothing is answered "done" that is not there."""
    check_card_is_the_folders(out)  # an edited card is named before anything is rewritten
    if missing_indices(out, mine):  # one to write: one writer (given up by ``released_after``)
        lock_waiting(out)  # the same command run twice: the other restores them meanwhile
    restored = restore_pngs(out, mine)
    _warn_all(dist, [restored.removeprefix("Warning: ")] if restored else [])
    lost = sorted(
        dist.all_items(sorted({*missing_indices(out, mine), *undecodable_pngs(out, mine)}))
    )
    if lost:
        more = " …" if len(lost) > 3 else ""
        names = ", ".join(png_path(out, i).name for i in lost[:3]) + more
        many = len(lost) > 1
        raise DataError(
            f"{len(lost)} refined PNG{'s' if many else ''} of {out} (written by `repackctl "
            f"{who}`) {'are' if many else 'is'} missing or {'do' if many else 'does'} not "
            f"decode ({names}), and its {SAMPLES_NPZ} is not the recorded one to restore "
            "them from (gone or changed); nothing was written",
            hint,
        )
    _check_finished_samples(out, who, hint)


def _check_finished_samples(out: Path, who: str, hint: str) -> None:
    """Refuse the finished refined folder ``out`` (every PNG there and decoding) when its
    samples.npz is not the file its card records, or, that file gone, when its PNGs do not
    give the card's images_sha256. Cards that record no files (older versions) are taken as
    they are."""
    card = read_json_dict(out / PROTOCOL_JSON) or {}
    rec, npz = recorded_files(out).get(SAMPLES_NPZ), out / SAMPLES_NPZ
    if not isinstance(rec, dict):
        return
    if not npz.is_file():
        try:
            verify_recorded_pngs(out, int(card.get("num_samples", 0)), card)
        except DataError as e:
            again = hint if who == "refine apply" else _move_away_hint(out)  # no copy is left
            raise DataError(e.message, again) from None
        return
    why = npz_mismatch(npz, rec)
    if why is None:
        return
    if file_mismatch(npz, rec) is None:  # the file is the recorded one: was its digest edited?
        edited = edited_images_record(
            out, int(card.get("num_samples", 0)), card, npz_pixels_sha256(npz)
        )
        if edited is not None:
            raise edited
    raise DataError(
        f"{npz} of the refined folder {out} (written by `repackctl {who}`) is not the file its "
        f"card records ({why}); nothing was written",
        hint,
    )


def _already_refined(out: Path, src: Path, protocol: dict, fingerprint: dict[str, Any]) -> bool:
    """Whether ``out`` already holds the refined samples of ``src`` (made by `sample --refiner`).

    False for a new folder and for a `refine apply` folder of the same source and refiner
    (resumed); a folder that holds refinements of other samples is refused by name."""
    marker = out / SETTINGS_JSON
    if not marker.is_file():
        return False  # new, empty or foreign: claim_folder decides
    try:
        old = json.loads(marker.read_text())
    except ValueError:
        return False  # claim_folder refuses an unreadable settings file
    if not isinstance(old, dict):
        return False  # claim_folder refuses it
    check_card_is_the_folders(out)  # an edited card is named, not taken for other samples
    if not set(old) <= _APPLY_KEYS:
        return _refined_by_sample(out, src, protocol, fingerprint["refiner"])
    # the batching and the device are `_apply_batch_size`'s to check; the source's weights
    # follow from its samples (``source_sha256``) and are `claim_folder`'s to compare
    old = {k: v for k, v in old.items() if k not in (*MACHINE_KEYS, *_SOURCE_WEIGHTS_KEYS)}
    if old == {k: v for k, v in fingerprint.items() if k not in MACHINE_KEYS}:
        return False
    if "refiner" in old and old["refiner"] != fingerprint["refiner"]:
        why = "another checkpoint of the refiner run made them"
    elif "source_sha256" not in old:
        why = "an older repackctl made them without recording which samples they refine"
    else:
        why = f"the samples in {src} changed since they were refined"
    raise ConfigError(f"{out} holds other refined images: {why}", _move_away_hint(out))


def _apply_batch_size(
    out: Path,
    fingerprint: dict[str, Any],
    given: int,
    world: int,
    threads: int | None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The fingerprint to claim ``out`` with, its ``batch_size`` the one to refine in and its
    ``world_size`` the number of processes whose shares those batches are cut from
    (``job_batches``; recorded, or ``world`` when it records none).

    The refiner's pixels differ by ±1/255 between batch sizes, so a folder is refined in one:
    a new folder records ``given``; an unfinished folder started with another is refused
    (finishing it with ``given`` mixed two batchings in one folder); a finished folder keeps
    its own (whatever it refines again, a damaged PNG or all of them, matches the rest). Its
    batches are the same whatever the number of processes that resume it. A folder started
    before these were recorded is resumed with ``given`` and ``world`` and left as it is.
    A new folder records the type of ``device`` (``device_type``); a folder started on another
    device type is refused, finished or not (``check_device``)."""
    old = read_json_dict(out / SETTINGS_JSON)
    if old is None or not set(old) <= _APPLY_KEYS:  # new (or foreign: claim_folder refuses it)
        return {**fingerprint, **batching_record(given, world, threads, device)}
    check_device(out, old, device, f"move {out} away")
    kept: dict[str, Any] = {**recorded_batching(old), **recorded_device(old)}  # older: none
    recorded = kept.get(BATCH_KEY, given)
    if recorded == given or is_finished(out):
        return {**fingerprint, **kept}
    raise ConfigError(
        f"{out} is an unfinished refined folder whose images were refined with --batch-size "
        f"{recorded}, not {given}: the refiner's pixels differ by ±1/255 between batch sizes, "
        "so finishing it with another would mix two batchings in one folder",
        f"pass --batch-size {recorded} to finish it, or {_move_away_hint(out)}",
    )


def _source_weights(out: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    """The DiT weights the refined samples were made from (the source card's
    ``checkpoint_sha256`` and ``weights``), for the settings file of ``out``.

    A refined folder is named after its run and checkpoint like the samples it refines, so
    `runs info` and `evaluate fid RUN` tell an earlier run's (removed and trained again) from
    the run's own by these, as for `sample`'s folders. A new folder records them; a folder
    started by an earlier version keeps its file as it is (``claim_folder`` would refuse the
    keys it lacks as other settings): its card records them once it is finished."""
    old = read_json_dict(out / SETTINGS_JSON)
    if old is not None and set(old) <= _APPLY_KEYS:
        return {k: old[k] for k in _SOURCE_WEIGHTS_KEYS if k in old}
    return {k: protocol[k] for k in _SOURCE_WEIGHTS_KEYS if isinstance(protocol.get(k), str)}


def _source_protocol(src: Path) -> dict[str, Any]:
    """The protocol card of an unrefined samples folder with raw latents."""
    proto_path = src / PROTOCOL_JSON
    if not proto_path.is_file():
        written = (src / SETTINGS_JSON).is_file()  # by `repackctl`: its card can be written again
        hint = card_repair_hint(src) if written else "pass a folder written by `repackctl sample`"
        raise DataError(f"{src} has no {PROTOCOL_JSON}", hint)
    protocol = read_json_object(proto_path, card_repair_hint(src))
    if protocol.get("refiner"):
        raise DataError(f"{src} is already refined", "refine the unrefined samples folder")
    if protocol.get("latent_convention", LATENT_CONVENTION) != LATENT_CONVENTION:
        raise DataError(f"{src} stores {protocol['latent_convention']!r} latents", None)
    check_card_is_the_folders(src)  # an edited card (cfg_scale …) is not passed on
    return protocol


def _refine_missing(
    settings: Settings,
    source: SamplesSource,
    out: Path,
    regenerate: _Regenerator | None,
    refiner: RefinerHandle,
    todo: list[int],
    progress: ProgressFactory,
    header: dict[str, Any],
    batch_size: int,
    world: int,
) -> None:
    """Refine the samples ``todo`` (of this process's share) of ``source`` into ``out``.

    The batches are those of an uninterrupted run of ``world`` processes (each one's share cut
    in batches of B), recomputed whole when they hold a missing sample (``job_batches``,
    whatever the number of processes now): the refiner's convolutions round by batch
    shape, so a resumed run that batched only the missing samples wrote other pixels than an
    uninterrupted one. Only the missing PNGs are written, each after the batch's manifest of
    their sha256 (``write_recorded_pngs``); those already there are kept."""
    missing = set(todo)
    batches = job_batches(source.num, world, missing, batch_size)
    with progress(f"refine {source.src.name}", total=len(todo), unit="img") as bar:
        bar.log(header_line(header))
        for idx in batches:
            images = source.images(idx)  # (B, H, W, 3), from samples.npz: what the digest covers
            if regenerate is None:
                raw = torch.from_numpy(np.asarray(source.latents[idx], dtype=np.float32))
            else:
                raw = regenerate(idx)  # (B, d, h, w)
            refined = refiner.refine(images, raw)  # (B, H, W, 3)
            new = [(i, refined[j]) for j, i in enumerate(idx) if i in missing]
            write_recorded_pngs(out, new, after_png=_crash_after_png)
            bar.advance(len(new))


def _crash_after_png(index: int) -> None:
    crash_point(f"{CRASH_AFTER_PNG}{index}")


def _to_refine(out: Path, mine: range, num: int) -> tuple[list[int], list[str]]:
    """(the samples of ``mine`` to refine into ``out``, the warnings met, without their
    ``Warning:``: each process returns its own, for rank 0 to print them all).

    An unfinished folder: those whose PNG is missing or no longer holds the bytes written (the
    manifests of ``write_recorded_pngs``, as `sample` keeps them: ``unverified_indices``; a
    damaged or replaced PNG is refined again with a ``Warning:``, never assembled; folders of
    older versions, without manifests, are refined again whole).
    A rerun on a finished folder rebuilds samples.npz and the card from its PNGs, so those must
    be the images the card records first (else the card vouched for whatever pixels lay there):
    an edited PNG is rewritten from the recorded samples.npz; when that file was changed, every
    image is refined again; when it is gone, the PNGs are checked against the card's digest
    once all are there (the missing ones are refined first: a kill or a loss, the rest as
    written)."""
    if not is_finished(out):
        todo, damaged = unverified_indices(out, mine, ("png",))
        return todo, [f"{p} was changed after it was written: it is refined again" for p in damaged]
    npz = out / SAMPLES_NPZ
    if not npz.is_file():
        missing = missing_indices(out, mine)
        if missing:
            return missing, []
        try:
            verify_recorded_pngs(out, num, read_json_object(out / PROTOCOL_JSON, ""))
        except DataError as e:
            return list(mine), [f"{e.message}: every image is refined again"]
        return [], []
    why = npz_mismatch(npz, recorded_files(out).get(SAMPLES_NPZ))
    if why is not None:
        return list(mine), [
            f"{npz} is not the file its card records ({why}): every image is refined again"
        ]
    restored = restore_pngs(out, mine)
    notes = [restored.removeprefix("Warning: ")] if restored else []
    return missing_indices(out, mine), notes


def _warn_all(dist: DistInfo, notes: list[str]) -> None:
    """Rank 0 prints the warnings of every process (each met those of its own share: a
    damaged PNG of another process's share was otherwise repaired silently), each once."""
    for note in dict.fromkeys(dist.all_items(notes)):
        if dist.rank == 0:
            warn(note)


def _fitting_refiner(settings: Settings, source: SamplesSource, protocol: dict) -> RefinerHandle:
    """The refiner named in the settings, checked against the samples before anything is
    written: its latent convention, its pack model, the image side and the latent grid."""
    pack = protocol.get("pack") or {}
    refiner = load_refiner(settings.runs, str(settings.refine.refiner), pack.get("pack_id"))
    refiner.check_fits(
        source.image_shape, source.latent_shape, pack, f"the samples in {source.src}"
    )
    return refiner


def _write_card(
    out: Path,
    src: Path,
    protocol: dict,
    refiner: RefinerHandle,
    digest: str,
    grid: int,
    verify: bool,
    refined_by: dict[str, Any] | None,
) -> None:
    """samples.npz, grid and protocol card of the finished refined folder (rank 0); with
    ``verify`` (a folder that was unfinished), each PNG must match its manifest entry as it is
    read. The manifests (``latents/``) are removed once the card is written: a kill before
    leaves them to check the PNGs against.

    The card keeps the source's provenance (``run_header``, ``versions``, ``git_revision``: how
    the samples were generated) and records the refining call's under ``refined_by``; None
    (this call refined nothing in a finished folder) keeps the card's own, or leaves it out
    when that card records none rather than crediting this call with images it did not make."""
    ids = _sample_ids(src, protocol)
    _, files = assemble_recorded(out, ids, grid, None, verify=verify)
    if grid > 0 and protocol.get("stage") == "t2i":  # one row per prompt, as the source's
        from repackctl.sample.t2i import prompt_grid

        prompts = protocol.get("prompts") or []
        prompt_grid(out, ids, [str(prompts[k]) for k in ids], grid)
    crash_point(CRASH_AFTER_NPZ)
    card = dict(protocol)
    card["files"] = files  # what this folder holds, not what its source holds
    card[GRID_KEY] = grid
    card["refiner"] = {"checkpoint": str(refiner.checkpoint), "sha256": refiner.sha256}
    card["refined_from"] = str(src)
    card["refined_from_sha256"] = digest
    if refined_by is None:
        refined_by = _recorded_refined_by(out)
    if refined_by is not None:
        card[REFINED_BY] = refined_by
    write_json_atomic(out / PROTOCOL_JSON, card)
    if (out / LATENTS_DIR).is_dir():
        remove_latents_dir(out / LATENTS_DIR)


def _grid_size(src: Path, protocol: dict[str, Any], given: int | None, default: int) -> int:
    """How many images the refined folder's grid.png shows: ``given`` (``--grid``), else as
    many as the source folder's (its card's ``grid``), so the two grids show the same samples
    side by side; for a source whose card does not record it (earlier versions) none when it
    has no grid.png, else ``default`` (the ``grid`` setting)."""
    if given is not None:
        return given
    recorded = protocol.get(GRID_KEY)
    if type(recorded) is int and recorded >= 0:  # not a bool, a float or an edited value
        return recorded
    return default if (src / GRID_PNG).is_file() else 0


def _recorded_refined_by(out: Path) -> dict[str, Any] | None:
    """The ``refined_by`` of the card ``out`` holds (None: none, or an unreadable card)."""
    found = (read_json_dict(out / PROTOCOL_JSON) or {}).get(REFINED_BY)
    return found if isinstance(found, dict) else None


def _refined_by(header: dict[str, Any]) -> dict[str, Any]:
    """The provenance of this refining call: its run header, package versions, git revision."""
    from repackctl.metrics.protocol import git_revision, package_versions

    return {"run_header": header, "versions": package_versions(), "git_revision": git_revision()}


@released_after()  # the samples folder's writer lock (``claim_folder``)
def run_refine_apply(
    settings: Settings,
    samples_dir: str | Path,
    progress: ProgressFactory = null_progress,
    dist: DistInfo | None = None,
    grid: int | None = None,
) -> ApplyResult:
    """Refine the images of a samples folder's samples.npz into ``<folder>--refine-<refiner>/``
    (resumable: PNGs already written there are kept while they hold the bytes written).

    ``grid``: how many images its grid.png shows (``--grid``); None: as many as the source
    folder's grid (``_grid_size``)."""
    dist = dist or DistInfo.from_env()
    src = Path(samples_dir).expanduser().resolve()
    if not settings.refine.refiner:
        raise ConfigError(
            "no refiner given", "pass --refiner RUN (made by `repackctl refine train`)"
        )
    protocol = _source_protocol(src)
    _sample_ids(src, protocol)  # what samples.npz records beside the images, or refused now
    with SamplesSource(src, protocol) as source:
        device = resolve_device(settings.device, dist.local_rank)
        regenerate = None
        if source.latents is None:  # refused now when they cannot be recomputed
            regenerate = _Regenerator(src, protocol, settings.runs, device)
        refiner = _fitting_refiner(settings, source, protocol)
        refiner.model.to(device)
        num = source.num
        out = src.parent / f"{src.name}{refined_suffix(refiner_label(settings.refine.refiner))}"
        fingerprint = {"source_sha256": source.digest(), "refiner": refiner.sha256, "num": num}
        if _already_refined(out, src, protocol, fingerprint):
            hint = (
                f"make them again with the `repackctl sample ... --refiner "
                f"{settings.refine.refiner}` command that made {out} (pass --out {out})"
            )
            mine = owned_range(num, dist.rank, dist.world)
            _restore_finished(out, mine, dist, "sample --refiner", hint)
            grid = _grid_size(src, protocol, grid, settings.sample.grid)  # as its own folders
            regrid_finished(out, read_json_dict(out / PROTOCOL_JSON) or {}, grid, dist)
            return ApplyResult(out, num, 0, num, "already refined (by `sample --refiner`)", 0.0)
        if regenerate is not None and not is_finished(out):
            regenerate.load()  # the DiT, checked before the folder is claimed
        given = settings.sample.batch_size
        claim = _apply_batch_size(out, fingerprint, given, dist.world, cpu_threads(device), device)
        claim |= _source_weights(out, protocol)
        claim_folder(out, claim, elsewhere=f"move {out} away")
        mine = owned_range(num, dist.rank, dist.world)
        unfinished = not is_finished(out)  # its PNGs are checked against their manifests
        todo, notes = _to_refine(out, mine, num)
        _warn_all(dist, notes)  # also: every process has seen the folder before any writes
        # the refiner runs in fp32 whatever the settings say; the seed is the samples'
        header = run_header(dist, device, "fp32", "refiner", int(protocol.get("seed", 0)))
        t0 = time.perf_counter()
        batch = claim.get(BATCH_KEY, settings.sample.batch_size)
        args = (todo, progress, header, batch, claim.get(WORLD_KEY, dist.world))
        with torch_threads(sampling_threads(claim, device)):  # the folder's count (CPU)
            _refine_missing(settings, source, out, regenerate, refiner, *args)
        seconds = time.perf_counter() - t0
        has_latents = source.latents is not None
    written, already, seconds = dist.job_totals(len(todo), len(mine) - len(todo), seconds)
    if dist.rank == 0:
        digest = fingerprint["source_sha256"]
        # a finished folder this call refined nothing in: its images are the recorded call's
        by = _refined_by(header) if unfinished or written else None
        grid = _grid_size(src, protocol, grid, settings.sample.grid)
        _write_card(out, src, protocol, refiner, digest, grid, unfinished, by)
    dist.barrier()
    latents_source = "latents.npy" if has_latents else "regenerated from the DiT"
    return ApplyResult(out, num, written, already, latents_source, seconds)
