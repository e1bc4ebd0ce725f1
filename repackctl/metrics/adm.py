"""ADM evaluator file layouts: ``samples.npz`` and reference batches.

Follows openai/guided-diffusion ``evaluations/evaluator.py`` and ``scripts/image_sample.py``:

- a sample batch is an ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3); class labels, when
  written, are ``arr_1`` (int, (N,)). We also read ``labels`` for files made by other tools.
- a reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``) adds precomputed Inception
  statistics ``mu``/``sigma`` (pool_3, 2048-d) and ``mu_s``/``sigma_s`` (mixed_6/conv spatial,
  2023-d) to its ``arr_0`` images.

Everything is read with ``allow_pickle=False``. ``arr_0`` of a 50k × 256² batch is ~9.8 GB, so
:func:`iter_npz_images` streams it from the zip member in batches instead of loading it whole,
and :func:`write_samples_npz` accepts an iterable of batches and writes them as they come.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from repackctl.errors import DataError
from repackctl.files import sha256_file
from repackctl.metrics.frechet import NPZ_READ_ERRORS, atomic_path

if TYPE_CHECKING:
    import torch

#: what metric functions accept as a set of images: one uint8 (N, H, W, 3) array or tensor, an
#: iterable of such batches, or the path of a samples .npz (streamed)
ImagesLike = Union[np.ndarray, "torch.Tensor", Iterable[np.ndarray], str, Path]

IMAGES_KEY = "arr_0"
LABELS_KEYS = ("arr_1", "labels")


def _check_images(batch: np.ndarray, where: str) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise DataError(
            f"{where}: images must be uint8 (N, H, W, 3), got {batch.dtype} {batch.shape}",
            hint="convert [-1, 1] floats with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8)"
            " and NCHW with .transpose(0, 2, 3, 1)",
        )
    return batch


# --------------------------------------------------------------------------- writing
def write_samples_npz(
    path: str | Path,
    images: np.ndarray | Iterable[np.ndarray],
    labels: np.ndarray | None = None,
    *,
    num: int | None = None,
) -> Path:
    """Write ``arr_0`` (and ``arr_1`` labels) in the ADM layout, atomically.

    ``images`` is one uint8 (N, H, W, 3) array or an iterable of such batches; for an iterable,
    ``num`` (total N) is required so the header can be written before the data.
    """
    path = Path(path)
    if isinstance(images, np.ndarray):
        images = _check_images(images, str(path))
        num, batches, shape = images.shape[0], [images], images.shape[1:]
    else:
        if num is None:
            raise DataError("write_samples_npz needs num= when images come as batches")
        it = iter(images)
        first = next(it, None)
        if first is None:
            raise DataError(f"{path}: no images to write")
        first = _check_images(first, str(path))
        shape = first.shape[1:]
        batches = _chain([first], it)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (num,) or labels.dtype.kind not in "iu":
            raise DataError(
                f"labels must be integers of shape ({num},), got {labels.dtype} {labels.shape}"
            )
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(IMAGES_KEY + ".npy", "w", force_zip64=True) as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (num, *shape)}
                np.lib.format.write_array_header_1_0(f, header)
                written = 0
                for batch in batches:
                    batch = _check_images(batch, str(path))
                    if batch.shape[1:] != shape:
                        raise DataError(f"batch of shape {batch.shape[1:]} differs from {shape}")
                    if written + batch.shape[0] > num:
                        raise DataError(f"more than num={num} images were given")
                    f.write(np.ascontiguousarray(batch).tobytes())
                    written += batch.shape[0]
                if written != num:
                    raise DataError(f"{written} images were given but num={num}")
            if labels is not None:
                with zf.open(LABELS_KEYS[0] + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, labels.astype(np.int64), allow_pickle=False)
    return path


def _chain(head: list[np.ndarray], tail: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield from head
    yield from tail


# --------------------------------------------------------------------------- reading
#: what to do about an .npz that cannot be read
REWRITE_NPZ = (
    "the file is damaged: write it again (a samples folder: the same `repackctl sample` "
    "command; a reference batch: download it again)"
)


def unreadable_npz(path: Path, why: object) -> DataError:
    """The error for an ``.npz`` that a damaged zip, CRC or ``.npy`` header makes unreadable."""
    return DataError(f"{path} is not a readable .npz file ({why})", hint=REWRITE_NPZ)


def _open_member_header(zf: zipfile.ZipFile, key: str, path: Path):
    try:
        f = zf.open(key + ".npy")
    except KeyError as e:
        raise DataError(
            f"{path} has no {key!r} array", hint="ADM sample files keep images in arr_0"
        ) from e
    except NPZ_READ_ERRORS as e:  # a damaged local header
        raise unreadable_npz(path, e) from None
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except NPZ_READ_ERRORS as e:
        f.close()
        raise unreadable_npz(path, e) from None
    return f, shape, fortran, dtype


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e) from None


def npz_images_shape(path: str | Path) -> tuple[int, ...]:
    """Shape of ``arr_0`` without reading its data."""
    path = Path(path)
    with _open_zip(path) as zf:
        f, shape, _, _ = _open_member_header(zf, IMAGES_KEY, path)
        f.close()
    return tuple(shape)


def _read_exactly(f: Any, size: int, path: Path, start: int) -> bytes:
    """``size`` bytes of the member ``f``; a damaged or short member is a DataError naming it."""
    try:
        buf = f.read(size)
    except NPZ_READ_ERRORS as e:  # Bad CRC-32, a damaged deflate stream
        raise unreadable_npz(path, e) from None
    if len(buf) != size:
        raise DataError(f"{path}: arr_0 is truncated at image {start}", hint=REWRITE_NPZ)
    return buf


def iter_npz_images(path: str | Path, batch_size: int = 256) -> Iterator[np.ndarray]:
    """Stream ``arr_0`` of an ``.npz`` as uint8 (b, H, W, 3) batches without loading it whole."""
    path = Path(path)
    with _open_zip(path) as zf:
        f, shape, fortran, dtype = _open_member_header(zf, IMAGES_KEY, path)
        with f:
            if dtype != np.uint8 or fortran or len(shape) != 4 or shape[-1] != 3:
                raise DataError(
                    f"{path}: arr_0 must be uint8 (N, H, W, 3) in C order, got {dtype} {shape}"
                )
            per_image = int(np.prod(shape[1:]))
            for start in range(0, shape[0], batch_size):
                b = min(batch_size, shape[0] - start)
                buf = _read_exactly(f, b * per_image, path, start)
                yield np.frombuffer(buf, dtype=np.uint8).reshape(b, *shape[1:])


def read_samples_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``arr_0`` (uint8 (N, H, W, 3)) and labels (``arr_1`` or ``labels``; ``None`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if IMAGES_KEY not in z.files:
                raise DataError(
                    f"{path} has no arr_0", hint="ADM sample files keep images in arr_0"
                )
            images = _check_images(z[IMAGES_KEY], str(path))
            key = next((k for k in LABELS_KEYS if k in z.files), None)
            labels = z[key] if key else None
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e) from None
    return images, labels


@dataclass
class AdmReference:
    """An ADM reference batch: precomputed TF-Inception statistics and (optionally) images."""

    path: Path
    sha256: str
    mu: np.ndarray  # (2048,)
    sigma: np.ndarray  # (2048, 2048)
    mu_s: np.ndarray | None  # (2023,)
    sigma_s: np.ndarray | None  # (2023, 2023)
    num_images: int  # 0 when the file has no arr_0

    def iter_images(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """Stream the reference images (needed for KID and precision/recall)."""
        if not self.num_images:
            raise DataError(
                f"{self.path} holds statistics only, no arr_0 images",
                hint="KID and precision/recall need reference images; drop them or use a "
                "reference batch that includes arr_0",
            )
        return iter_npz_images(self.path, batch_size)


def read_reference_batch(path: str | Path) -> AdmReference:
    """Read an ADM reference batch (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"reference batch {path} does not exist",
            hint="ADM's ImageNet 256 reference is VIRTUAL_imagenet256_labeled.npz from "
            "openai/guided-diffusion evaluations/README.md",
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z.files or "sigma" not in z.files:
                raise DataError(
                    f"{path} has no mu/sigma: not an ADM reference batch",
                    hint="pass reference images instead; statistics are then computed",
                )
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            has_s = "mu_s" in z.files and "sigma_s" in z.files
            mu_s = z["mu_s"].astype(np.float64) if has_s else None
            sigma_s = z["sigma_s"].astype(np.float64) if has_s else None
            has_images = IMAGES_KEY in z.files
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e) from None
    num = npz_images_shape(path)[0] if has_images else 0
    return AdmReference(path, sha256_file(path), mu, sigma, mu_s, sigma_s, num)


# --------------------------------------------------------------------------- image inputs
def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "detach"))


def count_images(images: Any) -> int | None:
    """Number of images in an :data:`ImagesLike`, when known without reading it (else None)."""
    if _is_array(images):
        return int(images.shape[0])
    if isinstance(images, str | Path):
        return npz_images_shape(images)[0]
    if isinstance(images, AdmReference):
        return images.num_images
    if isinstance(images, list | tuple) and all(_is_array(b) for b in images):
        return sum(int(b.shape[0]) for b in images)  # a list of batches
    return None


def iter_image_batches(images: ImagesLike, batch_size: int = 64) -> Iterator[Any]:
    """uint8 (b, H, W, 3) batches from an array/tensor, a samples .npz path, or an iterable."""
    if _is_array(images):
        if images.ndim != 4:
            raise DataError(f"images must be (N, H, W, 3), got shape {tuple(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
    elif isinstance(images, str | Path):
        yield from iter_npz_images(images, batch_size)
    else:
        yield from images
