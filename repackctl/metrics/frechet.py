"""Fréchet distance between Gaussians, streaming feature statistics, stats files, content hashes.

The Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule…"):

    FD = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

``method="sqrtm"`` (default) follows the ADM evaluator (openai/guided-diffusion
``evaluations/evaluator.py``, ``FIDStatistics.frechet_distance``) and pytorch-fid step for step:
``scipy.linalg.sqrtm(S1 @ S2)``; if the result is not finite, retry with ``eps·I`` added to both
covariances; if it is complex, its diagonal's imaginary part must be ≈ 0 (|imag| ≤ 1e-3) and only
the real part is kept. ``method="cholesky"`` computes the same trace as
``Tr (U S2 Uᵀ)^{1/2}`` with ``S1 = Uᵀ U`` (pivoted Cholesky, then one symmetric eigenvalue
problem): equal in exact arithmetic, several times faster (much faster when there are fewer
samples than dimensions), with no non-symmetric Schur step, but not the code path that published
numbers went through. torch-fidelity uses a third way (eigenvalues of ``S1 @ S2``);
all three agree to ~1e-6 relative on well-conditioned inputs (tests check this).

Statistics are accumulated in float64 with Chan et al.'s pairwise update (mean and scatter matrix
per batch, merged exactly), so the result does not depend on the batch size beyond rounding and
a large common offset in the features does not cancel catastrophically. ``sigma`` is the unbiased
covariance (divides by n - 1), as ``np.cov`` in every reference evaluator.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from repackctl.crash import CRASH_ENV
from repackctl.errors import DataError
from repackctl.files import remove_stale_temp_files, sha256_file
from repackctl.temp_names import TEMP_FORMS, writer_tag

#: ``.<name>.<pid>-<host>.<8 hex>.tmp`` (older ones: ``.<name>.<pid>.<8 hex>.tmp``)
ATOMIC_TEMP = TEMP_FORMS[0]

FDMethod = Literal["sqrtm", "cholesky"]

#: ADM / pytorch-fid: epsilon added to the diagonals when sqrtm(S1 S2) is not finite
SQRTM_EPS = 1e-6
#: ADM / pytorch-fid: the largest |imag| on the diagonal of sqrtm(S1 S2) accepted as rounding
IMAG_ATOL = 1e-3

#: keys every stats file's metadata carries (what changes the numbers)
STATS_METADATA_KEYS = ("extractor", "weights_sha256", "resolution", "source_sha256")
#: metadata key holding the sha256 of a stats file's arrays and metadata, verified on load
#: (files written before it existed have none and load as before)
CHECKSUM_KEY = "arrays_sha256"
#: what reading a damaged .npz raises: zip structure and CRC-32, zlib, the .npy header parser
NPZ_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    KeyError,
    ValueError,
    OSError,
    NotImplementedError,
    tokenize.TokenError,
)
#: crash tests only (the switch of ``repackctl.crash.crash_point``): the value
#: :data:`KILL_AT_WRITTEN` SIGKILLs the process once a stats file's temporary is written, before
#: it is renamed into place (what a kill during the write leaves behind)
KILL_ENV = CRASH_ENV
KILL_AT_WRITTEN = "stats-written"
#: what to do about a damaged stats file
REMAKE_STATS = (
    "the file is damaged: make it again from the images it summarises with "
    "`repackctl evaluate stats SOURCE` (or `save_stats`)"
)


# --------------------------------------------------------------------------- Fréchet distance
def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(
            f"{which}: mean {mu.shape} and covariance {sigma.shape} do not describe one Gaussian",
            hint="pass mu of shape (D,) and sigma of shape (D, D)",
        )
    return mu, sigma


def _sqrtm_trace(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr sqrtm(S1 S2) as in ADM / pytorch-fid (sqrtm, eps retry, imaginary-part check)."""
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # Singular product: nudge both covariances off the singular set (ADM's retry).
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        worst = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if worst > IMAG_ATOL:
            raise DataError(
                f"the matrix square root in the Fréchet distance has an imaginary component "
                f"{worst:.3g} (> {IMAG_ATOL}): the covariances are too degenerate",
                hint="use more samples than feature dimensions (FID needs thousands; the "
                "reference evaluators use 50k generated images), or method='cholesky'",
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _cholesky_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^{1/2} = Tr (U S2 U^T)^{1/2} with S1 = U^T U (pivoted Cholesky, rank r).

    The eigenvalues of S1 S2 equal those of U S2 U^T (r × r, symmetric PSD), so one symmetric
    eigenvalue problem of size r replaces a non-symmetric D × D square root. LAPACK's pivoted
    Cholesky (dpstrf) stops at the numerical rank, so with fewer samples than dimensions the
    cost is O(D² r).
    """
    c, piv, rank, info = lapack.dpstrf(sigma1, lower=0, tol=-1)
    if info < 0:
        raise DataError("the first covariance is not a valid matrix (pivoted Cholesky failed)")
    perm = piv - 1  # LAPACK pivots are 1-based
    u = np.triu(c)[:rank]  # (r, D): S1[perm][:, perm] = u^T u
    m = u @ sigma2[np.ix_(perm, perm)] @ u.T  # (r, r)
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    eps: float = SQRTM_EPS,
    method: FDMethod = "sqrtm",
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise DataError(
            f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}",
            hint="both statistics must come from the same feature extractor and layer",
        )
    if method == "sqrtm":
        tr_covmean = _sqrtm_trace(sigma1, sigma2, eps)
    elif method == "cholesky":
        tr_covmean = _cholesky_trace(sigma1, sigma2)
    else:
        raise DataError(f"unknown Fréchet method {method!r}", hint="use 'sqrtm' or 'cholesky'")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# --------------------------------------------------------------------------- streaming stats
class FeatureStats:
    """Running mean and covariance of (N, D) feature batches, in float64 (Chan et al. 1979)."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._mean: np.ndarray | None = None  # (D,)
        self._scatter: np.ndarray | None = None  # (D, D) sum of centred outer products

    def update(self, batch: Any) -> FeatureStats:
        """Add a batch of features (N, D) (numpy array or torch tensor). Returns self."""
        if hasattr(batch, "detach"):  # torch tensor, without importing torch here
            batch = batch.detach().cpu().numpy()
        x = np.asarray(batch, dtype=np.float64)  # (N, D)
        if x.ndim != 2:
            raise DataError(f"features must be (N, D), got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        mean = x.mean(axis=0)  # (D,)
        centred = x - mean  # (N, D)
        self._merge(x.shape[0], mean, centred.T @ centred)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator in (e.g. from another process or shard). Returns self."""
        if other.n:
            self._merge(other.n, other._mean, other._scatter)
        return self

    def _merge(self, n_b: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> None:
        if self.dim is None:
            self.dim = mean_b.shape[0]
        if mean_b.shape[0] != self.dim:
            raise DataError(f"feature dimension {mean_b.shape[0]} does not match {self.dim}")
        if self.n == 0:
            self.n, self._mean, self._scatter = n_b, mean_b.copy(), scatter_b.copy()
            return
        n = self.n + n_b
        delta = mean_b - self._mean  # (D,)
        self._mean = self._mean + delta * (n_b / n)
        self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    @property
    def mu(self) -> np.ndarray:
        """Mean (D,), float64."""
        if self.n == 0:
            raise DataError("no features were accumulated", hint="pass at least two images")
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (D, D), float64 (same as ``np.cov(x, rowvar=False)``)."""
        if self.n < 2:
            raise DataError(
                f"a covariance needs at least 2 samples, got {self.n}",
                hint="pass more images (FID is only meaningful with thousands)",
            )
        return self._scatter / (self.n - 1)

    @classmethod
    def from_moments(cls, mu: np.ndarray, sigma: np.ndarray, n: int) -> FeatureStats:
        """Rebuild an accumulator from saved moments (so loaded stats can be merged further)."""
        mu, sigma = _check_gaussian(mu, sigma, "stats")
        out = cls(dim=mu.shape[0])
        out.n = int(n)
        out._mean = mu.copy()
        out._scatter = sigma * max(int(n) - 1, 0)
        return out


# --------------------------------------------------------------------------- stats files
def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` left by a killed :func:`atomic_path` writer.

    Only files named ``.<name>.<pid>-<host>.<8 hex>.tmp`` beside ``path`` whose writer, a
    process of this machine, is no longer running are removed: the temporaries of other targets,
    of a live writer and of another machine's writer are left alone.
    """
    path = Path(path)

    def of_path(name: str) -> bool:
        m = ATOMIC_TEMP.fullmatch(name)
        return m is not None and m.group("name") == path.name

    return remove_stale_temp_files(path.parent, of_path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``, else delete it.

    A killed process never leaves a half-written file under the final name, and the temporary it
    leaves is removed by the next write of the same ``path`` (:func:`remove_stale_temporaries`).
    The temporary file is created by the caller with ordinary ``open``, so it gets the user's
    umask permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{writer_tag()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class StatsFile:
    """Gaussian statistics read from a ``.npz`` written by :func:`save_stats`."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    metadata: dict = field(default_factory=dict)

    def as_stats(self) -> FeatureStats:
        return FeatureStats.from_moments(self.mu, self.sigma, self.n)


def save_stats(
    path: str | Path,
    stats: FeatureStats,
    *,
    extractor: str,
    weights_sha256: str,
    resolution: int,
    source_sha256: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write mu, sigma, n and a JSON metadata string to ``path`` (.npz), atomically."""
    path = Path(path)
    meta = {
        "extractor": extractor,
        "weights_sha256": weights_sha256,
        "resolution": int(resolution),
        "source_sha256": source_sha256,
        **dict(extra or {}),
    }
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "n": np.int64(stats.n)}
    return write_stats_npz(path, arrays, meta)


def stats_checksum(arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """sha256 of a stats file's arrays (names, dtypes, shapes, bytes) and of its metadata."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    meta = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    h.update(b"metadata|" + json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def write_stats_npz(path: str | Path, arrays: Mapping[str, Any], metadata: Mapping) -> Path:
    """Write ``arrays`` and the JSON ``metadata`` (with their :data:`CHECKSUM_KEY`) atomically."""
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = {**metadata, CHECKSUM_KEY: stats_checksum(arrays, metadata)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # metadata: a 0-d unicode array, so nothing is pickled
        np.savez(f, **arrays, metadata=np.array(json.dumps(meta, sort_keys=True)))
        f.flush()
        if os.environ.get(KILL_ENV) == KILL_AT_WRITTEN:
            os.kill(os.getpid(), signal.SIGKILL)
    return path


def _damaged(path: Path, why: object) -> DataError:
    return DataError(f"stats file {path} is damaged or unreadable ({why})", hint=REMAKE_STATS)


def read_stats_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Every array of a stats file and its metadata, checksum verified (never unpickles).

    A file that cannot be read, or whose arrays or metadata no longer match the checksum they
    were written with, is a :class:`DataError` naming it; files without a checksum (written
    before it existed) are read as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"stats file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma", "n", "metadata") if k not in z.files]
            if missing:
                raise DataError(
                    f"{path} is not a repackctl stats file (missing {', '.join(missing)})",
                    hint="ADM reference batches (mu/sigma/mu_s/sigma_s) are read with "
                    "repackctl.metrics.adm.read_reference_batch",
                )
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("metadata")))
    except NPZ_READ_ERRORS as e:  # json.JSONDecodeError is a ValueError
        raise _damaged(path, e) from None
    if not isinstance(meta, dict):
        raise _damaged(path, "its metadata is not a JSON object")
    expected = meta.pop(CHECKSUM_KEY, None)
    if expected is not None and expected != stats_checksum(arrays, meta):
        raise _damaged(path, "its arrays do not match the checksum they were written with")
    return arrays, meta


def stats_from_arrays(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    metadata: dict,
    mu: str = "mu",
    sigma: str = "sigma",
) -> StatsFile:
    """The Gaussian ``arrays[mu]``, ``arrays[sigma]`` (n = ``arrays["n"]``) of a stats file."""
    try:
        out = StatsFile(
            mu=arrays[mu].astype(np.float64),
            sigma=arrays[sigma].astype(np.float64),
            n=int(arrays["n"]),
            metadata=metadata,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(Path(path), e) from None
    _check_gaussian(out.mu, out.sigma, str(path))
    return out


def load_stats(path: str | Path) -> StatsFile:
    """Read a stats file written by :func:`save_stats` (never unpickles, checksum verified)."""
    return stats_from_arrays(path, *read_stats_npz(path))


def sha256_array(array: Any) -> str:
    """Hex sha256 of an array's dtype, shape and C-order bytes (equal arrays → equal hash)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


#: files of a checkpoint folder that define what it generates (optimizer state does not)
CHECKPOINT_HASH_PATTERNS = ("*.safetensors", "*.json")


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's weight and JSON files (names + their sha256, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist", hint="pass an existing file or checkpoint folder")
    files = sorted({p for pat in CHECKPOINT_HASH_PATTERNS for p in path.rglob(pat) if p.is_file()})
    if not files:
        raise DataError(f"{path} holds no *.safetensors or *.json file to hash")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path).as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()
