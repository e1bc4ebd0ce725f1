"""FID, sFID, IS, KID and precision/recall of generated images, with every choice recorded.

Features come from :class:`repackctl.metrics.inception.InceptionExtractor` (torch-fidelity's
TF-compatible Inception). Where torch-fidelity computes a metric from features, we call its
function on our features, so the numbers are torch-fidelity's:

- IS: ``torch_fidelity.metric_isc.isc_features_to_metric`` on unbiased logits, 10 splits,
  samples shuffled with seed 2020 (ADM splits unshuffled chunks of 5000; same definition,
  Salimans et al. 2016).
- KID: ``torch_fidelity.metric_kid.kid_features_to_metric`` (Bińkowski et al. 2018): cubic
  polynomial kernel, unbiased MMD², 100 subsets of min(1000, N_gen, N_ref) samples, seed 2020.
- precision / recall: ``torch_fidelity.metric_prc.prc_features_to_metric`` (Kynkäänniemi et al.
  2019): k-NN manifolds with k = 3 in pool3 space, as ADM's ``ManifoldEstimator`` (nearest_k=3);
  precision = share of generated samples inside the real manifold, recall the converse.
- FID / sFID: :func:`repackctl.metrics.frechet.frechet_distance` (ADM's sqrtm algorithm) on
  float64 streaming statistics; the tests check it equals torch-fidelity's FID on the same features.

Reference statistics: with an ADM reference batch, FID/sFID use its stored ``mu``/``sigma`` and
``mu_s``/``sigma_s`` (computed by ADM with TensorFlow) exactly as ADM's evaluator does, and
KID/precision/recall use its ``arr_0`` images through our extractor (ADM recomputes those
activations too). The result says which, and lists every caveat in ``notes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.errors import ConfigError, DataError
from repackctl.metrics.adm import AdmReference, ImagesLike, count_images, iter_image_batches
from repackctl.metrics.frechet import (
    FDMethod,
    FeatureStats,
    StatsFile,
    frechet_distance,
    load_stats,
)
from repackctl.metrics.inception import InceptionExtractor
from repackctl.progress import ProgressFactory, null_progress

METRICS = ("fid", "sfid", "is", "kid", "prc")
IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_K = 3
PRC_BATCH = 10000
#: seed torch-fidelity uses for IS shuffling and KID subsets
TF_RNG_SEED = 2020

ReferenceLike = ImagesLike | AdmReference | Mapping[str, FeatureStats | StatsFile]


def extract_inception_features(
    images: ImagesLike,
    extractor: InceptionExtractor,
    *,
    keep: Iterable[str] = ("pool", "logits"),
    stats: Iterable[str] = ("pool", "spatial"),
    batch_size: int = 64,
    progress: ProgressFactory = null_progress,
    description: str = "inception features",
) -> tuple[dict[str, FeatureStats], dict[str, torch.Tensor], int]:
    """Stream images through Inception: streaming stats for ``stats``, kept features for ``keep``.

    Returns (stats by kind, kept features by kind as float32 CPU tensors (N, D), N).
    """
    keep, stats = tuple(keep), tuple(stats)
    acc = {k: FeatureStats() for k in stats}
    kept: dict[str, list[torch.Tensor]] = {k: [] for k in keep}
    n = 0
    with progress(description, total=count_images(images), unit="img") as bar:
        for batch in iter_image_batches(images, batch_size):
            feats = extractor.features(batch)  # {'pool': (b, 2048), 'logits': (b, 1008), ...}
            for k in stats:
                acc[k].update(feats[k])
            for k in keep:
                kept[k].append(feats[k])
            n += feats["pool"].shape[0]
            bar.advance(feats["pool"].shape[0])
    if n == 0:
        raise DataError(f"{description}: no images were given")
    return acc, {k: torch.cat(v) for k, v in kept.items()}, n


def compute_inception_stats(
    images: ImagesLike,
    extractor: InceptionExtractor,
    *,
    batch_size: int = 64,
    progress: ProgressFactory = null_progress,
) -> dict[str, FeatureStats]:
    """Pool3 ('fid') and spatial ('sfid') statistics of a set of images, e.g. to save as reference."""
    acc, _, _ = extract_inception_features(
        images, extractor, keep=(), batch_size=batch_size, progress=progress
    )
    return {"fid": acc["pool"], "sfid": acc["spatial"]}


def _resolve_reference(reference: ReferenceLike) -> ReferenceLike:
    """A path becomes an AdmReference, a stats file mapping, or a samples .npz path."""
    if not isinstance(reference, str | Path):
        return reference
    path = Path(reference)
    if not path.is_file():
        raise DataError(f"reference {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
    if {"mu", "sigma", "metadata"} <= files:
        stats = load_stats(path)  # a repackctl stats file: metadata "metric" says fid or sfid
        return {stats.metadata.get("metric", "fid"): stats}
    if {"mu", "sigma"} <= files:
        from repackctl.metrics.adm import read_reference_batch

        return read_reference_batch(path)
    return path


def _check_metrics(metrics: Iterable[str]) -> set[str]:
    """The requested metric names, lower-cased; an empty or unknown choice is a ConfigError."""
    wanted = {m.lower() for m in metrics}
    unknown = wanted - set(METRICS)
    if unknown or not wanted:
        raise ConfigError(
            f"unknown metric(s) {sorted(unknown) or '(none given)'}",
            hint=f"choose from {', '.join(METRICS)}",
        )
    return wanted


def _check_reference(reference: ReferenceLike, wanted: set[str]) -> None:
    """Refuse a reference that cannot give the wanted metrics, before the long extraction."""
    if isinstance(reference, Mapping):
        if wanted & {"kid", "prc"}:
            raise ConfigError(
                "KID and precision/recall need reference images, but only statistics were given",
                hint="pass reference images (or an ADM reference batch with arr_0), or drop "
                "kid/prc",
            )
        for m in wanted & {"fid", "sfid"}:
            if m not in reference:
                raise ConfigError(f"no reference statistics for {m!r} were given")
    if isinstance(reference, AdmReference):
        if wanted & {"kid", "prc"} and not reference.num_images:
            raise DataError(
                f"{reference.path} holds statistics only, no arr_0 images",
                hint="KID and precision/recall need reference images; drop them or use a "
                "reference batch that includes arr_0",
            )
        if "sfid" in wanted and reference.mu_s is None:
            raise DataError(f"{reference.path} has no mu_s/sigma_s for sFID", hint="drop sfid")


def _weights_notes(info: dict[str, Any]) -> list[str]:
    """The caveat to record when the Inception weights are not torch-fidelity's official file."""
    if info["weights_official"]:
        return []
    return [
        f"Inception weights {info['weights_file']} (sha256 {info['weights_sha256'][:12]}…) are "
        "not torch-fidelity's official file: scores are not comparable to published ones"
    ]


def _stats_kinds(wanted: set[str]) -> list[str]:
    """Feature kinds whose streaming statistics the wanted metrics need (pool3 FID, spatial sFID)."""
    return [k for k, m in (("pool", "fid"), ("spatial", "sfid")) if m in wanted]


@dataclass
class _ReferenceSide:
    """What the reference contributes: FID/sFID statistics by kind, pool3 features, count, source.

    ``notes`` are the caveats this kind of reference brings.
    """

    stats: dict[str, FeatureStats | StatsFile]
    pool: torch.Tensor | None
    n: int | None
    source: str
    notes: list[str] = field(default_factory=list)


def _reference_from_stats(
    reference: Mapping[str, FeatureStats | StatsFile], info: dict[str, Any]
) -> _ReferenceSide:
    """Reference given as statistics only ({'fid': …, 'sfid': …}): FID/sFID, nothing else."""
    stats: dict[str, FeatureStats | StatsFile] = (
        {"pool": reference["fid"]} if "fid" in reference else {}
    )
    if "sfid" in reference:
        stats["spatial"] = reference["sfid"]
    side = _ReferenceSide(stats, None, None, "statistics given")
    for s in stats.values():
        side.n = s.n
        meta = getattr(s, "metadata", {}) or {}
        if meta.get("weights_sha256") and meta["weights_sha256"] != info["weights_sha256"]:
            side.notes.append("reference statistics were computed with other Inception weights")
    return side


def _reference_from_adm(
    reference: AdmReference,
    wanted: set[str],
    extractor: InceptionExtractor,
    batch_size: int,
    progress: ProgressFactory,
) -> _ReferenceSide:
    """ADM reference batch: its TF mu/sigma for FID/sFID; its arr_0 images for KID/PRC."""
    stats: dict[str, FeatureStats | StatsFile] = {
        "pool": StatsFile(reference.mu, reference.sigma, reference.num_images)
    }
    if "sfid" in wanted:
        stats["spatial"] = StatsFile(reference.mu_s, reference.sigma_s, reference.num_images)
    side = _ReferenceSide(
        stats,
        None,
        reference.num_images,
        f"ADM reference batch {reference.path.name} (TensorFlow Inception mu/sigma)",
        [
            "FID/sFID compare torch-fidelity Inception features with ADM's TensorFlow statistics "
            "(as ADM's evaluator reads mu/sigma from the reference batch): close to, but not "
            "bit-identical with, what the TF evaluator reports"
        ],
    )
    if wanted & {"kid", "prc"}:
        _, feats, side.n = extract_inception_features(
            reference.iter_images(batch_size),
            extractor,
            keep=("pool",),
            stats=(),
            batch_size=batch_size,
            progress=progress,
            description="inception: reference",
        )
        side.pool = feats["pool"]
    return side


def _reference_from_images(
    reference: ImagesLike,
    wanted: set[str],
    extractor: InceptionExtractor,
    batch_size: int,
    progress: ProgressFactory,
) -> _ReferenceSide:
    """Reference images: statistics and pool3 features through the same extractor."""
    acc, feats, n_ref = extract_inception_features(
        reference,
        extractor,
        keep=("pool",) if wanted & {"kid", "prc"} else (),
        stats=_stats_kinds(wanted),
        batch_size=batch_size,
        progress=progress,
        description="inception: reference",
    )
    return _ReferenceSide(
        dict(acc),
        feats.get("pool"),
        n_ref,
        "computed from reference images with the same extractor",
    )


def _reference_side(
    reference: ReferenceLike,
    wanted: set[str],
    extractor: InceptionExtractor,
    info: dict[str, Any],
    batch_size: int,
    progress: ProgressFactory,
) -> _ReferenceSide:
    """The reference's contribution, by kind: statistics only, ADM batch, or images."""
    if isinstance(reference, Mapping):
        return _reference_from_stats(reference, info)
    if isinstance(reference, AdmReference):
        return _reference_from_adm(reference, wanted, extractor, batch_size, progress)
    return _reference_from_images(reference, wanted, extractor, batch_size, progress)


def _frechet_scores(
    wanted: set[str],
    gen_stats: dict[str, FeatureStats],
    ref_stats: dict[str, FeatureStats | StatsFile],
    fd_method: FDMethod,
    notes: list[str],
) -> dict[str, float]:
    """FID (pool3) and sFID (spatial) as requested; a singular covariance is noted."""
    out: dict[str, float] = {}
    for metric, kind in (("fid", "pool"), ("sfid", "spatial")):
        if metric not in wanted:
            continue
        g, r = gen_stats[kind], ref_stats[kind]
        dim = g.mu.shape[0]
        if min(g.n, r.n or dim) < dim:
            notes.append(
                f"{metric}: {min(g.n, r.n or dim)} samples for {dim} feature dimensions make the "
                "covariance singular: the score is biased upward and not comparable to 50k-sample "
                "numbers"
            )
        out[metric] = frechet_distance(g.mu, g.sigma, r.mu, r.sigma, method=fd_method)
    return out


def _inception_score(logits: torch.Tensor, n_gen: int) -> dict[str, Any]:
    """torch-fidelity's IS over ``IS_SPLITS`` shuffled splits of the generated logits."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if n_gen < IS_SPLITS:
        raise DataError(f"IS with {IS_SPLITS} splits needs ≥ {IS_SPLITS} images, got {n_gen}")
    r = isc_features_to_metric(logits, IS_SPLITS, True, TF_RNG_SEED)
    return {"is_mean": r["inception_score_mean"], "is_std": r["inception_score_std"]}


def _kid_scores(
    gen_pool: torch.Tensor, ref_pool: torch.Tensor, n_gen: int, notes: list[str]
) -> dict[str, Any]:
    """torch-fidelity's KID; subsets shrink to the smaller set (noted)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    subset = min(KID_SUBSET_SIZE, n_gen, ref_pool.shape[0])
    r = kid_features_to_metric(
        gen_pool,
        ref_pool,
        kid_subsets=KID_SUBSETS,
        kid_subset_size=subset,
        rng_seed=TF_RNG_SEED,
        verbose=False,
    )
    if subset < KID_SUBSET_SIZE:
        notes.append(f"kid: subsets of {subset} samples (torch-fidelity default 1000)")
    return {
        "kid_mean": r["kernel_inception_distance_mean"],
        "kid_std": r["kernel_inception_distance_std"],
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": subset,
    }


def _precision_recall(gen_pool: torch.Tensor, ref_pool: torch.Tensor, n_gen: int) -> dict[str, Any]:
    """torch-fidelity's k-NN precision/recall in pool3 space."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    big = max(n_gen, ref_pool.shape[0]) > PRC_BATCH
    r = prc_features_to_metric(
        gen_pool,  # torch-fidelity's convention: features_1 = generated
        ref_pool,
        prc_neighborhood=PRC_K,
        prc_batch_size=PRC_BATCH,
        save_cpu_ram=big,  # the full N×N distance matrix would not fit at 50k
        verbose=False,
    )
    return {"precision": r["precision"], "recall": r["recall"], "prc_k": PRC_K}


def compute_generative_metrics(
    generated: ImagesLike,
    reference: ReferenceLike,
    metrics: Iterable[str] = ("fid", "sfid", "is", "kid", "prc"),
    *,
    extractor: InceptionExtractor | None = None,
    inception_weights: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    fd_method: FDMethod = "sqrtm",
    progress: ProgressFactory = null_progress,
) -> dict[str, Any]:
    """Score generated images against a reference; returns a JSON-safe dict.

    ``generated``: uint8 (N, H, W, 3) array/tensor, an iterable of such batches, or a samples
    ``.npz`` path. ``reference``: the same kinds of images, an :class:`AdmReference` (or its
    path), a stats file from :func:`save_stats` (its metadata ``metric`` is ``fid`` or ``sfid``),
    or a mapping ``{'fid': stats, 'sfid': stats}`` of :class:`FeatureStats`/:class:`StatsFile`
    (then only FID/sFID). Keys of the result: ``fid``, ``sfid``, ``is_mean``, ``is_std``,
    ``kid_mean``, ``kid_std``, ``precision``, ``recall`` (those requested) plus ``n_generated``,
    ``n_reference``, ``extractor``, ``reference_stats``, ``notes`` and, with FID or sFID,
    ``fd_method`` (KID, IS and precision/recall compute no Fréchet distance).
    """
    wanted = _check_metrics(metrics)
    reference = _resolve_reference(reference)
    _check_reference(reference, wanted)
    if extractor is None:
        extractor = InceptionExtractor(inception_weights, device=device, batch_size=batch_size)
    info = extractor.info()
    notes = _weights_notes(info)

    # Generated side: streaming stats for FID/sFID, kept features for IS/KID/PRC.
    keep = [k for k, m in (("logits", "is"), ("pool", "kid"), ("pool", "prc")) if m in wanted]
    gen_stats, gen_feats, n_gen = extract_inception_features(
        generated,
        extractor,
        keep=dict.fromkeys(keep),
        stats=_stats_kinds(wanted),
        batch_size=batch_size,
        progress=progress,
        description="inception: generated",
    )
    ref = _reference_side(reference, wanted, extractor, info, batch_size, progress)
    notes += ref.notes

    out: dict[str, Any] = _frechet_scores(wanted, gen_stats, ref.stats, fd_method, notes)
    if "is" in wanted:
        out.update(_inception_score(gen_feats["logits"], n_gen))
    if "kid" in wanted:
        out.update(_kid_scores(gen_feats["pool"], ref.pool, n_gen, notes))
    if "prc" in wanted:
        out.update(_precision_recall(gen_feats["pool"], ref.pool, n_gen))
    if "is" in wanted:  # after the prc keys: the order of the JSON result is kept
        out["is_splits"] = IS_SPLITS
    out.update(n_generated=n_gen, n_reference=ref.n, extractor=info)
    if set(wanted) & {"fid", "sfid"}:  # KID, IS and PRC compute no Fréchet distance
        out["fd_method"] = fd_method
    out.update(reference_stats=ref.source, notes=notes)
    return out
