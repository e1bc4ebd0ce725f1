"""Which generated samples `evaluate fid` may score, and which of them it takes.

- An *unfinished* sample run (``repackctl sample`` wrote its settings file but not yet its
  ``protocol.json``) is refused: part of a run is neither the protocol its card would claim nor
  external samples.
- A *checkpoint* folder is scored on samples made from that checkpoint only: the samples' card
  (or, for an unfinished run, its settings file) records the sha256 of the weights file it
  sampled, which is compared with the checkpoint's.
- ``--samples N`` below the number available takes a *class-stratified* subset when the labels
  are known (the first ``N / classes`` of each class, in index order), so that a card saying
  ``label_scheme: balanced`` describes the scored images; the subset is written on the card.
  A class list (``--labels 3,7,7``) or text-to-image prompts give sample i the class or prompt
  i mod their count: their first N, the samples ``sample -n N`` makes, in their proportions.
- A folder of PNGs (no ``samples.npz``) is scored on its *sample files* only
  (:func:`sample_files`): for a finished sample run, exactly the numbered PNGs its card counts;
  elsewhere every image file but the preview ``grid.png``.

Real images of a cache entry (``evaluate recon|probe -n N``, ``evaluate stats --ref-cache E
--num N``) are subset by :func:`round_robin_indices`: image-folder entries are stored sorted by
class, so their first N rows would be the first classes only.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from repackctl.errors import ConfigError, DataError, RepackError, name_items
from repackctl.files import IMAGE_EXTENSIONS, sha256_file_cached
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON

#: label schemes whose first N samples are a fair subset (labels drawn independently per index)
FIRST_N_SCHEMES = ("uniform-random",)
#: label schemes that say nothing about the labels (external samples)
UNKNOWN_SCHEMES = (None, "", "unknown")
#: the preview ``repackctl sample`` writes beside its samples (several samples, padded): never a
#: sample, in any folder
GRID_PNG = "grid.png"


# --------------------------------------------------------------------------- unfinished runs
def read_sample_settings(folder: Path) -> dict[str, Any]:
    """The settings file ``repackctl sample`` starts a folder with, or {} (absent or unreadable)."""
    path = folder / SETTINGS_JSON
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def is_unfinished_sample_run(folder: Path) -> bool:
    """``repackctl sample`` started ``folder`` (its settings file) but did not finish it."""
    return (
        folder.is_dir()
        and (folder / SETTINGS_JSON).is_file()
        and not (folder / PROTOCOL_JSON).is_file()
    )


def refuse_unfinished(folder: Path, how: str = "") -> None:
    """A ``DataError`` when ``folder`` is an unfinished sample run (``how``: how it was found)."""
    if not is_unfinished_sample_run(folder):
        return
    started = read_sample_settings(folder).get("num")
    have = sum(1 for p in folder.glob("[0-9]*.png") if p.is_file())
    of = f" of the {started}" if isinstance(started, int) else ""
    raise DataError(
        f"{how}{folder} was not finished by `repackctl sample` ({have}{of} images written, no "
        f"{PROTOCOL_JSON}); part of a sample run is not scored",
        hint="rerun the same `repackctl sample` command to finish it (it resumes where it "
        "stopped), then evaluate again",
    )


# --------------------------------------------------------------------------- sample files
def sample_files(folder: Path, protocol: dict[str, Any]) -> tuple[list[Path], str | None]:
    """(the image files of ``folder`` that are samples, in index order; a note on what was left
    out, or None).

    - A sample run's card (``protocol.json`` recording ``num_samples``, as ``repackctl sample``
      and ``refine apply`` write it): exactly ``000000.png …`` up to that count, the names
      ``repackctl sample`` writes (``sample.folder.png_path``). Other files (``grid.png``, an
      image a user dropped in, an index past the count) are not samples of the run. A missing
      one is a ``DataError``: the rest is not the sample set the card describes.
    - Any other folder (external samples; a card without a count is not one ``sample`` wrote):
      every image file, sorted by name, except ``grid.png`` (:data:`GRID_PNG`), the name of the
      preview grid, which is never a sample.
    """
    if "num_samples" in protocol:
        return _run_files(folder, protocol), None
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    kept = [p for p in files if p.name != GRID_PNG]
    note = None
    if len(kept) < len(files):
        note = f"{GRID_PNG} in {folder} is the preview grid of `repackctl sample`: not scored"
    return kept, note


def _run_files(folder: Path, protocol: dict[str, Any]) -> list[Path]:
    """``000000.png …`` of a finished sample run, all ``num_samples`` of them, or a DataError."""
    from repackctl.sample.folder import png_path

    num = protocol["num_samples"]
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise DataError(
            f"the {PROTOCOL_JSON} of {folder} records num_samples {num!r}, not a count",
            hint="the samples folder is damaged: regenerate it (`repackctl sample`)",
        )
    files = [png_path(folder, i) for i in range(num)]
    lost = [p.name for p in files if not p.is_file()]
    if lost:
        again = "`repackctl refine apply`" if protocol.get("refined_from") else "`repackctl sample`"
        raise DataError(
            f"{folder} lacks {len(lost)} of the {num} sample images its {PROTOCOL_JSON} "
            f"records ({name_items(lost, 3)}): the others are "
            "not the sample set its card describes",
            hint=f"rerun the same {again} command that wrote it (it regenerates the missing "
            "samples and samples.npz), then evaluate again",
        )
    return files


def check_recorded_count(protocol: dict[str, Any], available: int, where: str) -> None:
    """A ``DataError`` when a card records ``num_samples`` and the samples file holds another count.

    ``repackctl sample`` assembles ``samples.npz`` from exactly the card's count of samples; a file
    with more or fewer was replaced or cut after the card was written, so the card (sampler,
    labels, checkpoint) no longer describes it.
    """
    num = protocol.get("num_samples")
    if isinstance(num, bool) or not isinstance(num, int) or num == available:
        return
    raise DataError(
        f"{where} holds {available} samples but its {PROTOCOL_JSON} records {num}: the file is "
        "not the sample set its card describes",
        hint="regenerate the samples into a new folder (`repackctl sample ... --out NEW`), or "
        "copy the .npz out of the folder under another name to score it as external samples",
    )


# --------------------------------------------------------------------------- checkpoints
def recorded_weights(folder: Path, protocol: dict[str, Any]) -> tuple[str | None, str]:
    """(sha256 of the weights file the samples were made from, which weights: ema/model)."""
    settings = {} if protocol else read_sample_settings(folder)
    sha = protocol.get("checkpoint_sha256") or settings.get("checkpoint_sha256")
    which = protocol.get("weights") or settings.get("weights") or "ema"
    which = which if which in ("ema", "model") else "ema"  # the weights files `sample` loads
    return (sha if isinstance(sha, str) and sha else None), which


def made_from_checkpoint(folder: Path, protocol: dict[str, Any], checkpoint: Path) -> bool:
    """Whether the samples in ``folder`` were made from the weights of ``checkpoint``.

    The card (or an unfinished run's settings file) records the sha256 of the weights file
    sampled (``<which>.safetensors``, as ``repackctl sample`` hashes it), compared with that
    file of ``checkpoint``. A card that names this checkpoint folder also counts when its
    sha256 is the folder's (``ProtocolCard.build``) or absent (nothing to compare).
    """
    sha, which = recorded_weights(folder, protocol)
    weights = checkpoint / f"{which}.safetensors"
    if sha is not None and weights.is_file() and sha256_file_cached(weights) == sha:
        return True
    named = protocol.get("checkpoint")
    if not named or Path(str(named)).expanduser().resolve() != checkpoint.resolve():
        return False
    if sha is None:
        return True
    from repackctl.metrics.frechet import sha256_path

    return sha256_path(checkpoint) == sha


# --------------------------------------------------------------------------- labels and subsets
def npz_labels(path: Path, available: int) -> np.ndarray | None:
    """The labels (``arr_1`` or ``labels``) of a samples ``.npz``, or None when it has none."""
    from repackctl.metrics.adm import LABELS_KEYS

    try:
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in LABELS_KEYS if k in z.files), None)
            labels = None if key is None else np.asarray(z[key])
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read the labels of {path}: {e}") from e
    return None if labels is None else checked_labels(labels, available, str(path))


def checked_labels(labels: Any, available: int, where: str) -> np.ndarray:
    """``labels`` as an int64 vector of one label per sample, or a ``DataError``."""
    arr = np.asarray(labels)
    if arr.shape != (available,) or arr.dtype.kind not in "iu":
        raise DataError(
            f"the labels of {where} are {arr.dtype} {arr.shape}, not one integer per sample "
            f"({available})",
            hint="the samples are damaged: regenerate them (`repackctl sample`)",
        )
    return arr.astype(np.int64)


def stratified_indices(labels: np.ndarray, num: int, where: str) -> tuple[np.ndarray, dict]:
    """The first ``num / classes`` samples of each class (index order), and their card record."""
    classes, counts = np.unique(labels, return_counts=True)
    k_classes, fewest = len(classes), int(counts.min())
    most = k_classes * fewest
    if num % k_classes or num > most:
        below, above = num // k_classes * k_classes, (num // k_classes + 1) * k_classes
        valid = [str(m) for m in (below, above) if 0 < m <= most]
        raise DataError(
            f"--samples {num} cannot take the same number of samples from each of the "
            f"{k_classes} classes of {where} (each class holds at least {fewest})",
            hint=f"pass a multiple of {k_classes} up to {most} (e.g. --samples "
            f"{' or --samples '.join(valid)}), or leave --samples out to score all "
            f"{len(labels)}",
        )
    per_class = num // k_classes
    idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes]))
    record = {
        "rule": "first-per-class",
        "per_class": per_class,
        "num_classes": k_classes,
        "num": num,
        "of": len(labels),
        "description": f"the first {per_class} samples (index order) of each of the "
        f"{k_classes} classes",
    }
    return idx, record


def refuse_more_than_held(
    flag: str,
    num: int | None,
    available: int | None,
    source: str,
    instead: str,
    *,
    unit: str = "images",
    held: str | None = None,
    error: type[RepackError] = ConfigError,
) -> None:
    """Refuse ``flag num`` when ``source`` holds fewer ``unit`` (``available``; None: a source
    made to any number): the subset rules take all of them then, and the result was of fewer
    than asked for, named as the whole source's, without a word. The one rule of every count
    flag that reads a source (`evaluate recon|probe -n`, `evaluate stats --num`, `evaluate fid
    --samples`). ``held``: what was counted, where not every item is (``usable images (…)``);
    ``instead``: the hint's other way out; ``error``: its class (a samples folder of too few
    is a DataError, a flag above an entry's rows a ConfigError)."""
    if num is None or available is None or num <= available:
        return
    raise error(
        f"{flag} {num} asks for {num} {unit} of {source}, but it holds {available} "
        f"{held or unit}: the result would be of {available}, not {num}; nothing was computed",
        f"pass {flag} {available} or fewer (or leave {flag} out for all {available}), or {instead}",
    )


def round_robin_indices(
    rows: np.ndarray, labels: np.ndarray | None, num: int | None
) -> tuple[np.ndarray, dict]:
    """(``num`` of the cache ``rows``, ascending; the record of the subset for the report).

    ``rows`` are ascending cache indices and ``labels`` their classes. With known labels (all
    ≥ 0) the subset is a round robin in index order: the first row of each class, then the
    second of each, …, stopping at ``num``; a class that runs out drops out. Labels
    ``index % k`` (the built-in dataset) thus give exactly the first ``num`` rows. Unknown labels
    (None, or -1: a folder without class folders) give the first ``num`` rows; ``num`` None or
    covering every row gives them all. A ``num`` above the rows is thus taken as all of them:
    the commands refuse it before they call this (:func:`refuse_more_than_held`), as a report
    of fewer images than asked, named as the whole entry's, said nothing.
    """
    n = len(rows)
    if num is None or num >= n:
        return rows, {"rule": "all", "num": n, "of": n}
    if labels is None or bool((labels < 0).any()):
        why = f"the first {num} in index order (labels unknown)"
        return rows[:num], {"rule": "first", "num": num, "of": n, "description": why}
    order = np.argsort(labels, kind="stable")  # by class, index order within a class
    grouped = labels[order]
    rank = np.empty(n, dtype=np.int64)  # 0 for the first row of its class, 1 for the second…
    rank[order] = np.arange(n) - np.searchsorted(grouped, grouped, side="left")
    pick = np.sort(np.lexsort((np.arange(n), rank))[:num])  # by rank, then by index
    classes, counts = np.unique(labels[pick], return_counts=True)
    k_classes = len(np.unique(labels))
    record = {
        "rule": "round-robin-per-class",
        "num": num,
        "of": n,
        "num_classes": k_classes,
        "per_class": {str(int(c)): int(m) for c, m in zip(classes, counts, strict=True)},
        "description": f"class-balanced over {k_classes} classes (round robin in index order)",
    }
    return rows[pick], record


def choose_subset(
    protocol: dict[str, Any], labels: np.ndarray | None, num: int | None, available: int, where: str
) -> tuple[np.ndarray | None, dict]:
    """(sorted indices to score, or None for all; the card's record of the subset).

    All samples when ``num`` is None or covers them; the first ``num`` for a class list or
    prompts (:func:`is_cyclic_scheme`); with known labels a class-stratified subset
    (:func:`stratified_indices`); the first ``num`` when labels were drawn independently per
    index (``uniform-random``) or are unknown (external samples). Samples whose card promises a
    label scheme but whose labels are lost are refused rather than cut arbitrarily.
    """
    if num is None or num >= available:
        return None, {"rule": "all", "num": available, "of": available}
    scheme = protocol.get("label_scheme")
    if is_cyclic_scheme(scheme):  # the samples `sample -n num` makes with this scheme
        return np.arange(num, dtype=np.int64), _first_record(num, available, _CYCLIC_WHY)
    if labels is not None and scheme not in FIRST_N_SCHEMES:
        return stratified_indices(labels, num, where)
    if scheme not in FIRST_N_SCHEMES + UNKNOWN_SCHEMES:
        raise DataError(
            f"--samples {num} needs a subset with the label scheme {scheme!r} of {where}, but "
            "its labels are not recorded (no samples.npz labels, no labels in protocol.json)",
            hint=f"leave --samples out to score all {available}, or regenerate the samples "
            "(`repackctl sample`)",
        )
    why = "labels drawn per index" if scheme in FIRST_N_SCHEMES else "labels unknown"
    return np.arange(num, dtype=np.int64), _first_record(num, available, why)


#: why the first N samples of a class list or of prompts are the subset
_CYCLIC_WHY = "sample i has class or prompt i mod their count: as `sample -n N` gives them"


def is_cyclic_scheme(scheme: object) -> bool:
    """Whether sample i's label is a fixed cycle of the index: a class list (``classes:3,7,7``,
    sample i gets ``ids[i mod len]``) or text-to-image prompts (``prompts``: prompt i mod P).
    Their first N samples are the ones ``sample -n N`` makes (the same labels and seeds), in
    the scheme's proportions; taking as many of each class would change those (``3,7,7`` holds
    twice as many 7s as 3s)."""
    return isinstance(scheme, str) and (scheme == "prompts" or scheme.startswith("classes:"))


def _first_record(num: int, available: int, why: str) -> dict:
    """The card's record of a first-``num`` subset."""
    description = f"the first {num} samples in index order ({why})"
    return {"rule": "first", "num": num, "of": available, "description": description}
