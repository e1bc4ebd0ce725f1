"""Scores of a pack model: reconstruction quality and how much class information the latent keeps.

* ``evaluate_recon``: the decoder's reconstructions from the posterior **mean** (what the refiner
  and sampling decode) of a held-out cache entry (split ``val`` by default), scored against the
  cached originals as uint8 images: PSNR (mean of per-image PSNR) and SSIM (Wang et al. 2004) from
  ``metrics.recon``, and rFID (``metrics.frechet`` on torch-fidelity Inception pool features) when
  an Inception weights file is given. Writes a side-by-side grid (originals over
  reconstructions) and ``recon-<entry>.json`` in the checkpoint folder (``recon-<entry>-nN``
  for a subset: :func:`report_stem`). The report records the identity of the images it scored
  (``entry_sha256``, ``entry_source``: :func:`entry_identity`): a rerun on an entry of the same
  name extracted again from other images keeps the earlier report beside it
  (``recon-<entry>-earlier-<sha12>.json``, :func:`set_aside_earlier`) and says so.
* ``evaluate_probe``: the RePack paper's linear-probe table (DINOv3 raw 768-d 82.56 %, PCA-32
  56.13 %, RePack-32 42.48 %): a linear classifier (``metrics.probe``) on mean-pooled features
  of the un-mirrored images, trained on the run's training split and scored on the held-out
  split, for the raw encoder tokens, a float64 PCA of the training tokens to the same d, and the
  pack model's posterior means. Written as ``probe-<eval entry>.json`` (:func:`_probe_stem`); it
  records the identity of both entries (``train_entry_sha256``, ``eval_entry_sha256``, with their
  ``*_entry_source``) and keeps a report of earlier entries of the same names aside as
  ``probe-<eval entry>-earlier-<train sha12>-<eval sha12>.json``, as recon does.

A subset (``-n N``; the probe trains on 4N rows) is class-balanced where the entry's labels are
known (:func:`repackctl.evaluate.selection.round_robin_indices`: image-folder entries are stored
sorted by class), and recorded in the report (``subset``; ``train_subset`` / ``eval_subset``).

Legend: N samples, T tokens, C token channels, d latent channels, h×w grid, R image side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repackctl.cache.store import ArrayGroup, DatasetEntry, list_entries, read_blocks
from repackctl.data.cached import entry_labels
from repackctl.errors import CacheError, ConfigError
from repackctl.evaluate.selection import refuse_more_than_held, round_robin_indices
from repackctl.files import to_uint8
from repackctl.pack.data import open_features, sibling_entry, valid_indices
from repackctl.pack.load import PackHandle, load_pack
from repackctl.progress import ProgressFactory, null_progress
from repackctl.settings import Settings

BLOCK = 64


def _handle(settings: Settings) -> PackHandle:
    from repackctl.pack.task import default_run_name

    return load_pack(settings.pack.run or default_run_name(settings), runs=settings.runs)


def eval_features(
    settings: Settings, handle: PackHandle, log: list[str]
) -> tuple[DatasetEntry, ArrayGroup]:
    """The held-out entry (``pack.eval_entry`` or the ``pack.eval_split`` sibling of the run's),
    refused when its features were computed in another precision than the run trained on (as
    `pack encode` refuses them: ``check_features_precision``)."""
    from repackctl.pack.encode import check_features_precision, extract_hint

    cfg = settings.pack
    run_cache = handle.extra["cache"]
    source = dict(handle.extra.get("source") or {})
    split = cfg.eval_split
    hint = extract_hint(handle, split)
    if cfg.eval_entry:
        if cfg.eval_entry == run_cache["entry"]:
            log.append(
                f"Warning: scoring on the run's training entry {cfg.eval_entry}: not held out"
            )
        entry, feats = given_entry(settings.cache, handle, cfg.eval_entry, hint)
    elif split == source.get("split", "train"):
        log.append(f"Warning: scoring on the training split {split!r}: not held out")
        entry, feats, _ = open_features(
            settings.cache, run_cache["entry"], run_cache["features"], hint
        )
    else:
        try:
            entry, feats = sibling_entry(settings.cache, run_cache, source, split)
        except CacheError as e:
            if not e.message.startswith("no cache entry"):
                raise
            hint = held_out_hint(settings.cache, run_cache, split, e.hint)
            raise CacheError(e.message, hint) from None
    check_features_precision(handle, entry, feats)
    return entry, feats


def given_entry(
    cache: str, handle: PackHandle, name: str, hint: str
) -> tuple[DatasetEntry, ArrayGroup]:
    """The entry ``--entry`` names, with the run's features. Its hints are about that entry: the
    run's own extract (``hint``, of its training data) wrote another entry, and no extract adds
    features of the run's resolution to an entry of another one. So an entry at another
    resolution than the run trained at is refused naming both (and the entries that fit), and
    one that only lacks the features names the extract of its own images."""
    from repackctl.pack.encode import extract_hint

    run_cache = handle.extra["cache"]
    if name in list_entries(cache):
        entry = DatasetEntry.open(cache, name)
        trained = handle.extra.get("resolution")
        if isinstance(trained, int) and entry.resolution != trained:
            raise CacheError(
                f"{name} is {entry.resolution} px; pack run {handle.run_name} was trained on "
                f"{trained}-px features ({run_cache['features']}): it scores images at "
                f"{trained} px only",
                _fitting_entries_hint(cache, handle, trained, hint),
            )
        if run_cache["features"] not in entry.feature_ids():
            hint = extract_hint(handle, entry=entry)
    entry, feats, _ = open_features(cache, name, run_cache["features"], hint)
    return entry, feats


def _fitting_entries_hint(cache: str, handle: PackHandle, resolution: int, hint: str) -> str:
    """Pass an entry at ``resolution`` px that holds the run's features (other than its training
    entry), naming those there are; with none, ``hint`` (the extract of the run's data)."""
    run_cache = handle.extra["cache"]
    fits = []
    for other in list_entries(cache):
        if other == run_cache["entry"]:
            continue
        try:
            e = DatasetEntry.open(cache, other)
            if e.resolution == resolution and run_cache["features"] in e.feature_ids():
                fits.append(other)
        except Exception:  # a damaged entry is no candidate (`cache verify` names it)
            continue
    if fits:
        return f"pass an entry at {resolution} px with --entry ({', '.join(fits)})"
    return f"pass an entry at {resolution} px with --entry; to make one, {hint}"


def held_out_hint(cache: str, run_cache: dict, split: str, hint: str | None) -> str | None:
    """The hint for a missing held-out entry, right for the layout of the training images.

    A folder without split folders has no ``val`` to re-extract: ``--split val`` alone is an
    error there. The held-out split comes from ``--val-fraction``, and the training entry must be
    extracted with the same fraction so that the two are disjoint.
    """
    try:
        attrs = DatasetEntry.open(cache, run_cache["entry"]).attrs.get("source") or {}
    except CacheError:
        return hint
    if attrs.get("source") != "imagefolder" or attrs.get("layout") == "split-folders":
        return hint
    held = attrs.get("held_out")
    if held:
        cmd = (hint or "").strip("`").removeprefix("run `").removesuffix("` first")
        flag = f"--val-fraction {held['fraction']}"
        return f"run `{cmd} {flag}` first (the training entry held out that fraction)"
    return (
        f"the training images ({attrs.get('root')}) have no {split}/ folder: extract the training "
        f"split again with `--val-fraction 0.1` and the held-out one with `--split {split} "
        f"--val-fraction 0.1` (same seed), then train the pack run on the new training entry; "
        f"or arrange train/ and {split}/ folders. Until then pass --split train (not held out)."
    )


def _indices(
    entry: DatasetEntry, feats: ArrayGroup, num: int | None, notes: list[str], what: str = ""
) -> tuple[np.ndarray, dict]:
    """(the rows scored, ascending; the record of the subset): every usable row, or ``num`` of
    them class-balanced (:func:`repackctl.evaluate.selection.round_robin_indices`), said in
    ``notes``."""
    idx = valid_indices(entry, feats)
    if len(idx) == 0:
        raise CacheError(f"no usable samples in {entry.name}", "check `repackctl cache info`")
    if num:
        _check_num(entry.name, len(idx), num, what)
    idx, record = round_robin_indices(idx, entry_labels(entry, idx), num or None)
    if record["rule"] != "all":
        where = f"{what} {entry.name}".strip()
        notes.append(f"{where}: {record['num']} of {record['of']} images, {record['description']}")
    return idx, record


def _check_num(name: str, available: int, num: int, what: str) -> None:
    """Refuse a subset (``-n``) larger than the usable rows of entry ``name``
    (:func:`repackctl.evaluate.selection.refuse_more_than_held`, the rule of `evaluate stats
    --num` and `evaluate fid --samples` too). ``what`` ``train``: the probe's training side,
    ``num`` = 4N, whose words say so (the flag's value is N)."""
    held = "usable images (image and features written)"
    if what != "train":
        more = "score an entry with more images (--entry)"
        refuse_more_than_held("-n", num, available, name, more, held=held)
        return
    if num <= available:
        return
    most = available // 4
    all_rows = f"leave -n out to train on all {available} (and score the whole held-out entry)"
    raise ConfigError(
        f"-n {num // 4} trains the probe on 4N = {num} images of the pack run's training "
        f"entry {name}, but it holds {available} {held}: nothing was computed",
        f"pass -n {most} or fewer (4N at most {available}), or {all_rows}" if most else all_rows,
    )


def report_stem(kind: str, entry: DatasetEntry, num: int | None, **extra: Any) -> str:
    """The name of a report in the checkpoint folder: ``<kind>-<entry>`` for the whole split,
    ``-n<num>`` when ``num`` is given (a subset, ``-n``, was scored or trained on) and
    ``-<key><value>`` for each setting in ``extra`` that is not its default (given as
    ``key=(value, default)``). A subset's score replaced the whole split's under the same name,
    as ``evaluate fid`` avoids with ``metrics-nN.json``."""
    stem = f"{kind}-{entry.name}"
    if num is not None:
        stem += f"-n{num}"
    for key, (value, default) in extra.items():
        if value != default:
            stem += f"-{key}{value}"
    return stem


def _blocks(entry: DatasetEntry, feats: ArrayGroup, idx: np.ndarray, images: bool = True):
    """(indices, tokens of flip 0 (b, T, C) float32, images (b, R, R, 3) uint8 or None), read
    through guarded views (``GuardedArray``): a lost or corrupt chunk holding a row scored is
    a ``CacheError`` naming the array and the repair, never zeros scored as originals."""
    from repackctl.cache.integrity import GuardedArray, repair_hint

    used = np.zeros(entry.n, bool)
    used[idx] = True
    redo = repair_hint(entry.name, "the same `repackctl extract`")
    label = f"{entry.name} features/{feats.group.basename}/tokens"
    tok_it = read_blocks(GuardedArray(feats["tokens"], used, label, redo), idx, BLOCK)
    img_it = (
        read_blocks(GuardedArray(entry.images, used, f"{entry.name} images", redo), idx, BLOCK)
        if images
        else None
    )
    for i, tok in tok_it:
        img = next(img_it)[1] if img_it is not None else None
        yield i, tok[:, 0].astype(np.float32), img


def _log_notes(bar: Any, notes: list[str]) -> int:
    """Log ``notes`` above the progress bar; returns how many, which the CLI does not print
    again after its table (each note was shown twice)."""
    for note in notes:
        bar.log(note)
    return len(notes)


# ---------------------------------------------------------------------------- recon


#: how ``recon-*.json``'s ``psnr`` is reduced over images (``psnr_exact``: how many were left out)
PSNR_REDUCTION = (
    "mean over images of per-image PSNR, exact reconstructions (PSNR = inf) left out and "
    "counted in psnr_exact"
)


def psnr_mean(per_image: np.ndarray, notes: list[str]) -> tuple[float | None, int]:
    """(the mean of the finite per-image PSNRs, or None when every one is inf; how many are
    inf): exact reconstructions have no finite PSNR, so they are left out of the mean, counted,
    and said in ``notes`` (a mean over the others alone would hide them)."""
    finite = np.isfinite(per_image)
    exact, n = int((~finite).sum()), len(per_image)
    if exact == n:
        notes.append(f"all {n} reconstructions are exact (PSNR = inf): no finite PSNR mean")
    elif exact:
        notes.append(
            f"{exact} of {n} reconstructions are exact (PSNR = inf): the PSNR is the mean over "
            f"the other {n - exact} (report: psnr_exact)"
        )
    return (float(per_image[finite].mean()) if exact < n else None), exact


@dataclass
class ReconResult:
    """Reconstruction scores of one pack checkpoint on one cache entry."""

    run: str
    checkpoint: str
    pack_id: str
    entry: str
    n: int
    psnr: float | None  # dB, mean of per-image PSNR over the inexact (None if every one is exact)
    ssim: float
    rfid: float | None
    grid: str
    method: str
    latent_shape: list[int]
    notes: list[str] = field(default_factory=list)
    subset: dict[str, Any] = field(default_factory=dict)  # which rows (``round_robin_indices``)
    shown: int = 0  # the first ``shown`` notes were logged above the progress bar already
    # the Inception weights of the rFID (``weights_path``, ``weights_sha256``); None without
    inception: dict[str, Any] | None = None
    # the Fréchet distance algorithm of the rFID (``evaluate.fd_method``); None without rFID
    fd_method: str | None = None
    #: reconstructions equal to their original (MSE 0, PSNR = inf): not in the PSNR mean
    psnr_exact: int = 0
    psnr_reduction: str = PSNR_REDUCTION
    #: the content hash of the scored images (:func:`entry_identity`); None in older reports
    entry_sha256: str | None = None
    #: the entry's source attributes (the folder, seed, number of images it was extracted from)
    entry_source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("shown")  # how they were printed, not a result
        return d


def _inception(weights: str | None, device: torch.device, notes: list[str]) -> Any:
    """The Inception extractor of the rFID, or None (said in ``notes``) without weights."""
    if not weights:
        notes.append("rFID skipped: no Inception weights (pack.inception_weights)")
        return None
    from repackctl.metrics.inception import InceptionExtractor

    return InceptionExtractor(weights, device=device)


def _inception_record(weights: str | None) -> dict[str, Any] | None:
    """What a report records of the rFID's Inception weights (None: no rFID); read before the
    model is built, so that a refusal (:func:`check_recon_replaceable`) comes at once."""
    if not weights:
        return None
    from repackctl.files import sha256_file
    from repackctl.metrics.inception import resolve_inception_weights

    path = resolve_inception_weights(weights)  # a missing file is an Error naming it
    return {"weights_path": str(path.resolve()), "weights_sha256": sha256_file(path)}


#: the Fréchet algorithm of an rFID in a report written before reports recorded it (recon
#: always used it then)
RFID_METHOD_BEFORE = "sqrtm"


def check_recon_replaceable(
    path: Path, inception: dict[str, Any] | None, fd_method: str = "sqrtm"
) -> None:
    """Refuse replacing a ``recon-*.json`` whose rFID this run would lose: a run without
    Inception weights (its rFID is null), with other weights or another Fréchet algorithm
    ``fd_method`` (another rFID, as `evaluate fid` refuses another protocol; reports written
    before they recorded their weights are replaced as before, and their rFID was sqrtm's).
    PSNR and SSIM of the same checkpoint, entry and subset are the same whatever the weights,
    so every other rerun is the same result recomputed and replaces it. A report that cannot be
    read is replaced."""
    from repackctl.run_files import read_json_dict

    old = read_json_dict(path)
    if old is None or old.get("rfid") is None:
        return
    was = old.get("inception") if isinstance(old.get("inception"), dict) else {}
    where = was.get("weights_path")
    method = old.get("fd_method") or RFID_METHOD_BEFORE
    same_method = "" if method == fd_method else f" --fd-method {method}"
    keep = f"move {path.name} away first to keep it"
    if inception is None:
        again = f"pass --inception-weights {where}" if where else "pass --inception-weights"
        again += same_method
        raise ConfigError(
            f"{path} holds an rFID ({old['rfid']:.4g}) that this run, without "
            "--inception-weights, would replace with none; it was left untouched and nothing "
            "was scored",
            f"{again} (PSNR and SSIM are the same), or {keep}",
        )
    sha = was.get("weights_sha256")
    if sha and sha != inception["weights_sha256"]:
        raise ConfigError(
            f"{path} holds an rFID ({old['rfid']:.4g}) made with other Inception weights "
            f"({where}, sha256 {sha[:12]}…; this run: {inception['weights_path']}, sha256 "
            f"{inception['weights_sha256'][:12]}…); it was left untouched and nothing was scored",
            f"pass --inception-weights {where}{same_method} to recompute it, or {keep}",
        )
    if method != fd_method:
        raise ConfigError(
            f"{path} holds an rFID ({old['rfid']:.4g}) made with the {method} Fréchet distance "
            f"(this run: --fd-method {fd_method}), another protocol; it was left untouched and "
            "nothing was scored",
            f"pass --fd-method {method} to recompute it, or {keep}",
        )


def entry_identity(entry: DatasetEntry, idx: np.ndarray, side: str = "") -> dict[str, Any]:
    """What identifies the images ``idx`` of ``entry`` beyond its name: ``entry_sha256``, their
    content hash (``evaluate.generative.cache_images_sha256``: the entry's source attributes,
    done flags, the rows and the chunk checksums the cache stores, without reading the pixels),
    and ``entry_source``, the source attributes for a reader. An entry removed and extracted
    again under the same name (other files in the folder, another seed) has another hash.
    ``side`` prefixes the keys (``train_``, ``eval_``: a report of two entries, whose names it
    records as ``<side>entry``)."""
    from repackctl.cache.integrity import GuardedArray, repair_hint
    from repackctl.cache.store import WRITTEN
    from repackctl.evaluate.generative import cache_images_sha256

    done = entry.done[:]
    redo = repair_hint(entry.name, "the same `repackctl extract`")
    images = GuardedArray(entry.images, done == WRITTEN, f"{entry.name} images", redo)
    source = entry.attrs.get("source")
    return {
        f"{side}entry_sha256": cache_images_sha256(entry, images, done, idx),
        f"{side}entry_source": dict(source) if isinstance(source, dict) else {},
    }


def _sides(identity: dict[str, Any]) -> list[str]:
    """The key prefixes of the entries ``identity`` names (``[""]``, ``["train_", "eval_"]``)."""
    return [k.removesuffix("entry_sha256") for k in identity if k.endswith("entry_sha256")]


def _changed_sides(old: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The sides whose recorded hash in ``old`` is another than in ``identity``."""
    return [
        p
        for p in _sides(identity)
        if isinstance(old.get(f"{p}entry_sha256"), str)
        and old[f"{p}entry_sha256"] != identity[f"{p}entry_sha256"]
    ]


def earlier_entry_report(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The report at ``path`` when it scored another entry of the same name (a recorded
    ``<side>entry_sha256`` differs from ``identity``'s, :func:`entry_identity`: the entry was
    removed and extracted again), else None: no report, an unreadable one, the same images, or
    one written before reports recorded their images (the name decides, as before)."""
    from repackctl.run_files import read_json_dict

    old = read_json_dict(path)
    return old if old is not None and _changed_sides(old, identity) else None


def _source_change(was: Any, now: dict[str, Any]) -> str:
    """``; source seed: 0 → 5`` for the source attributes that differ (up to 3), or ""."""
    was = was if isinstance(was, dict) else {}
    keys = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)][:3]
    parts = [f"{k}: {str(was.get(k))[:40]} → {str(now.get(k))[:40]}" for k in keys]
    return f"; source {', '.join(parts)}" if parts else ""


def _why_earlier(old: dict[str, Any], identity: dict[str, Any]) -> str:
    """``<entry> was extracted again (images sha256 …, now …; source …)`` for each side whose
    images changed, joined by ``; and ``."""
    whys = []
    for p in _changed_sides(old, identity):
        was, now = str(old[f"{p}entry_sha256"]), identity[f"{p}entry_sha256"]
        change = _source_change(old.get(f"{p}entry_source"), identity[f"{p}entry_source"])
        whys.append(
            f"{old.get(f'{p}entry')} was extracted again (images sha256 {was[:12]}…, now "
            f"{now[:12]}…{change})"
        )
    return "; and ".join(whys)


def set_aside_earlier(
    path: Path, old: dict[str, Any], identity: dict[str, Any], notes: list[str]
) -> Path:
    """Keep the report ``old`` at ``path`` (of an earlier entry of the same name:
    :func:`earlier_entry_report`) and its grid PNG, if any, as ``<stem>-earlier-<sha12>.json``
    / ``.png`` beside it (``<sha12>`` of each of its entries, joined by ``-``), marked
    ``superseded``, so that the report at ``path`` is this run's alone; said in ``notes``.
    Returns where it went. The copy is written before the original is removed: a kill in
    between leaves both, and the next run does the same again."""
    import os

    from repackctl.files import write_json_atomic

    was = "-".join(str(old.get(f"{p}entry_sha256"))[:12] for p in _sides(identity))
    kept = path.with_name(f"{path.stem}-earlier-{was}.json")
    grid, kept_grid = path.with_suffix(".png"), kept.with_suffix(".png")
    why = _why_earlier(old, identity)
    doc = {**old, "superseded": f"not the current report: {why}"}
    if "grid" in old:
        doc["grid"] = str(kept_grid) if grid.is_file() else old.get("grid")
    write_json_atomic(kept, doc)
    if "grid" in old and grid.is_file():
        os.replace(grid, kept_grid)
    path.unlink(missing_ok=True)
    notes.append(
        f"{path.name} held the report of an earlier entry of the same name: {why}; it was "
        f"kept as {kept.name}, and {path.name} now holds this run's"
    )
    return kept


def _rfid(real: Any, fake: Any, fd_method: str, notes: list[str]) -> float:
    """The Fréchet distance of the originals' and reconstructions' Inception statistics
    (``FeatureStats``) by ``fd_method``, with a note below 2048 images."""
    from repackctl.metrics.frechet import frechet_distance

    if real.n < 2048:
        notes.append(f"rFID from {real.n} images: biased upwards, compare only like with like")
    return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma, method=fd_method)


@torch.no_grad()
def evaluate_recon(settings: Settings, progress: ProgressFactory = null_progress) -> ReconResult:
    """PSNR / SSIM (/ rFID) of posterior-mean reconstructions on the held-out split."""
    from repackctl.metrics.recon import psnr, save_grid, ssim_per_image
    from repackctl.runtime import resolve_device

    cfg = settings.pack
    notes: list[str] = []
    handle = _handle(settings)
    entry, feats = eval_features(settings, handle, notes)
    idx, subset = _indices(entry, feats, cfg.eval_num, notes)
    device = resolve_device(settings.device)
    model = handle.model.to(device)

    stem = report_stem("recon", entry, None if subset["rule"] == "all" else len(idx))
    inception = _inception_record(cfg.inception_weights)
    fd_method = settings.evaluate.fd_method
    identity = entry_identity(entry, idx)
    earlier = earlier_entry_report(handle.checkpoint / f"{stem}.json", identity)
    if earlier is None:  # another entry's report is kept aside, not replaced: nothing to refuse
        check_recon_replaceable(handle.checkpoint / f"{stem}.json", inception, fd_method)  # first
    extractor = _inception(cfg.inception_weights, device, notes)
    if extractor is not None:
        from repackctl.metrics.frechet import FeatureStats

        real_stats, fake_stats = FeatureStats(), FeatureStats()

    per_psnr, per_ssim = [], []
    grid_orig, grid_rec = [], []
    with progress("evaluate recon", total=len(idx), unit="img") as bar:
        shown = _log_notes(bar, notes)
        for _, tok, img in _blocks(entry, feats, idx):
            z = model.encode(torch.from_numpy(tok).to(device)).mode()  # (b, d, h, w)
            rec = to_uint8(model.decode(z))  # (b, R, R, 3)
            per_psnr.append(psnr(img, rec).per_image)
            per_ssim.append(ssim_per_image(img, rec))
            if sum(len(g) for g in grid_orig) < cfg.grid_images:
                grid_orig.append(img)
                grid_rec.append(rec)
            if extractor is not None:
                real_stats.update(extractor.features(img)["pool"])
                fake_stats.update(extractor.features(rec)["pool"])
            bar.advance(len(img))
    mean_psnr, exact = psnr_mean(np.concatenate(per_psnr), notes)
    rfid = None if extractor is None else _rfid(real_stats, fake_stats, fd_method, notes)
    k = cfg.grid_images
    grid = handle.checkpoint / f"{stem}.png"
    if earlier is not None:  # before the grid of this run replaces its grid
        set_aside_earlier(grid.with_suffix(".json"), earlier, identity, notes)
    save_grid(
        [np.concatenate(grid_orig)[:k], np.concatenate(grid_rec)[:k]],
        grid,
        ["original", "recon"],
    )
    result = ReconResult(
        run=handle.run_name,
        checkpoint=str(handle.checkpoint),
        pack_id=handle.pack_id,
        entry=entry.name,
        n=len(idx),
        psnr=mean_psnr,
        ssim=float(np.concatenate(per_ssim).mean()),
        rfid=rfid,
        grid=str(grid),
        method=str(handle.extra.get("method")),
        latent_shape=list(handle.extra.get("latent_shape") or []),
        notes=notes,
        subset=subset,
        shown=shown,
        inception=inception,
        fd_method=fd_method if rfid is not None else None,
        psnr_exact=exact,
        **identity,
    )
    from repackctl.files import write_json_atomic

    write_json_atomic(handle.checkpoint / f"{stem}.json", result.to_dict())
    return result


# ---------------------------------------------------------------------------- probe


@dataclass
class ProbeRow:
    """One line of the probe table."""

    name: str
    dims: int
    num_params: int
    top1: float  # fraction
    weight_decay: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProbeReport:
    """The linear-probe table of one pack run."""

    run: str
    train_entry: str
    eval_entry: str
    n_train: int
    n_eval: int
    num_classes: int
    rows: list[ProbeRow]
    pca_explained: float
    notes: list[str] = field(default_factory=list)
    train_subset: dict[str, Any] = field(default_factory=dict)  # ``round_robin_indices`` records
    eval_subset: dict[str, Any] = field(default_factory=dict)
    shown: int = 0  # the first ``shown`` notes were logged above the progress bar already
    # which weights were probed, and how (the file name carries epochs and seed only when they
    # are not the defaults): the JSON says it in full
    checkpoint: str = ""
    pack_id: str = ""
    weights: str = "ema"
    epochs: int = 0
    seed: int = 0
    pca_samples: int = 0  # the tokens the PCA-d row's fit read (``pack.pca_samples``)
    #: the content hashes and source attributes of the two entries (:func:`entry_identity`);
    #: None / {} in older reports
    train_entry_sha256: str | None = None
    train_entry_source: dict[str, Any] = field(default_factory=dict)
    eval_entry_sha256: str | None = None
    eval_entry_source: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown table in the paper's shape (representation, dims, #params, top-1 %)."""
        from repackctl.metrics.probe import format_probe_table

        return format_probe_table([r.to_dict() for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("shown")  # how they were printed, not a result
        d["table"] = self.table()
        return d


@torch.no_grad()
def pooled_features(
    entry: DatasetEntry,
    feats: ArrayGroup,
    idx: np.ndarray,
    model: torch.nn.Module,
    device: torch.device,
    bar: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled raw tokens (N, C) float64 and pack latents (N, d) float64 (flip 0)."""
    raw, packed = [], []
    for _, tok, _ in _blocks(entry, feats, idx, images=False):
        raw.append(tok.astype(np.float64).mean(axis=1))  # (b, C)
        z = model.encode(torch.from_numpy(tok).to(device)).mode()  # (b, d, h, w)
        packed.append(z.double().mean(dim=(2, 3)).cpu().numpy())  # (b, d)
        bar.advance(len(tok))
    return np.concatenate(raw), np.concatenate(packed)


def _probe_stem(settings: Settings, entry: DatasetEntry, subsets: list[dict]) -> str:
    """``probe-<entry>[-nN][-epochsE][-seedS][-pcaP]``: the settings that change the table, when
    not the defaults (``pack.pca_samples`` sizes the PCA-d row's fit, from a config file or the
    environment). ``-nN`` (``-n``) whenever either side is a subset of its entry (``subsets``:
    the train and eval records): ``-n N`` may keep the whole held-out entry (N at least its
    size) and still train on 4N of the training entry, which is not the whole-split table."""
    cfg = settings.pack
    epochs_default = type(cfg).model_fields["probe_epochs"].default
    cut = any(s["rule"] != "all" for s in subsets)
    return report_stem(
        "probe",
        entry,
        cfg.eval_num if cut else None,
        epochs=(cfg.probe_epochs, epochs_default),
        seed=(settings.seed, 0),
        pca=(cfg.pca_samples, type(cfg).model_fields["pca_samples"].default),
    )


def _probe_rows(
    reps: list[tuple[str, np.ndarray, np.ndarray]],
    y_tr: np.ndarray,
    y_ev: np.ndarray,
    classes: int,
    epochs: int,
    seed: int,
    device: torch.device,
) -> list[ProbeRow]:
    """One probe row per ``(name, train features, eval features)`` representation."""
    from repackctl.metrics.probe import linear_probe

    rows = []
    for name, xtr, xev in reps:
        res = linear_probe(
            xtr, y_tr, xev, y_ev, num_classes=classes, epochs=epochs, seed=seed, device=device
        )
        rows.append(ProbeRow(name, int(xtr.shape[1]), res.num_params, res.top1, res.weight_decay))
    return rows


def _pca_rows(
    settings: Settings,
    entry: DatasetEntry,
    feats: ArrayGroup,
    d: int,
    raw_tr: np.ndarray,
    raw_ev: np.ndarray,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the PCA fit, train (N, d), eval (N, d)): a PCA of the training tokens to d (the same fit
    `pack train --method pca` makes); linear, so projecting the mean-pooled tokens equals
    mean-pooling the projected tokens."""
    from repackctl.pack.data import PackData
    from repackctl.pack.task import fit_token_pca

    cfg = settings.pack
    pca = fit_token_pca(
        PackData(entry, feats, cfg.in_memory, settings.memory_gb), d, cfg.pca_samples
    )
    mu, comps = pca.mean.numpy(), pca.components.numpy()  # (C,), (d, C)
    return pca, (raw_tr - mu) @ comps.T, (raw_ev - mu) @ comps.T


def evaluate_probe(settings: Settings, progress: ProgressFactory = null_progress) -> ProbeReport:
    """Linear-probe top-1 of raw tokens, PCA-d and the pack run's d-dim latents. The report
    records the identity of both entries (:func:`entry_identity`); a report of earlier entries
    of the same names is kept aside (:func:`set_aside_earlier`), not replaced."""
    from repackctl.pack.encode import check_features_precision, extract_hint
    from repackctl.runtime import resolve_device

    cfg = settings.pack
    notes: list[str] = []
    handle = _handle(settings)
    run_cache = handle.extra["cache"]
    train_entry, train_feats, _ = open_features(
        settings.cache, run_cache["entry"], run_cache["features"], extract_hint(handle)
    )
    # the probe's training side passes through the pack model too (its latents row)
    check_features_precision(handle, train_entry, train_feats)
    eval_entry, eval_feats = eval_features(settings, handle, notes)
    tr_num = cfg.eval_num and 4 * cfg.eval_num
    tr_idx, tr_subset = _indices(train_entry, train_feats, tr_num, notes, "train")
    ev_idx, ev_subset = _indices(eval_entry, eval_feats, cfg.eval_num, notes, "eval")
    path = handle.checkpoint / f"{_probe_stem(settings, eval_entry, [tr_subset, ev_subset])}.json"
    identity = entry_identity(train_entry, tr_idx, "train_")
    identity |= entry_identity(eval_entry, ev_idx, "eval_")
    earlier = earlier_entry_report(path, identity)
    device = resolve_device(settings.device)
    model = handle.model.to(device)
    d = handle.latent_channels

    with progress("evaluate probe", total=len(tr_idx) + len(ev_idx), unit="img") as bar:
        shown = _log_notes(bar, notes)
        raw_tr, pack_tr = pooled_features(train_entry, train_feats, tr_idx, model, device, bar)
        raw_ev, pack_ev = pooled_features(eval_entry, eval_feats, ev_idx, model, device, bar)
    y_tr = entry_labels(train_entry, tr_idx)
    y_ev = entry_labels(eval_entry, ev_idx)
    classes = int(train_entry.attrs.get("num_classes") or 0) or int(max(y_tr.max(), y_ev.max()) + 1)

    pca, pca_tr, pca_ev = _pca_rows(settings, train_entry, train_feats, d, raw_tr, raw_ev)

    method = str(handle.extra.get("method", "repack"))
    label = "RePack" if method == "repack" else "PCA (pack run)"
    width = raw_tr.shape[1]
    reps = [
        (f"encoder tokens ({handle.extra.get('encoder', {}).get('id', '?')})", raw_tr, raw_ev),
        (f"PCA-{d}", pca_tr, pca_ev),
        (f"{label}-{d} ({handle.run_name})", pack_tr, pack_ev),
    ]
    rows = _probe_rows(reps, y_tr, y_ev, classes, cfg.probe_epochs, settings.seed, device)
    notes.append(f"chance level: {100 / classes:.2f}%; raw width {width}")
    report = ProbeReport(
        run=handle.run_name,
        train_entry=train_entry.name,
        eval_entry=eval_entry.name,
        n_train=len(tr_idx),
        n_eval=len(ev_idx),
        num_classes=classes,
        rows=rows,
        pca_explained=pca.cumulative_ratio,
        notes=notes,
        train_subset=tr_subset,
        eval_subset=ev_subset,
        shown=shown,
        checkpoint=str(handle.checkpoint),
        pack_id=handle.pack_id,
        epochs=cfg.probe_epochs,
        seed=settings.seed,
        pca_samples=cfg.pca_samples,
        **identity,
    )
    from repackctl.files import write_json_atomic

    if earlier is not None:  # its note goes into this report's notes too
        set_aside_earlier(path, earlier, identity, notes)
    write_json_atomic(path, report.to_dict())
    return report
