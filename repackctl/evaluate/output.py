"""Where `evaluate fid` writes ``metrics.json``, checked before any sampling or scoring.

An explicit ``--out`` is a folder (``metrics.json`` goes inside; an existing folder is a folder
whatever its name) or a path ending in ``.json``. A target that cannot be written (a file where a
folder is expected, a read-only place) is refused before the work starts, so the user never waits
for scores that end in a traceback; an existing file that is not a ``metrics.json`` written by
repackctl is refused rather than replaced. An existing ``metrics.json`` is replaced only by the
same result recomputed (same samples, reference, metrics and scoring protocol); ``--out`` inside a
training run or another samples folder is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from repackctl.errors import ConfigError
from repackctl.files import ensure_writable_dir
from repackctl.paths import METRICS_JSON, PROTOCOL_JSON, SAMPLES_NPZ

OUT_HINT = "pass --out a folder (metrics.json is written inside it) or a new path ending in .json"


def explicit_metrics_path(out: str) -> Path:
    """The ``metrics.json`` that ``--out OUT`` names (not checked: see :func:`check_metrics_target`)."""
    path = Path(out).expanduser().resolve()
    if path.is_dir() or path.suffix != ".json":
        return path / METRICS_JSON
    return path


def is_metrics_file(path: Path) -> bool:
    """Whether ``path`` is a file :func:`repackctl.metrics.protocol.write_metrics_json` wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return False
    return isinstance(doc, dict) and {"metrics", "protocol", "written_at"} <= doc.keys()


def check_metrics_target(path: Path, out_given: bool) -> None:
    """Refuse a ``metrics.json`` target that cannot be written or would replace a user's file.

    ``out_given``: the path came from ``--out`` (the message names it) rather than the default
    beside the samples. Nothing is created or changed here.
    """
    what = "--out folder" if out_given else "folder of metrics.json"
    hint = OUT_HINT if out_given else "pass --out to write the scores elsewhere"
    try:
        ensure_writable_dir(path.parent, what)
    except ConfigError as e:  # a file where a folder is expected, a read-only place
        raise ConfigError(f"{e.message}; nothing was scored or written", hint) from None
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a metrics file; nothing was scored", hint)
    if path.exists() and not is_metrics_file(path):
        raise ConfigError(
            f"{path} exists and is not a metrics.json written by repackctl; it was left "
            "untouched and nothing was scored",
            hint,
        )


# --------------------------------------------------------------------------- whose result it is
#: the card fields that make two scores of the same samples and reference comparable
SCORING_FIELDS = ("evaluator", "feature_extractor", "feature_extractor_sha256")
#: how an ``fd`` score was computed (``fd_detail`` of the metrics section)
FD_FIELDS = ("encoder", "feature", "fd_method")
RUN_HINT = "pass --out a folder of your own (or leave it out: metrics.json goes beside the samples)"


def _looks_like_samples(folder: Path) -> bool:
    """A folder `repackctl sample` (or a user) filled with samples: samples.npz, protocol.json
    or numbered image files."""
    if (folder / SAMPLES_NPZ).is_file() or (folder / PROTOCOL_JSON).is_file():
        return True
    return any(p.stem.isdigit() for p in folder.glob("*.png"))


def check_out_place(path: Path, own_folder: Path | None) -> None:
    """Refuse a ``metrics.json`` inside a training run or checkpoint folder (or below one), or
    inside a samples folder other than ``own_folder`` (the scored samples'; None = not known
    yet: only the run check is made). Nothing is created or changed here."""
    folder = path.parent.resolve()
    for d in (folder, *folder.parents):
        if (d / "state.json").is_file() or (
            (d / "config.json").is_file() and (d / "checkpoints").is_dir()
        ):
            raise ConfigError(
                f"{path} is inside the training run or checkpoint folder {d}; metrics are not "
                "written there, and nothing was scored",
                RUN_HINT,
            )
    if own_folder is not None and folder != own_folder.resolve() and _looks_like_samples(folder):
        raise ConfigError(
            f"{path} is inside {folder}, a folder of other samples than the ones scored "
            f"({own_folder}); a score there would read as theirs, so nothing was scored",
            RUN_HINT,
        )


def _read_doc(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # is_metrics_file() has checked it reads


def check_replaceable(path: Path, this: dict, card: dict | None = None) -> None:
    """Refuse replacing an existing ``metrics.json`` that holds another result.

    ``this`` is the ``generated``/``reference``/``metrics`` part of the document about to be
    written (with its ``fd_detail`` once the extractors are made); ``card`` (once the
    extractors are made: before anything is scored) its protocol card's scoring fields, which
    and the ``fd`` details must match too, the fd encoder's weights by sha256
    (:func:`by_content`). The same samples scored the same way against the same reference is
    the same result recomputed and may replace the file. Call after
    :func:`check_metrics_target`.
    """
    if not path.is_file():
        return
    doc = _read_doc(path)
    old = doc["metrics"] if isinstance(doc.get("metrics"), dict) else {}
    gen, ref = old.get("generated"), old.get("reference")
    if not isinstance(gen, dict) or not isinstance(ref, dict):
        raise ConfigError(
            f"{path} is a metrics file but not one `evaluate fid` wrote; it was left untouched "
            "and nothing was scored",
            OUT_HINT,
        )
    mine = this["generated"]
    # the samples are known by their content: a folder moved or renamed holds the same samples
    key = "sha256" if gen.get("sha256") and mine["sha256"] else "path"
    if (gen.get(key), gen.get("subset")) != (mine[key], mine["subset"]):
        raise ConfigError(
            f"{path} holds the scores of other samples ({gen.get('path')}), not of "
            f"{mine['path']}; it was left untouched and nothing was scored",
            "pass another --out for these samples' scores",
        )
    _check_same_scoring(path, old, doc.get("protocol") or {}, this, card)


def _same_metrics(recorded: object, wanted: list[str]) -> bool:
    """Whether a stored ``metrics`` list names the metrics ``wanted``, in any order: files
    written before `evaluate fid` put them in one order kept the order they were asked in."""
    return isinstance(recorded, list) and sorted(map(str, recorded)) == sorted(wanted)


#: how cards written before the Fréchet distance algorithm was named only where it was used
#: named it on the evaluator of KID/IS/PRC-only scores too
_UNUSED_FD_METHOD = re.compile(r", (?:sqrtm|cholesky) Fréchet distance\)")


def _without_unused_fd_method(card: dict, metrics: list[str]) -> dict:
    """``card`` with the Fréchet distance algorithm left out of its evaluator when ``metrics``
    hold no FID or sFID: an older card of the same KID/IS scores named it though it played
    no part, and the same result recomputed is no other protocol."""
    evaluator = card.get("evaluator")
    if set(metrics) & {"fid", "sfid"} or not isinstance(evaluator, str):
        return card
    return card | {"evaluator": _UNUSED_FD_METHOD.sub(")", evaluator)}


def by_content(key: str, value: object, fd_detail: dict) -> object:
    """``value`` of the card field or ``fd_detail`` field ``key`` with the fd encoder's weights
    named by their sha256 rather than by their tag (``file:<name>``, ``builtin``, ...): the
    same bytes under another file name are the same feature space, and a rerun that reads a
    copy of the weights recomputes the same result."""
    enc = fd_detail.get("encoder") if isinstance(fd_detail, dict) else None
    if not isinstance(enc, dict) or not enc.get("weights_sha256"):
        return value
    tag, by_sha = enc.get("weights"), f"sha256:{enc['weights_sha256']}"
    if key == "encoder" and isinstance(value, dict):
        return value | {"weights": by_sha}
    if key == "feature_extractor" and isinstance(value, str) and isinstance(tag, str):
        return value.replace(f", weights {tag})", f", weights {by_sha})")
    return value


def _fd_difference(key: str, was: object, now: object) -> str:
    """How the ``fd_detail`` field ``key`` of the stored result differs from this run's: for a
    dict (the encoder's spec, dozens of values) only the keys that differ, old → new."""
    if not isinstance(was, dict) or not isinstance(now, dict):
        return f"fd {key} {was!r} (this run: {now!r})"
    keys = [k for k in dict.fromkeys([*was, *now]) if was.get(k) != now.get(k)]
    changed = ", ".join(f"{k} {was.get(k)!r} → {now.get(k)!r}" for k in keys)
    return f"fd {key}: {changed} (stored → this run)"


def _reference_difference(was: dict, now: dict) -> str:
    """How the stored result's reference differs from this run's: their paths, or, when the
    paths are the same, their content sha256 (shortened): an entry or folder made again from
    other images under one name was named twice, and nothing said what differed."""
    if was.get("path") != now.get("path"):
        return f"reference {was.get('path')} (this run: {now.get('path')})"
    old_sha, new_sha = (str(d.get("sha256"))[:12] for d in (was, now))
    return (
        f"reference {now.get('path')} of other content, sha256 {old_sha}… (this run: "
        f"{new_sha}…): it was changed or made again from other images since"
    )


def _check_same_scoring(
    path: Path, old: dict, old_card: dict, this: dict, card: dict | None
) -> None:
    """Refuse when the stored result used another reference, metric set or extractor."""
    ref = old["reference"]
    diffs = []
    if ref.get("sha256") != this["reference"]["sha256"]:
        diffs.append(_reference_difference(ref, this["reference"]))
    if not _same_metrics(old.get("metrics"), this["metrics"]):
        diffs.append(f"metrics {old.get('metrics')} (this run: {this['metrics']})")
    if card is not None:  # the card's scoring fields and ``this``'s fd_detail are known
        was_card = _without_unused_fd_method(old_card, this["metrics"])
        was, now = old.get("fd_detail") or {}, this.get("fd_detail") or {}
        diffs += [
            f"{k} {old_card.get(k)!r} (this run: {card.get(k)!r})"
            for k in SCORING_FIELDS
            if by_content(k, was_card.get(k), was) != by_content(k, card.get(k), now)
        ]
        diffs += [
            _fd_difference(k, was.get(k), now.get(k))
            for k in FD_FIELDS
            if by_content(k, was.get(k), was) != by_content(k, now.get(k), now)
        ]
    if diffs:
        raise ConfigError(
            f"{path} holds these samples' scores made with another protocol: "
            f"{'; '.join(diffs)}; it was left untouched and nothing was written",
            "pass --out another path (e.g. metrics-<reference>.json) to keep both results",
        )
