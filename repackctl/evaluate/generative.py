"""`repackctl evaluate fid` / `evaluate stats`: score generated images against a reference.

Glue over :mod:`repackctl.metrics` (DESIGN.md §7): it finds the generated images (a samples folder
made by ``repackctl sample``, its ``samples.npz``, any ADM-layout ``.npz`` or folder of PNGs, or a
DiT run/checkpoint that is sampled first through :func:`repackctl.sample.run_sample`), finds the
reference (an ADM reference batch as in openai/guided-diffusion ``evaluations/evaluator.py``, a
statistics file, an image folder center-cropped like ADM, a cache entry or the built-in dataset),
computes the metrics, and writes ``metrics.json`` with a complete protocol card (how the samples
were made included: autoguidance by which run, EMA or raw weights, refiner, pack decoder).

Two families of metrics:

- Inception (FID, sFID, IS, KID, precision/recall) through torch-fidelity's TF-compatible
  Inception (:mod:`repackctl.metrics.generative`); needs its weights file.
- ``fd``: the Fréchet distance of pooled patch tokens of any registered frozen encoder
  (:mod:`repackctl.metrics.encoder_fd`, Stein et al. 2023); needs no Inception weights and is the
  default for the built-in dataset (scored with the built-in encoder, whose weights ship).

Reference statistics are cached by content hash (``<cache>-reference-stats`` beside the cache): the hash covers
the reference's content (file bytes; for a folder, every image file; for a cache entry, its source
attributes, done bitmap and the crc32c the cache stores for each chunk of the images used, or
their pixels where a chunk has none; for the built-in dataset, its generator description), the number of images, the resolution and the feature extractor's weights
(and the rule of a cache entry's class-balanced ``--num`` subset, ``round_robin_indices``), an
encoder's attributes and feature rule, and the versions of torch, torch-fidelity or timm (and
numpy for the built-in dataset: :func:`stats_key_doc`). A second call with the same inputs
reads the file instead of recomputing it; statistics another installation made are recomputed.

Which generated images are scored (:mod:`repackctl.evaluate.selection`): never an unfinished
sample run (but a run or checkpoint given with ``--samples N`` finishes the folder of N that an
interrupted call, or its other process under torchrun, started: ``sample`` resumes it); for a
checkpoint, only samples of that checkpoint; from a folder without
``samples.npz``, only its sample files (a finished run's ``000000.png …``, all that its card
counts, their pixels checked against the ``images_sha256`` it records; never ``grid.png``);
with ``--samples N`` below what is available, a class-stratified subset (the first N/classes
of each class), written on the card as ``sample_subset``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.errors import CacheError, CheckpointError, ConfigError, DataError, name_items
from repackctl.evaluate.output import (
    check_metrics_target,
    check_out_place,
    check_replaceable,
    explicit_metrics_path,
)
from repackctl.evaluate.selection import (
    check_recorded_count,
    checked_labels,
    choose_subset,
    is_unfinished_sample_run,
    made_from_checkpoint,
    npz_labels,
    read_sample_settings,
    refuse_more_than_held,
    refuse_unfinished,
    round_robin_indices,
    sample_files,
)
from repackctl.files import IMAGE_EXTENSIONS, sha256_file, sha256_file_cached
from repackctl.metrics.adm import AdmReference, iter_npz_images, npz_images_shape
from repackctl.metrics.frechet import (
    NPZ_READ_ERRORS,
    FeatureStats,
    StatsFile,
    read_stats_npz,
    remove_stale_temporaries,
    stats_from_arrays,
    write_stats_npz,
)
from repackctl.paths import (
    METRICS_JSON,
    PROTOCOL_JSON,
    SAFE_NAME,
    SAMPLES_NPZ,
    SETTINGS_JSON,
    local_path,
    run_root_of,
)
from repackctl.progress import ProgressFactory, null_progress, warn
from repackctl.run_files import protocol_card
from repackctl.settings import Settings
from repackctl.versions import installed_version

INCEPTION_METRICS = ("fid", "sfid", "is", "kid", "prc")
ALL_METRICS = (*INCEPTION_METRICS, "fd")
#: card fields that describe how the samples were generated (copied from protocol.json)
GENERATION_FIELDS = (
    "sampler",
    "steps",
    "nfe",
    "cfg_scale",
    "cfg_interval",
    "cfg_legacy_channels",
    "shift",
    "label_scheme",
    "seed",
    "precision",
    "checkpoint",
    "checkpoint_sha256",
)
#: card fields that say which networks made the samples besides the checkpoint (see
#: :func:`made_with`); cards written before them lack them and are read and replaced as before
MADE_WITH_FIELDS = ("weights", "guide", "refiner", "pack_decoder")
#: what the card says of a generation field that a samples folder's card does not record
NOT_RECORDED = "not recorded"
STATS_FORMAT = 1


# --------------------------------------------------------------------------- image sets
@dataclass
class ImageSet:
    """A re-iterable set of ``n`` uint8 (H, W, 3) images, streamed in batches.

    Iterating yields uint8 (b, H, W, 3) arrays (what every metric function accepts); it can be
    iterated several times (Inception and encoder features read the same set).
    """

    kind: str  # "npz", "image-folder", "cache", "builtin"
    label: str  # path or name shown to the user and written on the card
    n: int
    resolution: int
    batches: Callable[[int], Iterator[np.ndarray]]  # batch_size -> uint8 (b, H, W, 3) batches
    hasher: Callable[[], str]  # content hash (see module docstring)
    batch_size: int = 64
    meta: dict = field(default_factory=dict)
    _sha256: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches(self.batch_size)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self.hasher()
        return self._sha256


def _take(batches: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The first ``n`` images of a batch stream."""
    left = n
    for b in batches:
        if left <= 0:
            return
        yield b[:left]
        left -= len(b[:left])


def _select(batches: Iterator[np.ndarray], indices: np.ndarray) -> Iterator[np.ndarray]:
    """The images at the sorted ``indices`` of a batch stream, in order (copies)."""
    start = pos = 0
    for b in batches:
        if pos >= len(indices):
            return
        end = start + len(b)
        stop = int(np.searchsorted(indices, end))  # indices[pos:stop] fall in this batch
        if stop > pos:
            yield b[indices[pos:stop] - start]  # (k, H, W, 3)
        start, pos = end, stop


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def folder_sha256(files: list[Path], root: Path) -> str:
    """sha256 over ``<relative path>\\t<sha256 of file>\\n`` lines of ``files`` (in the given order)."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def npz_image_set(
    path: Path, num: int | None = None, indices: np.ndarray | None = None
) -> ImageSet:
    """The ``arr_0`` images of an ADM-layout ``.npz`` (streamed; first ``num``, or the sorted
    ``indices``). ``sha256`` is the file's: a subset is recorded beside it, in ``meta``."""
    try:
        shape = npz_images_shape(path)
    except Exception as e:  # BadZipFile, missing arr_0 (DataError), bad header
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} is not a readable .npz file: {e}") from e

    if indices is not None:
        n = len(indices)

        def batches(bs: int) -> Iterator[np.ndarray]:
            return _select(iter_npz_images(path, bs), indices)  # fancy indexing copies

    else:
        n = shape[0] if num is None else min(num, shape[0])

        def batches(bs: int) -> Iterator[np.ndarray]:
            # writable copies: torch warns on (and must not write into) read-only buffers
            return (b.copy() for b in _take(iter_npz_images(path, bs), n))

    if len(shape) == 4:  # (N, H, W, 3); another shape is refused where it is read
        refuse_non_square(str(path), int(shape[2]), int(shape[1]))
    return ImageSet(
        kind="npz",
        label=str(path),
        n=n,
        resolution=int(shape[1]),
        batches=batches,
        hasher=lambda: sha256_file_cached(path),  # a samples folder's is checked on opening
        meta={"available": int(shape[0])},
    )


def refuse_non_square(where: str, width: int, height: int) -> None:
    """Refuse images given as they are (generated samples, an .npz) that are not square: they
    were scored at their height, uncropped, against a reference drawn or center-cropped square
    at that size (ADM's protocol compares square images), and the card held no word of it."""
    if width != height:
        raise DataError(
            f"the images of {where} are {width}x{height} (width x height), not square: scores "
            "compare square images (real images are center-cropped to a square, as in ADM's "
            "protocol)",
            hint=f"center-crop them to {min(width, height)}x{min(width, height)} (or make them "
            "square at the reference's resolution) and evaluate those",
        )


def _png_batches(files: list[Path], bs: int) -> Iterator[np.ndarray]:
    from PIL import Image

    first_shape = None
    for start in range(0, len(files), bs):
        imgs = []
        for p in files[start : start + bs]:
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
            except (OSError, ValueError) as e:  # truncated / not an image
                raise DataError(
                    f"sample {p} is unreadable: {e}", hint="regenerate it (`repackctl sample`)"
                ) from e
            if first_shape is None:
                first_shape = a.shape
            elif a.shape != first_shape:
                raise DataError(
                    f"{p} is {a.shape[1]}x{a.shape[0]} but the first sample is "
                    f"{first_shape[1]}x{first_shape[0]}",
                    hint="generated samples must all have one size",
                )
            imgs.append(a)
        yield np.stack(imgs)  # (b, H, W, 3)


def png_folder_set(
    folder: Path,
    num: int | None = None,
    indices: np.ndarray | None = None,
    protocol: dict | None = None,
) -> ImageSet:
    """Generated images stored as files in ``folder``: its sample files in index order
    (:func:`repackctl.evaluate.selection.sample_files` with the folder's card ``protocol``:
    a finished sample run's numbered PNGs, all of them, else every image but ``grid.png``);
    the first ``num``, or the sorted ``indices`` of that order. What was left out is in
    ``meta["note"]``."""
    from PIL import Image

    files, note = sample_files(folder, protocol or {})
    if not files:
        raise DataError(f"no images in {folder}", hint="pass a samples folder or a samples .npz")
    available = len(files)
    if indices is not None:
        files = [files[int(i)] for i in indices]
    elif num is not None:
        files = files[:num]
    try:
        with Image.open(files[0]) as im:
            width, resolution = im.size
    except (OSError, ValueError) as e:
        raise DataError(f"sample {files[0]} is unreadable: {e}") from e
    refuse_non_square(str(folder), width, resolution)  # the others must be of its size
    return ImageSet(
        kind="image-folder",
        label=str(folder),
        n=len(files),
        resolution=resolution,
        batches=lambda bs: _png_batches(files, bs),
        hasher=lambda: folder_sha256(files, folder),
        meta={"available": available, "note": note},
    )


def reference_folder_set(folder: Path, resolution: int, num: int | None, seed: int) -> ImageSet:
    """Real images under ``folder`` (sub-folders included), ADM center crop to ``resolution``.

    Only files with an image suffix count (a samples folder's JSON files are not images); with
    ``num`` a seeded subset is taken (the same rule as ``imagefolder`` data sources). A samples
    folder (its ``protocol.json``) gives its sample files, as on the generated side
    (:func:`repackctl.evaluate.selection.sample_files`); in any folder the preview ``grid.png``
    at the top is no image of the set. A sample run `repackctl sample` started but did not
    finish (killed, or still running) is refused, as on the generated side: its PNGs are part
    of the run, and their statistics were of the few written so far. So are a finished
    folder's PNGs whose pixels are not the ones its card records (``images_sha256``), and a
    folder of split folders (``train/`` and ``val/``: both splits read as one set).
    """
    from repackctl.data.base import BadImage
    from repackctl.data.crop import center_crop, open_image

    root = folder.resolve()
    refuse_unfinished(root, "the reference folder ")
    files = _reference_files(root)
    if not files:
        raise DataError(f"no images under {root}", hint="pass a folder of .png/.jpg images")
    available = len(files)
    if num is not None and num < len(files):
        keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:num])
        files = [files[i] for i in keep]

    def batches(bs: int) -> Iterator[np.ndarray]:
        for start in range(0, len(files), bs):
            imgs = []
            for p in files[start : start + bs]:
                try:
                    imgs.append(center_crop(open_image(p, resolution), resolution))  # (R, R, 3)
                except BadImage as e:
                    raise DataError(
                        f"reference image {p} is unreadable: {e}",
                        hint="remove it from the reference folder",
                    ) from e
            yield np.stack(imgs)  # (b, R, R, 3)

    return ImageSet(
        kind="image-folder",
        label=str(root),
        n=len(files),
        resolution=resolution,
        batches=batches,
        hasher=lambda: folder_sha256(files, root),
        meta={"crop": "adm-center", "available": available},
    )


def checked_reference_npz(images: ImageSet, path: Path) -> ImageSet:
    """``images`` of the .npz ``path`` given as a reference (`evaluate fid --ref`, `evaluate
    stats`), checked as its samples folder is when that folder is given: a ``samples.npz`` in a
    folder `repackctl sample` did not finish is refused (a kill after the file was assembled
    and before the card was written, or a rerun under way), and one in a finished folder must
    hold the count and be the file its card records (``check_recorded_count``,
    ``check_recorded_file``). Its path skipped those checks, so a partial or replaced sample
    set was summarised as the folder's. Any other .npz is external images, taken as it is."""
    folder = path.parent
    if path.name != SAMPLES_NPZ:
        return images
    refuse_unfinished(folder, "the reference folder ")
    protocol = read_protocol(folder)
    if protocol:
        check_recorded_count(protocol, images.meta["available"], str(path))
        _check_recorded_npz(folder, protocol)
    return images


def _reference_files(root: Path) -> list[Path]:
    """The image files of a reference folder: a samples folder's sample files (never its
    ``grid.png``, a preview of several samples), checked against its card as on the generated
    side (:func:`_check_recorded_pngs`: an edited PNG was summarised as the samples), else
    every image under ``root`` (hidden ones and a top-level ``grid.png`` left out), sorted."""
    from repackctl.evaluate.selection import GRID_PNG

    if (root / PROTOCOL_JSON).is_file():
        protocol = read_protocol(root)
        files = sample_files(root, protocol)[0]
        _check_recorded_pngs(root, protocol, len(files))
        return files
    _refuse_split_folders(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.relative_to(root).as_posix() != GRID_PNG
    )


def _refuse_split_folders(root: Path) -> None:
    """Refuse a reference folder holding two or more split folders (``train/``, ``val/``, …,
    the names ``imagefolder`` data sources read as splits): read recursively, its statistics
    were of every split together, though `extract --data imagefolder:PATH` reads it split by
    split. One split-named folder beside others (a class ``train``) is read as it is."""
    from repackctl.data.imagefolder import SPLIT_NAMES

    try:
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SPLIT_NAMES)
    except OSError:
        return  # unreadable: the listing that follows says so
    if len(splits) < 2:
        return
    folders = ", ".join(f"{name}/" for name in splits)
    held_out_first = sorted(splits, key=lambda name: name == "train")
    others = " or ".join(str(root / name) for name in held_out_first[1:])
    raise DataError(
        f"the reference folder {root} holds the split folders {folders}: read as one set, its "
        "images would be of every split together",
        hint=f"pass one split's folder instead: {root / held_out_first[0]} (or {others})",
    )


def cache_image_set(cache: str, entry_name: str, num: int | None) -> ImageSet:
    """The written images of a cache entry (all, or ``num`` of them class-balanced by
    :func:`repackctl.evaluate.selection.round_robin_indices`, recorded in ``meta["subset"]``),
    read in chunk blocks.

    Its content hash (:func:`cache_images_sha256`) follows the pixels of those images, not only
    the entry's attributes: an entry removed and extracted again from changed files has the same
    attributes and done flags but other images, and must not reuse cached statistics. Reads go
    through a guarded view: a lost or corrupt chunk is an error, never black images.
    """
    from repackctl.cache.integrity import GuardedArray, repair_hint
    from repackctl.cache.store import WRITTEN, DatasetEntry, read_blocks

    entry = DatasetEntry.open(cache, entry_name)
    done = entry.done[:]
    valid = np.flatnonzero(done == WRITTEN)
    if len(valid) < 2:
        raise CacheError(
            f"cache entry {entry_name} has {len(valid)} written images",
            hint="finish `repackctl extract` for it first",
        )
    idx, subset = round_robin_indices(valid, entry.labels[:][valid], num)
    redo = repair_hint(entry_name, "the same `repackctl extract`")
    images = GuardedArray(entry.images, done == WRITTEN, f"{entry_name} images", redo)

    def batches(bs: int) -> Iterator[np.ndarray]:
        for _, block in read_blocks(images, idx, bs):
            yield np.asarray(block)  # (b, R, R, 3)

    return ImageSet(
        kind="cache",
        label=f"cache:{entry_name}",
        n=len(idx),
        resolution=entry.resolution,
        batches=batches,
        hasher=lambda: cache_images_sha256(entry, images, done, idx),
        meta={"dataset": entry.attrs.get("dataset"), "entry": entry_name, "subset": subset},
    )


def cache_images_sha256(entry: Any, images: Any, done: np.ndarray, idx: np.ndarray) -> str:
    """Content hash of the images ``idx`` of a cache entry, without a pass over their pixels.

    It covers the entry's source attributes, its done flags and ``idx``, then, as the identity
    of the pixels, the array's layout and codecs and the crc32c that the cache stores for each
    chunk holding one of ``idx`` (:func:`repackctl.cache.integrity.stored_checksums`; a chunk
    rewritten with other pixels stores another checksum). When a chunk has no stored checksum
    (an entry made before checksums, or a lost chunk) the pixels themselves are hashed, read
    through the guarded view ``images`` (a lost chunk is then an error).
    """
    from repackctl.cache.integrity import stored_checksums
    from repackctl.cache.store import read_blocks

    h = hashlib.sha256()
    attrs = {k: entry.attrs.get(k) for k in ("source", "n", "resolution", "dataset", "split")}
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    h.update(done.tobytes())
    h.update(f"|{len(idx)}|".encode())
    h.update(np.asarray(idx, dtype=np.int64).tobytes())
    sums = stored_checksums(entry.images, idx)
    if sums is None:
        for _, block in read_blocks(images, idx, 256):
            h.update(np.ascontiguousarray(block).tobytes())  # (b, R, R, 3) uint8 pixels
        return h.hexdigest()
    layout = {"identity": "chunk-crc32c", "entry": entry.name}
    layout["array"] = entry.images.metadata.to_dict() | {"attributes": None}
    h.update(json.dumps(layout, sort_keys=True, default=str).encode())
    h.update(np.asarray(sums, dtype=np.int64).tobytes())  # (chunks, 3): first row, bytes, crc32c
    return h.hexdigest()


def builtin_image_set(resolution: int, num: int, seed: int, split: str = "val") -> ImageSet:
    """``num`` images of the built-in dataset at ``resolution`` (a split the generator never saw)."""
    from repackctl.data.builtin import BuiltinSource

    source = BuiltinSource(split=split, num=num, seed=seed)

    def batches(bs: int) -> Iterator[np.ndarray]:
        for start in range(0, num, bs):
            yield np.stack([source.load(i, resolution) for i in range(start, min(start + bs, num))])

    def hasher() -> str:
        desc = json.dumps({**source.describe(), "resolution": resolution}, sort_keys=True)
        return hashlib.sha256(desc.encode()).hexdigest()

    return ImageSet(
        kind="builtin",
        label=f"builtin:{split}",
        n=num,
        resolution=resolution,
        batches=batches,
        hasher=hasher,
        meta={"dataset": "builtin", "split": split, "seed": seed},
    )


# --------------------------------------------------------------------------- generated side
def is_samples_folder(path: Path) -> bool:
    """A folder of generated images, or one `repackctl sample` started (finished or not)."""
    return path.is_dir() and (
        (path / SAMPLES_NPZ).is_file()
        or (path / SETTINGS_JSON).is_file()
        or bool(_list_images(path))
    )


def is_checkpoint_or_run(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "checkpoints").is_dir())


def is_checkpoint(path: Path) -> bool:
    """A checkpoint folder (``runs/<name>/checkpoints/step-…``), not a run folder."""
    return path.is_dir() and (path / "state.json").is_file()


def samples_of_run(root: str | Path, run: Path) -> list[Path]:
    """Samples folders made from ``run``, newest first (:func:`run_samples`)."""
    return run_samples(root, run)[0]


def run_samples(root: str | Path, run: Path) -> tuple[list[Path], list[Path]]:
    """(samples folders made from ``run``, those of another run of its name), newest first.

    For a run folder: every samples folder named after the run, but those that an earlier run
    of the same name (removed and trained again) made: the run's checkpoint of their name holds
    other weights than the ones they record (``runs.made_by_another_run``, as `runs info` lists
    them apart), refined folders included. For a checkpoint folder: only those made from that
    checkpoint's weights (the sha256 their ``protocol.json`` records, or the settings file of
    an unfinished run), so another checkpoint's samples are never scored under its name.
    """
    from repackctl.runs import made_by_another_run

    base, name = local_path(str(root)), run_root_of(run).name
    found = [p for p in base.glob(f"{name}--*") if is_samples_folder(p)] if base.is_dir() else []
    found = [p for p in found if _made_by_run_named(p, name)]
    others = [p for p in found if made_by_another_run(p, run_root_of(run))]
    found = [p for p in found if p not in others]
    if is_checkpoint(run):
        found = [p for p in found if made_from_checkpoint(p, read_protocol(p), run)]
    return sorted(found, key=samples_made_at, reverse=True), sorted(
        others, key=samples_made_at, reverse=True
    )


def _of_another_run(others: list[Path], run: str) -> str:
    """The note on the folders of ``run``'s name that another run of that name made."""
    names = name_items([p.name for p in others], 3)
    return (
        f"left out {names}: made by another run of this name (an earlier run {run}, removed and "
        f"trained again; `repackctl runs info {run}` lists {'them' if len(others) > 1 else 'it'} "
        "as samples of another run of this name)"
    )


def _only_another_runs(run: Path, others: list[Path], root: str) -> DataError:
    """The refusal of `evaluate fid RUN` where every samples folder of the run's name was made
    by another run of that name: scoring one would report that run's samples as this one's."""
    names = name_items([p.name for p in others], 3)
    were = "were" if len(others) > 1 else "was"
    return DataError(
        f"run {run.name} has no samples folder of its own under {local_path(root)}: {names} "
        f"{were} made by another run of this name (an earlier run {run.name}, removed and "
        "trained again, whose checkpoints held other weights): their score would not be this "
        "run's",
        hint=f"sample this run into another samples root (`repackctl evaluate fid {run.name} "
        "--samples N --samples-root NEW`: here its samples may be named like those), or score "
        f"the earlier run's samples as such by their folder (`repackctl evaluate fid "
        f"{others[0]}`)",
    )


def _warn_if_of_another_run(folder: Path, runs: str) -> None:
    """Warn when the newest samples folder (no source given) was made by an earlier run of the
    name its card records (removed and trained again): its score is not that run's."""
    from repackctl.runs import made_by_another_run

    try:
        name = read_protocol(folder).get("dit_run")
    except DataError:
        return  # reported when the folder is read
    run = local_path(runs) / name if isinstance(name, str) and SAFE_NAME.fullmatch(name) else None
    if run is None or not run.is_dir() or not made_by_another_run(folder, run):
        return
    warn(
        f"{folder.name}, the newest samples folder, was made by an earlier run {name} (removed "
        f"and trained again: run {name}'s checkpoint of that name holds other weights); the "
        f"score is of those samples, not of run {name}"
    )


def _made_by_run_named(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds samples of a run called ``name``, not of another run whose name
    starts with it (run names may hold ``--``: ``dit--b--step-…`` is no sample of ``dit``). The
    card names the run (``dit_run``); a folder without a readable card goes by its name,
    ``<run>--step-…`` (a damaged card is reported when the folder itself is scored)."""
    try:
        run = read_protocol(folder).get("dit_run")
    except DataError:
        run = None
    if isinstance(run, str) and run:
        return run == name
    return folder.name.startswith(f"{name}--step-")


def samples_made_at(folder: Path) -> float:
    """When the samples of ``folder`` were made: the one meaning of "newest samples folder".

    ``repackctl sample`` writes ``protocol.json`` last, once every sample is there; a folder
    without it is dated by its ``samples.npz``, the settings file of an unfinished run, or its
    newest image. Never the folder's own mtime: writing ``metrics.json`` into it changes that,
    and scoring a folder must not make it the "newest samples" of its run.
    """
    for mark in (PROTOCOL_JSON, SAMPLES_NPZ, SETTINGS_JSON):
        if (folder / mark).is_file():
            return (folder / mark).stat().st_mtime
    images = _list_images(folder)
    return max((p.stat().st_mtime for p in images), default=folder.stat().st_mtime)


def newest_samples_folder(root: str | Path) -> Path:
    """The samples folder under the samples root whose samples were made last
    (:func:`samples_made_at`).

    An unfinished sample run that is the newest folder is refused (not skipped: the user most
    likely means it), with the hint to finish it.
    """
    base = local_path(str(root))
    found = [p for p in base.iterdir() if is_samples_folder(p)] if base.is_dir() else []
    if not found:
        raise DataError(
            f"no samples folder under {base}",
            hint="run `repackctl sample --num 50000` first, or pass a samples folder, a samples "
            ".npz or a DiT checkpoint as the argument",
        )
    newest = max(found, key=samples_made_at)
    refuse_unfinished(newest, "the newest samples folder ")
    return newest


def read_protocol(folder: Path) -> dict:
    """The samples' ``protocol.json`` (written by ``repackctl sample``), or {} when absent.

    Every path of `evaluate` that reads a card reads it here (the samples scored, a samples
    folder given as the reference, the folders of a run), so a card that is not the one of
    the folder's settings file (its cfg_scale, seed, labels … edited) is refused here
    (``check_card_is_the_folders``, the rule `sample` and `refine apply` apply): it was
    written into ``metrics.json`` beside the score as what the score measures. A damaged card
    is refused with the repair that writes it again (``card_repair_hint``)."""
    from repackctl.sample.folder import card_repair_hint, check_card_is_the_folders

    path = folder / PROTOCOL_JSON
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint=card_repair_hint(folder)) from e
    protocol = protocol_card(doc)
    if protocol is None:  # valid JSON of another shape: never "external samples"
        raise DataError(
            f"{path} is not a protocol card (a JSON object)", hint=card_repair_hint(folder)
        )
    check_card_is_the_folders(folder)
    return protocol


@dataclass
class Generated:
    """The generated side: its images, where they came from, and their generation protocol."""

    images: ImageSet
    folder: Path  # where metrics.json goes by default
    protocol: dict  # generation fields from protocol.json ({} for external samples)
    sampled_now: bool = False
    messages: list[str] = field(default_factory=list)


def _more_hint(num: int, protocol: dict, folder: Path) -> str:
    """How to sample ``num``: from the folder's own checkpoint, with its recorded settings (a
    bare `repackctl sample --num N` sampled the newest run with the default settings), into a
    new folder (``--out``): the folder's name has no count in it, so without ``--out`` the
    command landed on this folder and was refused (a samples folder is never extended)."""
    ckpt = Path(str(protocol.get("checkpoint") or ""))
    new = shlex.quote(f"{folder}-n{num}")
    if not ckpt.name.startswith("step-"):
        return (
            f"generate more (`repackctl sample --num {num} --out {new}` with the settings you "
            f"sampled with) and evaluate {new}"
        )
    prompts, inline = _given_prompts(protocol)
    return (
        f"sample {num} from the same checkpoint with this folder's settings into a new folder: "
        f"`repackctl sample --out {new} --run {ckpt.parent.parent} --checkpoint {ckpt.name} "
        f"--num {num}{prompts}` plus the sampler options{inline} that {folder / PROTOCOL_JSON} "
        f"records, then evaluate {new}"
    )


def _given_prompts(protocol: dict) -> tuple[str, str]:
    """For a text-to-image folder sampled from given prompts (``prompt_source`` ``given: …``,
    ``sample.t2i.given_source``): the ``--prompts FILE`` flag it was sampled with, and a note
    when ``--prompt`` values were given too (they are in the card's ``prompts``); without them
    the command would sample other prompts (the entry's captions)."""
    source = protocol.get("prompt_source")
    if not isinstance(source, str) or not source.startswith("given: "):
        return "", ""
    found = re.search(r"--prompts (.+) \(sha256 [0-9a-f]{64}\)", source)
    flag = f" --prompts {shlex.quote(found.group(1))}" if found else ""
    inline = " and the --prompt values" if re.match(r"given: \d+ --prompt\b", source) else ""
    return flag, inline


def _check_count(
    images: ImageSet, num: int | None, where: str, protocol: dict, folder: Path
) -> list[str]:
    """The line saying how many samples of ``where`` are scored; fewer than 2 are refused (no
    distribution to compare), and ``--samples num`` above what it holds
    (:func:`repackctl.evaluate.selection.refuse_more_than_held`, hinting the sample command
    that makes ``num``)."""
    available = images.meta.get("available", images.n)
    if available < 2:
        raise DataError(
            f"{where} holds {available} image(s); FID and the other scores compare distributions "
            "and need at least 2 (thousands to mean anything)",
            hint="generate more (`repackctl sample --num 1000`) or point at a folder with more "
            "images",
        )
    if num is None:
        return [f"using all {images.n} samples of {where}"]
    more = _more_hint(num, protocol, folder)
    refuse_more_than_held("--samples", num, available, where, more, unit="samples", error=DataError)
    return [f"using exactly {num} of the {available} samples of {where}"]


def open_generated(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    sampling_given: tuple[str, ...] = (),
) -> Generated:
    """Resolve ``evaluate.source`` (or the newest samples folder) into a :class:`Generated`.

    Unfinished sample runs are refused; with ``--samples N`` below what is available, the
    scored images are a class-stratified subset when the labels are known
    (:func:`repackctl.evaluate.selection.choose_subset`), recorded in ``images.meta["subset"]``.
    """
    cfg = settings.evaluate
    num = cfg.num_samples
    path, messages, sampled_now = _resolve_source(settings, progress, sampling_given)
    npz, folder, protocol = _locate_images(path)
    images = npz_image_set(npz) if npz is not None else png_folder_set(folder, protocol=protocol)
    messages += [images.meta["note"]] if images.meta.get("note") else []
    messages += _check_count(images, num, images.label, protocol, folder)
    available = images.meta["available"]
    if npz is not None and npz.name == SAMPLES_NPZ:
        check_recorded_count(protocol, available, images.label)
        _check_recorded_npz(npz.parent, protocol)
    elif npz is None:
        _check_recorded_pngs(folder, protocol, available)
    labels = None
    if num is not None and num < available:
        labels = _labels_of(npz, protocol, available, images.label)
    indices, subset = choose_subset(protocol, labels, num, available, images.label)
    if indices is not None:
        images = (
            npz_image_set(npz, indices=indices)
            if npz is not None
            else png_folder_set(folder, indices=indices, protocol=protocol)
        )
    if subset["rule"] != "all":
        messages.append(f"the {images.n} samples scored are {subset['description']}")
    images.meta["subset"] = subset
    images.batch_size = cfg.batch_size
    return Generated(images, folder, protocol, sampled_now, messages)


def _source_path(source: str, runs: str) -> Path:
    """The path ``source`` names; a name that is no path here but a run under the runs root
    (``evaluate fid dit-tiny``, as `sample -r dit-tiny` takes it) is that run's folder."""
    path = Path(source).expanduser().resolve()
    if path.exists():
        return path
    run = local_path(runs) / source
    if SAFE_NAME.fullmatch(source) and run.is_dir() and is_checkpoint_or_run(run):
        return run
    raise DataError(
        f"generated samples {path} do not exist (nor is {source!r} a run under {run.parent})",
        hint="pass a samples folder, a samples .npz, or a DiT run (name or folder)/checkpoint",
    )


def _resolve_source(
    settings: Settings, progress: ProgressFactory, sampling_given: tuple[str, ...] = ()
) -> tuple[Path, list[str], bool]:
    """(samples folder or .npz to score, how it was found, whether it was sampled just now).

    ``sampling_given``: the sampling settings the user gave (``seed``, ``sample.cfg``, …). For
    a run or checkpoint they decide which samples are meant: with ``--samples N`` it is sampled
    with them (``sample`` reuses a finished folder of exactly these settings), and without it
    they are refused, since its newest folder was made with its own settings."""
    cfg = settings.evaluate
    num = cfg.num_samples
    if cfg.source is None:
        path = newest_samples_folder(settings.samples)
        _warn_if_of_another_run(path, settings.runs)
        return path, [f"no source given: the newest samples folder is {path}"], False
    path = _source_path(cfg.source, settings.runs)
    if not (path.is_dir() and is_checkpoint_or_run(path)):
        return path, [], False
    what = "checkpoint" if is_checkpoint(path) else "run"
    if what == "run":
        _refuse_damaged_newest(path)
    made, others = run_samples(settings.samples, path)
    left_out = [_of_another_run(others, run_root_of(path).name)] if others else []
    if sampling_given and num is None:
        raise ConfigError(
            f"sampling settings ({name_items(list(sampling_given))}) take effect only on "
            f"samples made now, and without --samples N {what} {path} is scored from "
            + (f"its newest samples folder {made[0]}" if made else "a samples folder")
            + ", made with the settings it was sampled with",
            hint="pass --samples N to sample with these settings (a finished folder of exactly "
            "them is reused), or give the samples folder to score and drop those settings",
        )
    if made and not _to_finish(made[0], num) and not sampling_given:
        if what == "run":
            _warn_if_trained_on(path, made[0])
        newest = f"{cfg.source} is a {what}: its newest samples folder is {made[0]}"
        return made[0], [newest, *left_out], False
    if num is not None:
        out = sample_checkpoint(settings, path, num, progress)
        again = (
            " (finishing the folder an earlier run had started)" if made and made[0] == out else ""
        )
        return out, [f"sampled {num} images of {what} {path} into {out}{again}", *left_out], True
    if others and not made:  # never scored as this run's: refused, not skipped
        raise _only_another_runs(run_root_of(path), others, settings.samples)
    pick = f" --checkpoint {path.name}" if what == "checkpoint" else ""
    raise DataError(
        f"{path} is a {what} with no samples folder made from it under {settings.samples}",
        hint=f"sample it first (`repackctl sample --run {run_root_of(path).name}{pick} -n "
        "50000`), or give --samples N to sample it now",
    )


def _refuse_damaged_newest(run: Path) -> None:
    """Refuse a run whose newest checkpoint fails its check (``checkpoint_for_loading``: an
    ``Error:`` naming the folder, the file and the newest intact checkpoint), as ``sample``
    does: scoring its newest samples folder would report the run as if it were intact, and
    the trained-on-since warning would name an older checkpoint as its newest."""
    from repackctl.train.checkpoint import checkpoint_for_loading

    checkpoint_for_loading(run)


def _warn_if_trained_on(run: Path, folder: Path) -> None:
    """Warn when the run's newest samples were made from an older checkpoint than its newest:
    the run trained on since, and the score is not the run's current state."""
    from repackctl.train.checkpoint import list_checkpoints

    sampled = read_protocol(folder).get("checkpoint")
    checkpoints = list_checkpoints(run)
    if not sampled or not checkpoints:
        return
    newest, made = checkpoints[-1], Path(str(sampled))
    if made.name == newest.name and made.parent.name == newest.parent.name:
        return
    warn(
        f"{folder.name}, the newest samples of run {run.name}, were made from checkpoint "
        f"{made.name}, but the run's newest checkpoint is {newest.name} (it trained on since); "
        f"the score is of {made.name}. To score the run as it is now: `repackctl evaluate fid "
        f"{newest} --samples N` (samples {newest.name} first)"
    )


def _to_finish(folder: Path, num: int | None) -> bool:
    """Whether ``--samples num`` of a run should sample rather than score ``folder``: an
    unfinished sample run started for ``num`` samples, as this command (or its other process,
    under torchrun) starts one. The sampler resumes it when it holds these settings (else it
    samples its own folder, or refuses a folder of its name made with others)."""
    return (
        num is not None
        and is_unfinished_sample_run(folder)
        and read_sample_settings(folder).get("num") == num
    )


def _locate_images(path: Path) -> tuple[Path | None, Path, dict]:
    """(the .npz to read or None for a PNG folder, the samples folder, its protocol card).

    A folder `repackctl sample` started but did not finish is refused, named or not.
    """
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(
                f"{path} is not an .npz file", hint="pass a samples folder or a samples .npz"
            )
        if path.name != SAMPLES_NPZ:
            return path, path.parent, {}
        refuse_unfinished(path.parent)
        return path, path.parent, read_protocol(path.parent)
    if not path.is_dir():
        raise DataError(f"{path} is neither a file nor a folder")
    refuse_unfinished(path)
    if (path / SAMPLES_NPZ).is_file():
        return path / SAMPLES_NPZ, path, read_protocol(path)
    if not _list_images(path):
        raise DataError(
            f"{path} holds neither samples.npz nor images",
            hint="pass a samples folder made by `repackctl sample`, or a DiT checkpoint",
        )
    return None, path, read_protocol(path)


def _check_recorded_npz(folder: Path, protocol: dict) -> None:
    """Refuse a samples folder's samples.npz that is not the one its card recorded: its size
    and sha256, then its pixels (:func:`_check_recorded_pixels`); cards written before they
    recorded their files are taken as they are."""
    from repackctl.sample.folder import check_recorded_file

    check_recorded_file(
        folder,
        SAMPLES_NPZ,
        protocol,
        "run the same `repackctl sample` command with --out "
        f"{folder} to rebuild samples.npz from its PNGs, or sample again into a new folder",
    )
    _check_recorded_pixels(folder, protocol)


#: the pixel digest of each samples.npz checked in this process, by the file's sha256
_PIXEL_DIGESTS: dict[str, str] = {}


def npz_pixels_sha256(path: Path) -> str:
    """sha256 of the pixels of the .npz ``path``: what a samples card records as
    ``images_sha256``, by the one rule of ``repackctl.sample.folder`` (``pixels_sha256``, which
    it also takes of the PNGs)."""
    from repackctl.sample.folder import npz_pixels_sha256 as digest

    return digest(path)


def _check_recorded_pixels(folder: Path, protocol: dict) -> None:
    """Refuse a samples.npz whose pixels do not give the ``images_sha256`` its card records.

    Its sha256 and size match the card's record of the file (checked just before), but that
    record can be rewritten to name another file, all-zero images say, while the digest of the
    pixels still names the samples `sample` made: they were scored as the card's. Read once
    per file and process (keyed by the file's sha256, which ``check_recorded_file`` hashed:
    ``sha256_file_cached``). Cards that record no digest (older versions) are taken as they
    are. Rerunning `sample` with this samples.npz in place would rewrite the PNGs from it (it
    matches the file record), so the hint moves it away first. When the PNGs hold the same
    pixels as this samples.npz, it is the card's digest that was edited: that is said, with
    the repair that writes the card again (``edited_images_record``), since the rebuild from
    the PNGs was refused by the same digest."""
    from repackctl.sample.folder import edited_images_record

    files = protocol.get("files")
    rec = files.get(SAMPLES_NPZ) if isinstance(files, dict) else None
    recorded = rec.get("images_sha256") if isinstance(rec, dict) else None
    if recorded is None:
        return
    npz = folder / SAMPLES_NPZ
    key = sha256_file_cached(npz)
    if key not in _PIXEL_DIGESTS:
        _PIXEL_DIGESTS[key] = npz_pixels_sha256(npz)
    if _PIXEL_DIGESTS[key] == recorded:
        return
    num = protocol.get("num_samples")
    if type(num) is int:  # the PNGs agree with samples.npz: the card's digest was edited
        edited = edited_images_record(folder, num, protocol, _PIXEL_DIGESTS[key])
        if edited is not None:
            raise edited
    if protocol.get("refined_from"):
        again = f"move {folder} away and run the same `repackctl refine apply` command again"
    else:
        again = (
            f"move {npz} away (in place, it would be taken as the samples), then run the same "
            f"`repackctl sample` command with --out {folder}: it rebuilds samples.npz from the "
            "PNGs when they still hold the recorded samples"
        )
    raise DataError(
        f"the images of {npz} are not the samples `repackctl sample` recorded in "
        f"{folder / PROTOCOL_JSON} (images_sha256), though its sha256 and size are the ones "
        "recorded there: that record was changed to name another file",
        f"{again}; or sample again into a new folder (--out), then evaluate that",
    )


def _check_recorded_pngs(folder: Path, protocol: dict, available: int) -> None:
    """Refuse the PNGs of a finished sample run without samples.npz whose pixels are not the
    ones its card recorded (``images_sha256``), before anything is scored; cards that record
    none (older versions) and folders `sample` did not write are scored as they are."""
    from repackctl.sample.folder import verify_recorded_pngs

    if "num_samples" in protocol:  # ``sample_files`` took exactly that many: ``available``
        verify_recorded_pngs(folder, available, protocol)


def _labels_of(npz: Path | None, protocol: dict, available: int, where: str) -> np.ndarray | None:
    """The per-sample labels: the .npz's ``arr_1``, else the card's ``labels``; None if unknown."""
    if npz is not None:
        labels = npz_labels(npz, available)
        if labels is not None:
            return labels
    recorded = protocol.get("labels")
    return None if recorded is None else checked_labels(recorded, available, where)


def sample_checkpoint(
    settings: Settings, checkpoint: Path, num: int | None, progress: ProgressFactory
) -> Path:
    """Sample ``num`` images from a DiT run/checkpoint with the ``[sample]`` settings."""
    if num is None:
        raise ConfigError(
            f"{checkpoint} is a checkpoint: say how many samples to generate",
            hint="pass --samples N (50000 for the published protocol)",
        )
    try:
        from repackctl.sample.run import run_sample
    except ModuleNotFoundError as e:
        if e.name != "repackctl.sample.run":
            raise
        raise CheckpointError(
            "sampling is not part of this build", hint="pass a samples folder or .npz instead"
        ) from None
    s = settings.model_copy(deep=True)
    s.sample.run = str(checkpoint)  # a run folder or a checkpoint folder; [sample] gives the rest
    s.sample.num = int(num)
    return Path(run_sample(s, progress).out_dir)


# --------------------------------------------------------------------------- reference side
@dataclass
class Reference:
    """The reference side: images, an ADM reference batch, or precomputed statistics."""

    kind: str  # "images", "adm", "stats"
    label: str  # shown and written as the card's reference_file
    sha256: str
    images: ImageSet | None = None
    adm: AdmReference | None = None
    stats: dict[str, StatsFile] = field(default_factory=dict)  # "fid"/"sfid"/"fd" -> stats
    builtin_data: bool = False  # the built-in dataset: FD in encoder space is the default
    messages: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # protocol differences (forced)


def check_protocol(ref: Reference, made: dict, want: dict, force: bool) -> None:
    """Refuse a reference made with another protocol than the samples', unless forced.

    ``made`` is what the reference was made with, ``want`` what this evaluation uses (the keys
    ``resolution``, ``extractor``, ``weights_sha256``; a key missing from ``made`` is unknown and
    not compared). Forced differences are kept in ``ref.differences`` and the card.
    """
    diff = [
        f"{k}: reference {made[k]!r}, samples {v!r}"
        for k, v in want.items()
        if made.get(k) is not None and v is not None and made[k] != v
    ]
    if not diff:
        return
    if not force:
        raise ConfigError(
            f"reference {ref.label} was made with another protocol ({'; '.join(diff)})",
            "make the reference with the samples' protocol (`repackctl evaluate stats …` at "
            "their resolution and extractor), or pass --force-reference to use it anyway",
        )
    ref.differences += diff
    ref.messages.append(f"Warning: reference protocol differs ({'; '.join(diff)})")


def _is_builtin_dataset(name: str | None) -> bool:
    return bool(name) and str(name).split("-")[0].split(":")[0] == "builtin"


def _training_extra(protocol: dict) -> dict:
    """The ``extra`` a DiT checkpoint recorded (its state.json), or {} when unknown."""
    ckpt = protocol.get("checkpoint")
    state = Path(ckpt) / "state.json" if ckpt else None
    if state is None or not state.is_file():
        return {}
    try:
        extra = json.loads(state.read_text()).get("extra") or {}
    except (OSError, json.JSONDecodeError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _training_data(protocol: dict) -> dict:
    """The cache ids a DiT checkpoint was trained on (its state.json), or {} when unknown."""
    cache = _training_extra(protocol).get("cache")
    return cache if isinstance(cache, dict) else {}


def _refuse_remade_entry(root: str, entry: str, extra: dict) -> None:
    """Refuse the training entry ``entry`` of the cache ``root`` as the default reference when
    it no longer holds what the DiT trained on: the latents it recorded are gone, or their
    channel stats are not the ones it recorded (``dit.t2i_load.entry_made_again``, the check a
    resume and `sample` make). An entry removed and extracted again from other images under the
    same name was taken by its name, and the samples were scored against images the DiT never
    saw, without a word. A DiT that recorded no latents is not checked."""
    from repackctl.cache.store import DatasetEntry
    from repackctl.dit.t2i_load import entry_made_again

    pack_id = (extra.get("cache") or {}).get("latents")
    why = entry_made_again(DatasetEntry.open(root, entry), pack_id, extra)
    if why is None:
        return
    raise DataError(
        f"no reference given, and the DiT's training entry {entry} in the cache {root} is not "
        f"the one it trained on: it {why}; it was made again (from other images?) or its "
        "latents were removed, so its images are not the DiT's training images",
        hint="pass the reference: --ref FOLDER, --ref STATS.npz or --ref builtin (the images "
        f"the DiT trained on), or --ref-cache {entry} to score against this entry anyway",
    )


def _default_reference(
    settings: Settings, gen: Generated, messages: list[str]
) -> tuple[str | None, str | None, str]:
    """(reference, ref_cache, the cache root holding it) implied by the generator's training
    data, when recorded.

    The samples' protocol.json names the DiT checkpoint, whose state.json names the cache entry
    it was trained on, and the cache root: its images are the reference (the training set, as
    ADM's ImageNet reference batch is). That root is read while it holds the entry, whatever
    the cache setting says (an entry of the same name in another cache may hold other images,
    e.g. the built-in data drawn with another seed); when it is gone, an entry of that name in
    the cache setting is taken, with a warning. Either way the entry must still hold the
    latents the DiT trained on, with the channel stats it recorded, or it is refused
    (:func:`_refuse_remade_entry`: made again from other images under the same name). Samples
    that only say ``dataset: builtin`` get the built-in dataset. Text-to-image samples of the
    default prompts get the entry whose captions were their prompts (:func:`_prompts_entry`)."""
    from repackctl.cache.store import list_entries

    p = gen.protocol
    extra = _training_extra(p)
    data = _training_data(p)
    entry, root = data.get("entry"), data.get("root")
    prompts_at = _prompts_entry(p, entry, root, messages, settings.cache)
    if prompts_at:
        return None, *prompts_at
    if entry and isinstance(root, str) and _has_entry(root, entry):
        _refuse_remade_entry(root, entry, extra)
        return None, entry, root
    if entry and entry in list_entries(settings.cache):
        _refuse_remade_entry(settings.cache, entry, extra)
        if isinstance(root, str) and root != settings.cache:
            messages.append(
                f"Warning: the DiT trained on {entry} of the cache {root}, which no longer "
                f"holds it: the reference is the entry of that name in {settings.cache}"
            )
        return None, entry, settings.cache
    if _is_builtin_dataset(p.get("dataset") or entry):
        return "builtin", None, settings.cache
    return None, None, settings.cache


#: how a t2i card's ``prompt_source`` names the entry whose captions were the default prompts
#: (``repackctl.sample.t2i.resolve_prompts``)
PROMPTS_FROM = "first caption of each image of "


def _prompts_entry(
    protocol: dict, entry: str | None, root: Any, messages: list[str], cache: str | None = None
) -> tuple[str, str] | None:
    """(the entry, its cache root): the default reference of text-to-image samples made from
    the default prompts: the cache entry whose first captions were their prompts (the val
    entry of the run's data, when it has one: ``prompt_source``), so that samples are compared
    with the images their prompts describe, as a t2i benchmark compares with the images of its
    captions. It is looked for in the root holding the run's training entry, then in the
    ``cache`` setting (where `sample` read it when that holds the run's entry), and taken where
    its first captions are the samples' prompts (:func:`_holds_prompts`): an entry of that name
    made again with other images is not the one they describe. None for given prompts (the
    training entry then, as for class samples), or when no root holds the prompts' entry with
    those captions (said in ``messages``). The card's ``prompt_entry`` names it; cards made
    before it was recorded say it in ``prompt_source`` only."""
    if protocol.get("stage") != "t2i":
        return None
    prompts_entry, source = protocol.get("prompt_entry"), protocol.get("prompt_source")
    if prompts_entry is None and isinstance(source, str) and source.startswith(PROMPTS_FROM):
        prompts_entry = source[len(PROMPTS_FROM) :]  # an older card
    if not isinstance(prompts_entry, str) or not entry or not isinstance(root, str):
        return None
    if prompts_entry == entry:
        return None
    roots = [r for r in dict.fromkeys((root, cache)) if r and _has_entry(r, prompts_entry)]
    instead = f"the reference is the run's training entry {entry}, not the images the prompts "
    instead += "describe"
    if not roots:
        messages.append(
            f"Warning: the samples' prompts are the captions of {prompts_entry}, which the "
            f"cache {root} no longer holds: {instead}"
        )
        return None
    holding = [r for r in roots if _holds_prompts(r, prompts_entry, protocol)]
    if not holding:
        messages.append(
            f"Warning: the samples' prompts are the first captions of {prompts_entry}, but "
            f"the entry of that name in {name_items(roots)} has other first captions (made "
            f"again with other images?): {instead}"
        )
        return None
    messages.append(
        f"the samples' prompts are the first captions of {prompts_entry}: it is the reference "
        f"(not the run's training entry; pass --ref-cache {entry} for that)"
    )
    return prompts_entry, holding[0]


def _holds_prompts(root: str, name: str, protocol: dict) -> bool:
    """Whether the first captions of entry ``name`` of the cache ``root`` are the prompts the
    samples got (sample i: caption i mod their count, as `sample` assigned them); a card that
    does not record its prompts and caption features is not checked (True)."""
    from repackctl.cache.store import DatasetEntry
    from repackctl.sample.t2i import first_captions

    prompts, ids = protocol.get("prompts"), protocol.get("prompt_ids")
    text_id = (protocol.get("text") or {}).get("features")
    if not isinstance(prompts, list) or not isinstance(ids, list) or not text_id:
        return True
    try:
        captions = first_captions(DatasetEntry.open(root, name), str(text_id), len(ids))
        per_sample = [prompts[k] for k in ids]
    except (CacheError, DataError, OSError, KeyError, ValueError, IndexError, TypeError):
        return False  # no such captions (or unreadable ones): not the prompts' entry
    return bool(captions) and per_sample == [captions[i % len(captions)] for i in range(len(ids))]


def _has_entry(root: str, entry: str) -> bool:
    """Whether the cache at ``root`` (a local folder that still exists) lists ``entry``."""
    from repackctl.cache.store import list_entries

    try:
        return local_path(root).is_dir() and entry in list_entries(root)
    except (CacheError, OSError, ValueError):
        return False


def open_reference(settings: Settings, gen: Generated) -> Reference:
    """Resolve ``evaluate.reference`` / ``evaluate.ref_cache`` (or the default) to a Reference."""
    cfg = settings.evaluate
    spec, entry = cfg.reference, cfg.ref_cache
    messages = []
    if spec and entry:
        raise ConfigError("give either --ref or --ref-cache, not both")
    cache = settings.cache
    if spec is None and entry is None:
        spec, entry, cache = _default_reference(settings, gen, messages)
        if spec is None and entry is None:
            raise DataError(
                "no reference given and the samples do not record their training data",
                hint="pass --ref VIRTUAL_imagenet256_labeled.npz (ADM reference batch), "
                "--ref FOLDER (real images), --ref STATS.npz (`repackctl evaluate stats`), "
                "--ref-cache ENTRY (`repackctl cache ls`) or --ref builtin",
            )
        where = "" if cache == settings.cache else f" of the cache {cache}"
        messages.append(f"no reference given: using {spec or 'cache entry ' + entry}{where}")
    res, n = gen.images.resolution, gen.images.n
    if entry:
        images = cache_image_set(cache, entry, None)
        ref = Reference("images", images.label, "", images=images)
        ref.builtin_data = _is_builtin_dataset(images.meta.get("dataset"))
    elif spec == "builtin":
        images = builtin_image_set(res, n, settings.seed)
        ref = Reference("images", images.label, "", images=images, builtin_data=True)
    else:
        ref = _reference_from_path(reference_path(spec), res, settings.seed)
    if ref.images is not None:
        ref.images.batch_size = cfg.batch_size
        ref.sha256 = ref.images.sha256
    ref.messages = messages + ref.messages
    if ref.images is not None:
        made = {"resolution": ref.images.resolution}
        check_protocol(ref, made, {"resolution": res}, cfg.force_reference)
    return ref


#: how `extract --data` names an image folder; taken before a reference folder too
IMAGEFOLDER_PREFIX = "imagefolder:"


def reference_path(spec: str) -> Path:
    """The path ``--ref`` / `evaluate stats` SOURCE names, absolute. ``imagefolder:PATH``, the
    form `extract --data` takes, is PATH: it was read as the relative path
    ``./imagefolder:PATH``, which did not exist (a path of that name that exists is taken)."""
    path = Path(spec).expanduser()
    if not spec.startswith(IMAGEFOLDER_PREFIX) or path.exists():
        return path.resolve()
    rest = spec[len(IMAGEFOLDER_PREFIX) :]
    if not rest:
        raise DataError(
            f"{spec!r} names no folder", hint="pass the image folder: imagefolder:PATH or PATH"
        )
    return Path(rest).expanduser().resolve()


def _reference_from_path(path: Path, resolution: int, seed: int) -> Reference:
    if not path.exists():
        raise DataError(
            f"reference {path} does not exist",
            hint="pass an ADM reference batch (.npz, e.g. VIRTUAL_imagenet256_labeled.npz from "
            "openai/guided-diffusion), an image folder, a stats file, or --ref-cache ENTRY",
        )
    if path.is_dir():
        images = reference_folder_set(path, resolution, None, seed)
        return Reference("images", str(path), "", images=images)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
    except NPZ_READ_ERRORS as e:
        raise DataError(
            f"reference {path} is not a readable .npz file ({e})",
            hint="pass an ADM reference batch, a stats file, or an image folder (a stats file "
            "that is damaged: make it again with `repackctl evaluate stats SOURCE`)",
        ) from None
    if {"mu", "sigma", "metadata"} <= keys:
        stats = read_stats_bundle(path)
        return Reference("stats", str(path), sha256_file(path), stats=stats)
    if {"mu", "sigma"} <= keys:
        from repackctl.metrics.adm import read_reference_batch

        adm = read_reference_batch(path)
        ref = Reference("adm", str(path), adm.sha256, adm=adm)
        if adm.num_images:
            ref.images = npz_image_set(path)
        return ref
    if "arr_0" in keys:
        images = checked_reference_npz(npz_image_set(path), path)
        return Reference("images", str(path), "", images=images)
    raise DataError(
        f"{path} has neither mu/sigma nor arr_0",
        hint="pass an ADM reference batch, a stats file from `repackctl evaluate stats`, or "
        "an images .npz",
    )


# --------------------------------------------------------------------------- stats files
def read_stats_bundle(path: str | Path) -> dict[str, StatsFile]:
    """A stats file as {"fid", "sfid"} (Inception) or {"fd"} (encoder) statistics.

    The file is read once and its checksum verified; a damaged file is a DataError naming it.
    """
    path = Path(path)
    arrays, meta = read_stats_npz(path)
    main = stats_from_arrays(path, arrays, meta)
    if meta.get("kind", "inception") == "encoder":
        return {"fd": main}
    out = {"fid": main}
    if "mu_s" in arrays and "sigma_s" in arrays:
        out["sfid"] = stats_from_arrays(path, arrays, meta, "mu_s", "sigma_s")
    return out


def write_stats_bundle(
    path: Path, main: FeatureStats, metadata: dict, spatial: FeatureStats | None = None
) -> Path:
    """mu/sigma/n/metadata (readable by ``metrics.frechet.load_stats``) plus mu_s/sigma_s."""
    arrays: dict[str, Any] = {"mu": main.mu, "sigma": main.sigma, "n": np.int64(main.n)}
    if spatial is not None:
        arrays["mu_s"], arrays["sigma_s"] = spatial.mu, spatial.sigma
    return write_stats_npz(path, arrays, metadata)  # atomic, with a checksum


def stats_dir(settings: Settings) -> Path:
    from repackctl.paths import is_url, local_path

    if settings.evaluate.stats_dir:
        return local_path(settings.evaluate.stats_dir)
    if is_url(settings.cache):
        raise ConfigError(
            f"the cache {settings.cache} is remote; reference statistics are kept locally",
            hint="set --stats-dir (or REPACKCTL_EVALUATE__STATS_DIR) to a local folder",
        )
    # beside the Zarr root, not inside it: a plain folder in the hierarchy makes zarr warn
    root = local_path(settings.cache)
    return root.parent / f"{root.name}-reference-stats"


@dataclass
class StatsResult:
    """A reference statistics file and whether it was reused from the cache."""

    path: Path
    reused: bool
    stats: dict[str, StatsFile]
    metadata: dict


def _check_stats_folder(folder: Path) -> None:
    """Refuse, before computing, a statistics folder the result could not be written to."""
    from repackctl.files import ensure_writable_dir

    try:
        ensure_writable_dir(folder, "reference statistics folder")
    except ConfigError as e:  # a file where the folder should be, a read-only place
        raise ConfigError(
            f"{e.message}; nothing was computed",
            "pass --stats-dir a folder you can write to (or REPACKCTL_EVALUATE__STATS_DIR)",
        ) from None


def _slug(text: str) -> str:
    name = Path(text.split(":")[-1]).name or text
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40] or "ref"


def _reuse_cached_stats(path: Path, key_doc: dict) -> StatsResult | None:
    """The cached statistics at ``path`` when they are readable and made from ``key_doc``.

    The file is ours (the cache of reference statistics): a damaged one is recomputed, with a
    ``Warning:`` naming it, and replaced atomically; so is one made from other inputs. The
    temporaries of ``path`` that a killed writer left are removed.
    """
    remove_stale_temporaries(path)
    if not path.is_file():
        return None
    try:
        stats = read_stats_bundle(path)
    except DataError as e:
        warn(f"{e.message}; it is a cached reference statistics file: recomputing it")
        return None
    meta = next(iter(stats.values())).metadata
    if all(meta.get(k) == v for k, v in key_doc.items()):
        return StatsResult(path, True, stats, meta)
    return None


def software_versions(images: ImageSet, extractor: str) -> dict[str, str]:
    """The versions of the libraries that the statistics of ``images`` depend on beyond the
    weights: torch (the extractor's arithmetic), torch-fidelity (the Inception network and its
    resize) or timm (a timm encoder's model code), and numpy where the images are drawn by the
    built-in generator (its random streams and float rules; the generator's key is its
    description, not its pixels).

    The library is read as every versions record reads a distribution
    (``repackctl.versions.installed_version``: no import needed, ``not installed`` when
    absent); torch and numpy as their modules name themselves (``torch.__version__`` keeps the
    build tag, ``2.14.1+cu130``, that the distribution's version lacks): the keys of
    statistics already cached compare these values."""
    import torch

    found = {"torch": torch.__version__}
    library = "torch-fidelity" if extractor == "inception" else "timm"
    found[library] = installed_version(library)
    if images.kind == "builtin":
        found["numpy"] = np.__version__
    return found


def stats_key_doc(images: ImageSet, extractor: str, inception: Any, encoder: Any) -> dict:
    """What cached reference statistics are made from, all compared before one is reused:
    the images' content hash, number, resolution and subset rule, the extractor and its
    weights' sha256, for an encoder its attributes (architecture, normalisation, token rule;
    not the weights' file name) and the feature rule, and :func:`software_versions`."""
    if extractor == "inception":
        info = inception.info()
        name, weights = "inception-v3-compat", info["weights_sha256"]
    else:
        name, weights = f"encoder:{encoder.spec.entry_id()}", encoder.spec.weights_sha256
    key_doc: dict[str, Any] = {
        "format": STATS_FORMAT,
        "source_sha256": images.sha256,
        "n": images.n,
        "resolution": images.resolution,
        "extractor": name,
        "weights_sha256": weights,
        "software": software_versions(images, extractor),
    }
    if extractor != "inception":
        from repackctl.metrics.encoder_fd import FEATURE_RULE

        spec = {k: v for k, v in encoder.spec.attrs().items() if k != "weights"}
        key_doc.update(feature=FEATURE_RULE, encoder_spec=spec)
    subset = images.meta.get("subset") or {"rule": "all"}
    if subset["rule"] != "all":  # how the images were chosen (their hash follows the indices)
        key_doc["subset_rule"] = subset["rule"]
    return json.loads(json.dumps(key_doc, sort_keys=True, default=str))  # as read back


def cached_reference_stats(
    images: ImageSet,
    *,
    folder: Path,
    extractor: str,
    inception: Any = None,
    encoder: Any = None,
    device: Any = None,
    progress: ProgressFactory = null_progress,
    weights_path: str | None = None,
) -> StatsResult:
    """Statistics of ``images`` for ``extractor`` ("inception" or "encoder"), cached by content
    (:func:`stats_key_doc`); ``weights_path``: the encoder's weights file, recorded (absolute)
    in the metadata."""
    key_doc = stats_key_doc(images, extractor, inception, encoder)
    subset = images.meta.get("subset") or {"rule": "all"}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    path = folder / f"{_slug(images.label)}-{extractor}-{key}.npz"
    reused = _reuse_cached_stats(path, key_doc)
    if reused is not None:
        return reused
    _check_stats_folder(folder)
    metadata = {
        **key_doc,
        "kind": extractor,
        "source": images.label,
        "source_kind": images.kind,
    }
    if subset["rule"] != "all":
        metadata["subset"] = subset
    if extractor == "inception":
        from repackctl.metrics.generative import compute_inception_stats

        acc = compute_inception_stats(
            images, inception, batch_size=images.batch_size, progress=progress
        )
        metadata["extractor_info"] = inception.info()
        write_stats_bundle(path, acc["fid"], metadata, acc["sfid"])
    else:
        from repackctl.metrics.encoder_fd import FEATURE_RULE, encoder_feature_stats

        acc = encoder_feature_stats(
            encoder,
            images,
            batch_size=images.batch_size,
            device=device,
            progress=progress,
            description="encoder: reference",
        )
        metadata.update(feature=FEATURE_RULE, encoder=encoder.spec.attrs())
        if weights_path is not None:
            metadata["weights_path"] = weights_path
        write_stats_bundle(path, acc, metadata)
    return StatsResult(path, False, read_stats_bundle(path), metadata)


# --------------------------------------------------------------------------- metrics selection
def _check_inception_given(given: str | None, wanted: list[str]) -> None:
    """Refuse ``--inception-weights`` where no chosen metric uses Inception (``auto`` is fd on
    the built-in data): a missing or wrong file was ignored without a word."""
    if given is not None and not any(m in INCEPTION_METRICS for m in wanted):
        raise ConfigError(
            f"evaluate.inception_weights ({given}) is given, but the metrics "
            f"({', '.join(wanted)}) do not use Inception: it would be ignored",
            "drop --inception-weights, or pass --metrics fid (or is, kid, prc, sfid)",
        )


def fd_settings_given(cfg: Any) -> list[str]:
    """``evaluate.fd_encoder (dinov3)``, ``evaluate.fd_weights (random)``: the FD encoder
    settings that differ from their defaults (they change only the ``fd`` metric)."""
    given = []
    if cfg.fd_encoder != type(cfg).model_fields["fd_encoder"].default:
        given.append(f"evaluate.fd_encoder ({cfg.fd_encoder})")
    if cfg.fd_weights is not None:
        given.append(f"evaluate.fd_weights ({cfg.fd_weights})")
    return given


def fd_weights_path(cfg: Any) -> str | None:
    """The absolute path of ``evaluate.fd_weights`` when it names a file (a relative path is
    resolved against the current folder, as the encoder read it); None for ``random``, the
    encoder's default or a name that is no file. Recorded beside the weights' sha256, which
    is what two results are compared by."""
    given = cfg.fd_weights
    if given is None or given == "random":
        return None
    path = Path(given).expanduser()
    return str(path.resolve()) if path.is_file() else None


def _check_fd_given(cfg: Any, wanted: list[str]) -> None:
    """Refuse ``--fd-encoder`` / ``--fd-weights`` where no chosen metric is ``fd``: an FD
    encoder that was asked for (a misspelt one, missing weights) was ignored without a word,
    and the table showed Inception scores instead."""
    given = fd_settings_given(cfg)
    if given and "fd" not in wanted:
        raise ConfigError(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} given, but the metrics "
            f"({', '.join(wanted)}) do not use the FD encoder: it would be ignored",
            "drop --fd-encoder / --fd-weights, or add fd to --metrics (e.g. --metrics fid,fd)",
        )


#: the metrics that are a Fréchet distance (``evaluate.fd_method`` is their algorithm)
FRECHET_METRICS = ("fid", "sfid", "fd")


def _check_fd_method_used(cfg: Any, wanted: list[str], flags: tuple[str, ...]) -> None:
    """Refuse an ``--fd-method`` flag where no chosen metric is a Fréchet distance (IS, KID,
    precision/recall): it changed nothing, yet the card named it, and a rerun without it was
    refused as another protocol. One from the environment or a config file is every
    evaluation's and is not refused (as `evaluate recon` does)."""
    if "fd_method" in flags and not set(wanted) & set(FRECHET_METRICS):
        raise ConfigError(
            f"--fd-method {cfg.fd_method} is given, but the metrics ({', '.join(wanted)}) hold "
            "no Fréchet distance: it would be ignored; nothing was scored",
            "drop --fd-method, or add fid, sfid or fd to --metrics (e.g. --metrics fid,kid)",
        )


def _check_cache_flag_used(settings: Settings, gen: Generated, flags: tuple[str, ...]) -> None:
    """Refuse a ``--cache`` flag that decides nothing: with ``--ref FILE`` or ``--ref builtin``
    the reference is not read from a cache, with ``--stats-dir`` its statistics are not kept
    beside it, and samples that exist were made already (a checkpoint sampled now may read its
    default prompts there). A cache from the environment or a config file is every command's
    and is not refused (as `evaluate stats` does)."""
    cfg = settings.evaluate
    if "cache" not in flags or not cfg.stats_dir or cfg.reference is None or gen.sampled_now:
        return
    raise ConfigError(
        f"--cache {settings.cache} is given, but the reference --ref {cfg.reference} is not "
        f"read from a cache and its statistics go to --stats-dir {cfg.stats_dir}: it would be "
        "ignored; nothing was scored",
        "drop --cache; or drop --stats-dir to keep the statistics in <cache>-reference-stats; "
        "or pass --ref-cache ENTRY (instead of --ref) to score against an entry of that cache",
    )


def _seed_draws(ref: Reference, wanted: list[str], cfg: Any) -> bool:
    """Whether the seed draws anything in scoring samples that exist: the built-in reference
    images (read by every metric but IS) or the FD encoder's random weights."""
    builtin = ref.images is not None and ref.images.kind == "builtin"
    return (builtin and bool(set(wanted) - {"is"})) or (
        "fd" in wanted and cfg.fd_weights == "random"
    )


def check_run_flags_used(
    settings: Settings, gen: Generated, ref: Reference, wanted: list[str], flags: tuple[str, ...]
) -> None:
    """Refuse ``--precision`` / ``--seed`` flags that scoring samples made earlier ignores.

    They say how samples are made: for samples made now (a run or checkpoint with
    ``--samples N``) they did. Samples that exist were made at the precision and seed on their
    card, and scoring computes nothing at ``--precision``; ``--seed`` still draws the built-in
    reference images and ``--fd-weights random`` (:func:`_seed_draws`). A seed or precision
    from the environment or a config file is every command's and is not refused."""
    if gen.sampled_now:
        return
    made = f"the samples {gen.images.label} were made already"
    if "precision" in flags:
        recorded = gen.protocol.get("precision")
        at = f"at {recorded}" if recorded else "their precision is not recorded"
        raise ConfigError(
            f"--precision {settings.precision} is given, but {made} ({at}) and scoring them "
            "computes nothing at that precision: it would be ignored; nothing was scored",
            "drop --precision; to score samples made at another precision, sample them "
            "(`repackctl evaluate fid RUN --samples N --precision P`, or `repackctl sample`)",
        )
    if "seed" in flags and not _seed_draws(ref, wanted, settings.evaluate):
        recorded = gen.protocol.get("seed")
        seeded = f" with seed {recorded}" if recorded is not None else ""
        raise ConfigError(
            f"--seed {settings.seed} is given, but {made}{seeded}, and this evaluation draws "
            f"nothing with it (reference {ref.label}, metrics {', '.join(wanted)}): it would "
            "be ignored; nothing was scored",
            "drop --seed (it picks the images of --ref builtin and the FD encoder of "
            "--fd-weights random); to score samples of another seed, sample them "
            "(`repackctl evaluate fid RUN --samples N --seed S`)",
        )


def choose_metrics(requested: str, ref: Reference) -> list[str]:
    """Parse ``--metrics``; ``auto`` = fd for the built-in dataset, else what the reference allows."""
    if requested.strip().lower() == "auto":
        if ref.builtin_data:
            return ["fd"]
        if ref.kind == "stats":
            if "fd" in ref.stats:
                return ["fd"]
            return [m for m in ("fid", "sfid", "is") if m in ref.stats or m == "is"]
        wanted = ["fid", "sfid", "is"]
        if ref.kind == "adm" and ref.adm.mu_s is None:
            wanted.remove("sfid")
        if ref.images is not None:
            wanted += ["kid", "prc"]
        return wanted
    wanted = [m.strip().lower() for m in requested.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ALL_METRICS]
    if unknown or not wanted:
        raise ConfigError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}",
            hint=f"choose from {', '.join(ALL_METRICS)} (comma separated), or auto",
        )
    if ref.images is None:
        need_images = [m for m in wanted if m in ("kid", "prc")]
        if ref.kind == "stats":
            need_images += [m for m in wanted if m not in ref.stats and m != "is"]
        elif "fd" in wanted:  # an ADM batch without arr_0: Inception statistics only
            need_images.append("fd")
        if need_images:
            raise ConfigError(
                f"{', '.join(need_images)} need reference images (or statistics of that "
                f"kind), but {ref.label} holds only statistics",
                hint="pass reference images (an image folder, --ref-cache ENTRY) or drop them",
            )
    # one order (ALL_METRICS'), whatever order they were asked in: `--metrics fd,fid` is the
    # same protocol as `--metrics fid,fd` (the scores do not depend on it)
    return [m for m in ALL_METRICS if m in wanted]


# --------------------------------------------------------------------------- evaluate fid
@dataclass
class EvaluateResult:
    """What `evaluate fid` computed and where it wrote it."""

    metrics: dict[str, Any]
    card: dict
    path: Path
    messages: list[str]
    n_generated: int
    n_reference: int | None


def _metrics_path(settings: Settings, gen: Generated) -> Path:
    """``--out``, else ``metrics.json`` beside the samples; the scores of a subset (``--samples
    N`` below the count) go to ``metrics-nN.json``, so they never replace the whole set's."""
    if settings.evaluate.out is not None:
        return explicit_metrics_path(settings.evaluate.out)
    name = METRICS_JSON
    if gen.images.n < gen.images.meta.get("available", gen.images.n):
        stem, suffix = Path(METRICS_JSON).stem, Path(METRICS_JSON).suffix
        name = f"{stem}-n{gen.images.n}{suffix}"
    if gen.images.kind == "npz" and Path(gen.images.label).name != SAMPLES_NPZ:
        return gen.folder / f"{Path(gen.images.label).stem}-{name}"
    return gen.folder / name


def made_with(protocol: dict) -> dict[str, Any]:
    """The card fields :data:`MADE_WITH_FIELDS` from a samples folder's ``protocol.json``.

    The checkpoint alone does not say how samples were made: autoguidance by another run, the
    EMA or the raw weights, a refiner after the decoder and the pack decoder itself each change
    the score (a refiner several-fold), so a score without them reads as plain CFG of the EMA
    weights. A field the samples' ``protocol.json`` does not record (external samples, older
    cards, ``guide`` of text-to-image cards) is left out, so that "not recorded" never reads
    as "none" (``guide``/``refiner`` null: sampled without one).
    """
    guide = protocol.get("guide")
    if isinstance(guide, dict) and guide.get("checkpoint"):
        ckpt = str(guide["checkpoint"])
        guide = {
            "run": run_root_of(Path(ckpt)).name,
            "checkpoint": ckpt,
            "sha256": guide.get("sha256"),
        }
    refiner = protocol.get("refiner")
    if isinstance(refiner, str):  # text-to-image cards record the refiner's path only
        refiner = {"checkpoint": refiner, "sha256": None}
    elif isinstance(refiner, dict):
        refiner = {"checkpoint": refiner.get("checkpoint"), "sha256": refiner.get("sha256")}
    pack = protocol.get("pack")
    decoder = (
        {"checkpoint": pack.get("checkpoint"), "pack_id": pack.get("pack_id")}
        if isinstance(pack, dict) and pack.get("checkpoint")
        else None
    )
    made = {"weights": protocol.get("weights"), "guide": guide or None}
    made |= {"refiner": refiner or None, "pack_decoder": decoder}
    recorded_as = {
        "weights": "weights",
        "guide": "guide",
        "refiner": "refiner",
        "pack_decoder": "pack",
    }
    return {k: v for k, v in made.items() if recorded_as[k] in protocol}


def guide_text(guide: dict | None) -> str | None:
    """``autoguidance by <run> <checkpoint>`` for a card's (or protocol's) ``guide``; None
    for plain classifier-free guidance. Printed wherever the guidance scale is, so that
    autoguidance never reads as CFG."""
    if not guide or not guide.get("checkpoint"):
        return None
    ckpt = Path(str(guide["checkpoint"]))
    return f"autoguidance by {run_root_of(ckpt).name} {ckpt.name}"


def _card(
    gen: Generated, ref: Reference, *, evaluator: str, extractor: str, extractor_sha: str, n: int
) -> dict:
    from repackctl.metrics.protocol import EXTERNAL_SAMPLER, git_revision, package_versions

    p = gen.protocol
    card: dict[str, Any] = {k: p.get(k) for k in GENERATION_FIELDS}
    card.update(made_with(p))
    if not card["sampler"]:  # samples not made by repackctl: what is unknown stays null
        external = {
            "sampler": EXTERNAL_SAMPLER,
            "label_scheme": "unknown",
            "precision": "unknown",
            "checkpoint": f"external samples {gen.images.label}",
            "checkpoint_sha256": gen.images.sha256,
        }
        card.update({k: v for k, v in external.items() if card.get(k) in (None, "")})
    # an older samples card that lacks it: the precision the samples were made at is unknown
    # (this command's --precision computes nothing here: :func:`check_run_flags_used`)
    card["precision"] = card["precision"] or NOT_RECORDED
    card.update(
        evaluator=evaluator,
        feature_extractor=extractor,
        feature_extractor_sha256=extractor_sha,
        reference_file=ref.label,
        reference_sha256=ref.sha256,
        reference_protocol_differences=list(ref.differences),
        num_samples=n,
        sample_subset=gen.images.meta.get("subset"),
        versions=package_versions(),
        git_revision=git_revision(),
    )
    return card


@dataclass
class _Scores:
    """What the metric families computed, gathered for ``metrics.json`` and the card."""

    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extractors: list[tuple[str, str]] = field(default_factory=list)  # (description, sha256)
    evaluators: list[str] = field(default_factory=list)
    n_ref: int | None = None


def check_adm_weights(ref: Reference, wanted: list[str], info: dict, force: bool) -> list[str]:
    """Refuse FID/sFID against an ADM reference batch with Inception weights other than
    torch-fidelity's official file, unless forced (then the card records it). The batch's
    mu/sigma are TensorFlow statistics of the official Inception: the samples' features from
    other weights live in another space, and the score compared the two (KID and
    precision/recall read the batch's images through the same extractor and stay valid).
    Returns the warning to print when forced."""
    from repackctl.metrics.inception import INCEPTION_URL, OFFICIAL_SHA256_PREFIX

    frechet = sorted(set(wanted) & {"fid", "sfid"})
    if not frechet or info["weights_official"]:
        return []
    diff = (
        f"Inception weights: reference {OFFICIAL_SHA256_PREFIX}… (the official file, whose "
        f"TensorFlow statistics the ADM batch holds), samples {info['weights_sha256'][:12]}… "
        f"({info['weights_path']})"
    )
    if not force:
        raise ConfigError(
            f"{', '.join(frechet)} against the ADM reference batch {ref.label} would compare "
            f"its official-Inception statistics with features of the Inception weights "
            f"{info['weights_path']} (sha256 {info['weights_sha256'][:12]}…, not "
            f"torch-fidelity's official {OFFICIAL_SHA256_PREFIX}…): the score would be "
            "meaningless; nothing was scored",
            f"pass --inception-weights the official file ({INCEPTION_URL}), or --ref reference "
            "images (scored through the same weights), or --force-reference to score anyway "
            "(the card records it)",
        )
    ref.differences.append(diff)
    return [f"Warning: reference protocol differs ({diff})"]


@dataclass
class _Extractors:
    """The feature extractors of the metrics wanted, made (their weights read and hashed) and
    checked against the reference before anything is scored: a refusal of another feature
    space, weights or protocol comes before the user waits for the scores."""

    device: Any
    inception_wanted: list[str] = field(default_factory=list)
    inception: Any = None  # InceptionExtractor, when an Inception metric is wanted
    encoder: Any = None  # the fd encoder, when fd is wanted


def _prepare_extractors(
    settings: Settings,
    gen: Generated,
    ref: Reference,
    wanted: list[str],
    device: Any,
    messages: list[str],
) -> _Extractors:
    """Make the extractors of ``wanted`` and refuse a reference whose statistics (or ADM batch)
    live in another space than theirs, unless forced (the warning goes to ``messages``)."""
    from repackctl.metrics.inception import InceptionExtractor

    cfg = settings.evaluate
    tools = _Extractors(device, [m for m in wanted if m in INCEPTION_METRICS])
    said = len(ref.messages)
    if tools.inception_wanted:
        tools.inception = InceptionExtractor(
            cfg.inception_weights, device=device, batch_size=cfg.batch_size
        )
        _check_inception_reference(ref, tools, messages, gen.images.resolution, cfg.force_reference)
    if "fd" in wanted:
        tools.encoder = make_fd_encoder(settings, gen.images.resolution, device)
        _check_encoder_reference(settings, gen, ref, tools.encoder)
    messages += ref.messages[said:]  # forced protocol differences, said once
    return tools


def _check_inception_reference(
    ref: Reference, tools: _Extractors, messages: list[str], resolution: int, force: bool
) -> None:
    """Refuse an ADM batch for FID/sFID with unofficial Inception weights, or statistics made
    at another resolution or with other Inception weights (compared by sha256), unless forced."""
    info = tools.inception.info()
    if ref.kind == "adm":
        messages += check_adm_weights(ref, tools.inception_wanted, info, force)
    elif ref.kind == "stats":
        want = {
            "resolution": resolution,
            "extractor": "inception-v3-compat",
            "weights_sha256": info["weights_sha256"],
        }
        for kind in ("fid", "sfid"):
            if kind in ref.stats:
                check_protocol(ref, ref.stats[kind].metadata, want, force)


def _check_encoder_reference(
    settings: Settings, gen: Generated, ref: Reference, encoder: Any
) -> None:
    """Refuse statistics that hold no encoder features, whose features have another width than
    the encoder's (nothing to compare, even forced), or that were made at another resolution or
    with another encoder or weights (compared by sha256), unless forced."""
    if ref.kind != "stats":
        return  # reference images go through this encoder
    if "fd" not in ref.stats:
        raise ConfigError(
            f"{ref.label} holds Inception statistics; fd needs encoder statistics",
            hint=f"make them with `repackctl evaluate stats SOURCE --extractor fd "
            f"--fd-encoder {settings.evaluate.fd_encoder}`",
        )
    stats = ref.stats["fd"]
    want = {
        "resolution": gen.images.resolution,
        "extractor": f"encoder:{encoder.spec.entry_id()}",
        "weights_sha256": encoder.spec.weights_sha256,
    }
    width = int(np.asarray(stats.mu).shape[0])
    if width != encoder.spec.dim:
        raise ConfigError(
            f"{ref.label} holds {width}-dimensional features of "
            f"{stats.metadata.get('extractor', 'another encoder')}, the fd encoder "
            f"{encoder.spec.id} gives {encoder.spec.dim}: they cannot be compared; nothing "
            "was scored",
            hint="make the reference statistics with this encoder (`repackctl evaluate stats "
            "SOURCE --extractor fd` with the same --fd-encoder and --fd-weights)",
        )
    check_protocol(ref, stats.metadata, want, settings.evaluate.force_reference)


def _scoring_identity(
    tools: _Extractors, wanted: list[str], fd_method: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``fd_detail`` fields, the card's scoring fields) this evaluation will record, known
    from its extractors before anything is scored (:func:`check_replaceable` compares them)."""
    from repackctl.metrics.encoder_fd import FEATURE_RULE

    extractors, evaluators = [], []
    if tools.inception is not None:
        info = tools.inception.info()
        extractors.append((info["name"], info["weights_sha256"]))
        evaluators.append(inception_evaluator(info["name"], tools.inception_wanted, fd_method))
    fd_detail: dict[str, Any] = {}
    if tools.encoder is not None:
        spec = tools.encoder.spec.attrs()
        fd_detail = {"encoder": spec, "feature": FEATURE_RULE, "fd_method": fd_method}
        extractors.append(encoder_extractor(spec))
        evaluators.append(ENCODER_EVALUATOR)
    card = {
        "evaluator": "; ".join(evaluators),
        "feature_extractor": "; ".join(e for e, _ in extractors),
        "feature_extractor_sha256": extractors[0][1],
    }
    return fd_detail, card


#: the card's evaluator of the ``fd`` metric
ENCODER_EVALUATOR = "repackctl.metrics.encoder_fd (pooled patch tokens, Fréchet distance)"


def encoder_extractor(spec: dict) -> tuple[str, str]:
    """(the card's description of the fd encoder, the sha256 of its weights)."""
    described = f"encoder {spec['id']} ({spec['arch']}, weights {spec['weights']})"
    return described, spec["weights_sha256"] or spec["weights"]


def _inception_reference(
    ref: Reference,
    wanted: list[str],
    sdir: Path,
    extractor: Any,
    progress: ProgressFactory,
    messages: list[str],
) -> Any:
    """What the Inception metrics compare against: ADM batch, stats, images or nothing (IS);
    :func:`_check_inception_reference` has checked the first two."""
    if ref.kind == "adm":
        return ref.adm
    if ref.kind == "stats":
        return {k: v for k, v in ref.stats.items() if k in ("fid", "sfid")}
    if set(wanted) & {"kid", "prc"}:
        return ref.images  # features are needed, not only statistics
    if set(wanted) & {"fid", "sfid"}:
        st = cached_reference_stats(
            ref.images, folder=sdir, extractor="inception", inception=extractor,
            progress=progress,
        )  # fmt: skip
        messages.append(_stats_message(st))
        return st.stats
    return None  # IS alone needs no reference


def inception_evaluator(extractor: str, wanted: list[str], fd_method: str) -> str:
    """The card's evaluator of the Inception metrics ``wanted``: the Fréchet distance
    algorithm is named only where FID or sFID is computed (KID, IS and precision/recall
    compute none, whatever ``evaluate.fd_method`` says)."""
    frechet = f", {fd_method} Fréchet distance" if set(wanted) & {"fid", "sfid"} else ""
    return (
        f"repackctl.metrics.generative (torch-fidelity {extractor.split()[1]} "
        f"IS/KID/PRC functions{frechet})"
    )


def _add_inception(
    scores: _Scores,
    settings: Settings,
    gen: Generated,
    ref: Reference,
    tools: _Extractors,
    sdir: Path,
    progress: ProgressFactory,
    messages: list[str],
) -> None:
    """Inception-based metrics (FID, sFID, IS, KID, precision/recall) into ``scores``."""
    from repackctl.metrics.generative import compute_generative_metrics

    cfg, extractor, wanted = settings.evaluate, tools.inception, tools.inception_wanted
    reference = _inception_reference(ref, wanted, sdir, extractor, progress, messages)
    if reference is None:
        res = _is_only(gen, extractor, cfg, progress)
    else:
        res = compute_generative_metrics(
            gen.images,
            reference,
            wanted,
            extractor=extractor,
            device=str(tools.device),
            batch_size=cfg.batch_size,
            fd_method=cfg.fd_method,
            progress=progress,
        )
    scores.notes += res.pop("notes", [])
    info = res.pop("extractor")
    scores.n_ref = res.get("n_reference")
    scores.metrics.update(res)
    scores.metrics["inception"] = info
    scores.extractors.append((info["name"], info["weights_sha256"]))
    scores.evaluators.append(inception_evaluator(info["name"], wanted, cfg.fd_method))


def _add_encoder_fd(
    scores: _Scores,
    settings: Settings,
    gen: Generated,
    ref: Reference,
    tools: _Extractors,
    sdir: Path,
    progress: ProgressFactory,
    messages: list[str],
) -> None:
    """Fréchet distance in the frozen encoder's feature space into ``scores``."""
    res = _encoder_fd(settings, gen, ref, tools, sdir, progress, messages)
    scores.notes += res.pop("notes", [])
    spec = res["encoder"]
    scores.metrics["fd"] = res.pop("fd")
    scores.metrics["fd_detail"] = {
        "encoder": spec,
        "feature": res["feature"],
        "fd_method": res["fd_method"],
        "n_generated": res["n_generated"],
        "n_reference": res["n_reference"],
    }
    path = fd_weights_path(settings.evaluate)
    if path is not None:  # where a weights file was read (spec: its name and sha256)
        scores.metrics["fd_detail"]["weights_path"] = path
    scores.n_ref = scores.n_ref if scores.n_ref is not None else res["n_reference"]
    scores.extractors.append(encoder_extractor(spec))
    scores.evaluators.append(ENCODER_EVALUATOR)


def run_evaluate_fid(
    settings: Settings,
    progress: ProgressFactory = null_progress,
    sampling_given: tuple[str, ...] = (),
    flags_given: tuple[str, ...] = (),
) -> EvaluateResult:
    """Score generated images against the reference and write ``metrics.json``;
    ``sampling_given``: the sampling settings the user gave (``_resolve_source``);
    ``flags_given``: which of ``seed``, ``precision``, ``fd_method`` and ``cache`` were given
    as flags (:func:`check_run_flags_used`, :func:`_check_fd_method_used`,
    :func:`_check_cache_flag_used`)."""
    from repackctl.metrics.protocol import validate_card, write_metrics_json
    from repackctl.runtime import resolve_device

    out_given = settings.evaluate.out is not None
    if out_given:  # before a checkpoint is sampled: its samples folder is not needed to know
        check_metrics_target(explicit_metrics_path(settings.evaluate.out), out_given)
        check_out_place(explicit_metrics_path(settings.evaluate.out), None)
    gen = open_generated(settings, progress, sampling_given)
    ref = open_reference(settings, gen)
    wanted = choose_metrics(settings.evaluate.metrics, ref)
    _check_inception_given(settings.evaluate.inception_weights, wanted)
    _check_fd_given(settings.evaluate, wanted)
    _check_fd_method_used(settings.evaluate, wanted, flags_given)
    _check_cache_flag_used(settings, gen, flags_given)
    check_run_flags_used(settings, gen, ref, wanted, flags_given)
    target = _metrics_path(settings, gen)
    check_metrics_target(target, out_given)  # before any scoring work
    if out_given:
        check_out_place(target, gen.folder)
    this = _identity(gen, ref, wanted)
    check_replaceable(target, this)  # another samples' or reference's result is kept
    device = resolve_device(settings.device)
    messages = gen.messages + ref.messages
    sdir = stats_dir(settings)
    tools = _prepare_extractors(settings, gen, ref, wanted, device, messages)
    fd_detail, scoring = _scoring_identity(tools, wanted, settings.evaluate.fd_method)
    # another extractor's, weights' or protocol's result is kept, before anything is scored
    check_replaceable(target, this | {"fd_detail": fd_detail}, scoring)
    scores = _Scores()
    if tools.inception is not None:
        _add_inception(scores, settings, gen, ref, tools, sdir, progress, messages)
    if tools.encoder is not None:
        _add_encoder_fd(scores, settings, gen, ref, tools, sdir, progress, messages)

    metrics = scores.metrics
    metrics.update(this)
    metrics["notes"] = scores.notes
    card = _card(
        gen,
        ref,
        evaluator="; ".join(scores.evaluators),
        extractor="; ".join(e for e, _ in scores.extractors),
        extractor_sha=scores.extractors[0][1],
        n=gen.images.n,
    )
    validate_card(card)
    check_replaceable(target, metrics, card)  # another extractor's result is kept too
    messages += _older_card_note(target, card)
    path = write_metrics_json(target, metrics, card)
    return EvaluateResult(metrics, card, path, messages, gen.images.n, scores.n_ref)


def _older_card_note(target: Path, card: dict) -> list[str]:
    """A note when the ``metrics.json`` about to be replaced (the same result recomputed:
    :func:`check_replaceable` has passed) has a card from before :data:`MADE_WITH_FIELDS`.

    Those fields come from the samples' own ``protocol.json``: the same samples (the sha256 in
    the file's identity) were made one way, so the older file holds this result, not another,
    and is replaced as before rather than refused; the note says why its card grew."""
    if not target.is_file():
        return []
    try:
        old_card = json.loads(target.read_text()).get("protocol") or {}
    except (OSError, ValueError, AttributeError):
        return []
    missing = [k for k in MADE_WITH_FIELDS if k in card and k not in old_card]
    if not missing:
        return []
    return [
        f"{target} was written by an earlier version whose card lacks {', '.join(missing)}; "
        "replaced by the same result recomputed, with them"
    ]


def _identity(gen: Generated, ref: Reference, wanted: list[str]) -> dict[str, Any]:
    """What a ``metrics.json`` is the result of: which samples, which reference, which metrics."""
    return {
        "metrics": wanted,
        "generated": {
            "path": gen.images.label,
            "sha256": gen.images.sha256,
            "n": gen.images.n,
            "resolution": gen.images.resolution,
            "subset": gen.images.meta.get("subset"),
        },
        "reference": {"path": ref.label, "sha256": ref.sha256, "kind": ref.kind},
    }


def _is_only(gen: Generated, extractor: Any, cfg: Any, progress: ProgressFactory) -> dict:
    """Inception Score alone: needs no reference at all."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from repackctl.metrics.generative import IS_SPLITS, TF_RNG_SEED, extract_inception_features

    _, feats, n = extract_inception_features(
        gen.images, extractor, keep=("logits",), stats=(), batch_size=cfg.batch_size,
        progress=progress, description="inception: generated",
    )  # fmt: skip
    if n < IS_SPLITS:
        raise DataError(f"IS with {IS_SPLITS} splits needs ≥ {IS_SPLITS} images, got {n}")
    r = isc_features_to_metric(feats["logits"], IS_SPLITS, True, TF_RNG_SEED)
    return {
        "is_mean": r["inception_score_mean"],
        "is_std": r["inception_score_std"],
        "is_splits": IS_SPLITS,
        "n_generated": n,
        "n_reference": None,
        "extractor": extractor.info(),
        "notes": [],
    }


def _stats_message(st: StatsResult) -> str:
    if st.reused:
        return f"reference statistics reused from {st.path} (same content hash)"
    return f"reference statistics computed and cached in {st.path}"


def make_fd_encoder(settings: Settings, resolution: int, device: Any) -> Any:
    from repackctl.encoders.load import make_encoder

    cfg = settings.evaluate
    enc = make_encoder(cfg.fd_encoder, cfg.fd_weights, None, resolution, settings.seed)
    return enc.to(device).eval()


def _encoder_fd(
    settings: Settings,
    gen: Generated,
    ref: Reference,
    tools: _Extractors,
    sdir: Path,
    progress: ProgressFactory,
    messages: list[str],
) -> dict:
    """FD of the samples in the fd encoder's space (:func:`_check_encoder_reference` has
    checked reference statistics; ones made with other weights are used only when forced,
    and the card records it)."""
    from repackctl.metrics.encoder_fd import compute_encoder_fd

    encoder, device = tools.encoder, tools.device
    if ref.kind == "stats":
        # forced: given as bare moments, which compute_encoder_fd does not check again
        reference: Any = ref.stats["fd"].as_stats() if ref.differences else ref.stats["fd"]
    else:
        st = cached_reference_stats(
            ref.images, folder=sdir, extractor="encoder", encoder=encoder, device=device,
            progress=progress, weights_path=fd_weights_path(settings.evaluate),
        )  # fmt: skip
        messages.append(_stats_message(st))
        reference = st.stats["fd"]
    return compute_encoder_fd(
        encoder,
        gen.images,
        reference,
        batch_size=settings.evaluate.batch_size,
        device=device,
        fd_method=settings.evaluate.fd_method,
        progress=progress,
    )


# --------------------------------------------------------------------------- evaluate stats
#: what ``--num`` / ``--resolution`` of `evaluate stats` mean when not given, per source
STATS_DEFAULTS = "--num: all images (1000 for builtin); --resolution: 256 (64 for builtin)"


def _check_stats_request(
    source: str | None, ref_cache: str | None, resolution: int | None, num: int | None
) -> None:
    """Refuse a request that would summarise another image set than the one asked for."""
    where = "pass an image folder, an images .npz, 'builtin', or --ref-cache ENTRY"
    if source is not None and ref_cache is not None:
        raise ConfigError(f"give either SOURCE ({source!r}) or --ref-cache, not both", hint=where)
    if source is None and ref_cache is None:
        raise ConfigError("say which images to summarise", hint=where)
    if source == "":
        raise ConfigError("SOURCE is an empty string (it does not mean the current folder)", where)
    for flag, value in (("--num", num), ("--resolution", resolution)):
        if value is not None and value < 1:
            raise ConfigError(
                f"{flag} {value} is not a positive number; nothing was computed",
                hint=f"pass {flag} 1 or more, or leave it out for the default ({STATS_DEFAULTS})",
            )


def _stats_images(
    settings: Settings, source: str | None, resolution: int | None, num: int | None
) -> ImageSet:
    """The images `evaluate stats` summarises (``None`` = each source's documented default)."""
    _check_stats_request(source, settings.evaluate.ref_cache, resolution, num)
    if settings.evaluate.ref_cache is not None:
        return _at_given_resolution(
            cache_image_set(settings.cache, settings.evaluate.ref_cache, num), resolution
        )
    if source == "builtin":
        return builtin_image_set(
            64 if resolution is None else resolution, 1000 if num is None else num, settings.seed
        )
    path = reference_path(source)
    if not path.exists():
        raise DataError(
            f"{path} does not exist",
            hint="pass an image folder, an images .npz, 'builtin', or --ref-cache ENTRY",
        )
    if path.is_dir():
        res = 256 if resolution is None else resolution
        return reference_folder_set(path, res, num, settings.seed)
    return _at_given_resolution(checked_reference_npz(npz_image_set(path, num), path), resolution)


def _at_given_resolution(images: ImageSet, resolution: int | None) -> ImageSet:
    """``images`` (of a cache entry or an .npz, whose size is their own), refused when a
    ``--resolution`` other than theirs was given: nothing resizes them, so the statistics would
    be of another size than asked for."""
    if resolution is not None and resolution != images.resolution:
        raise ConfigError(
            f"--resolution {resolution} was given, but the images of {images.label} are "
            f"{images.resolution} px and are summarised at their own size",
            f"drop --resolution (or pass {images.resolution}), or summarise images that are "
            f"{resolution} px (a cache entry extracted at --resolution {resolution})",
        )
    return images


def _stats_available(images: ImageSet) -> int | None:
    """How many images the source of ``images`` holds (None: the built-in data, made to any
    number)."""
    if images.kind == "cache":
        return int(images.meta["subset"]["of"])
    return images.meta.get("available")


def _stats_seed_draws(images: ImageSet, extractor: str, cfg: Any) -> bool:
    """Whether the seed draws anything in `evaluate stats`: the built-in images, a ``--num``
    subset of an image folder, or the FD encoder's random weights."""
    subset = images.kind == "image-folder" and images.n < images.meta["available"]
    return images.kind == "builtin" or subset or (extractor == "fd" and cfg.fd_weights == "random")


def _check_seed_used(
    settings: Settings, images: ImageSet, extractor: str, flags_given: tuple[str, ...]
) -> None:
    """Refuse a ``--seed`` flag where it draws nothing (:func:`_stats_seed_draws`): every seed
    summarised the same images, and the file of seed 0 was reused for seed 7. A seed from the
    environment or a config file is every command's and is not refused."""
    if "seed" not in flags_given or _stats_seed_draws(images, extractor, settings.evaluate):
        return
    if images.n == _stats_available(images):
        how = f"all its {images.n} images"
    elif images.kind == "cache":
        how = f"a class-balanced round robin of {images.n} images"
    else:
        how = f"its first {images.n} images"
    raise ConfigError(
        f"--seed {settings.seed} is given, but the statistics of {images.label} draw nothing at "
        f"random ({how}): it would be ignored; nothing was computed",
        "drop --seed: it picks only the images of 'builtin', a --num subset of an image "
        "folder, and the FD encoder of --fd-weights random",
    )


def _check_cache_used(settings: Settings, source: str | None, flags_given: tuple[str, ...]) -> None:
    """Refuse a ``--cache`` flag that decides nothing: with ``--stats-dir`` the statistics go
    there, and a SOURCE (not ``--ref-cache``) is not read from the cache. A cache from the
    environment or a config file is every command's and is not refused."""
    cfg = settings.evaluate
    if "cache" not in flags_given or not cfg.stats_dir:
        return
    if source is None or cfg.ref_cache is not None:
        return  # --ref-cache reads the cache (or _check_stats_request refuses the request)
    raise ConfigError(
        f"--cache {settings.cache} is given, but SOURCE {source!r} is not read from a cache and "
        f"the statistics go to --stats-dir {cfg.stats_dir}: it would be ignored; nothing was "
        "computed",
        "drop --cache; or drop --stats-dir to keep the statistics in <cache>-reference-stats; "
        "or pass --ref-cache ENTRY (without SOURCE) to summarise an entry of that cache",
    )


def run_evaluate_stats(
    settings: Settings,
    source: str | None,
    *,
    extractor: str = "inception",
    resolution: int | None = None,
    num: int | None = None,
    progress: ProgressFactory = null_progress,
    flags_given: tuple[str, ...] = (),
) -> StatsResult:
    """Write (or reuse) the reference statistics file of a set of images.

    ``source`` (or ``evaluate.ref_cache``) names the images; ``resolution`` / ``num`` are None
    for their defaults (:data:`STATS_DEFAULTS`) and refused below 1, and above what a folder,
    an .npz or a cache entry holds. ``flags_given``: ``"seed"`` when ``--seed`` was a flag
    (refused where the seed draws nothing), ``"cache"`` when ``--cache`` was (refused where it
    decides nothing: :func:`_check_cache_used`).
    """
    from repackctl.runtime import resolve_device

    if extractor not in ("inception", "fd"):
        raise ConfigError(f"unknown extractor {extractor!r}", hint="use inception or fd")
    cfg = settings.evaluate
    if extractor == "fd" and cfg.inception_weights is not None:
        raise ConfigError(
            f"evaluate.inception_weights ({cfg.inception_weights}) is given, but --extractor fd "
            "does not use Inception: it would be ignored",
            "drop --inception-weights, or pass --extractor inception",
        )
    fd_given = fd_settings_given(cfg)
    if extractor == "inception" and fd_given:
        raise ConfigError(
            f"{' and '.join(fd_given)} {'is' if len(fd_given) == 1 else 'are'} given, but "
            "--extractor inception does not use the FD encoder: it would be ignored",
            "drop --fd-encoder / --fd-weights, or pass --extractor fd",
        )
    _check_cache_used(settings, source, flags_given)
    device = resolve_device(settings.device)
    images = _stats_images(settings, source, resolution, num)
    more = "summarise a source with more images"
    refuse_more_than_held("--num", num, _stats_available(images), images.label, more)
    _check_seed_used(settings, images, extractor, flags_given)
    images.batch_size = cfg.batch_size
    folder = stats_dir(settings)
    if extractor == "inception":
        from repackctl.metrics.inception import InceptionExtractor

        inc = InceptionExtractor(cfg.inception_weights, device=device, batch_size=cfg.batch_size)
        return cached_reference_stats(
            images, folder=folder, extractor="inception", inception=inc, progress=progress
        )
    encoder = make_fd_encoder(settings, images.resolution, device)
    return cached_reference_stats(
        images, folder=folder, extractor="encoder", encoder=encoder, device=device,
        progress=progress, weights_path=fd_weights_path(cfg),
    )  # fmt: skip
