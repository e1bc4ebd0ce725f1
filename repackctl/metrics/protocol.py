"""The protocol card: everything that changes a generative score, written beside the score.

DESIGN.md §7. Users of the reference projects mostly cannot reproduce FIDs because the numbers
depend on sampler, steps, guidance scale/interval/channels, timestep shift, label balance, seed,
precision, evaluator, feature-extractor weights and reference statistics — and none of that was
written next to the number. Every ``metrics.json`` we write carries a complete card; a card with a
missing field is refused rather than written.

Conventions (DESIGN.md §2): t = 0 is data, t = 1 noise; ``cfg_interval = (lo, hi)`` means guidance
is active for lo ≤ t ≤ hi ((0, 1) = always); ``shift`` is in our convention (the official RePack
code's 0.3 is our 1/0.3); ``cfg_legacy_channels = k > 0`` is the DiT/LightningDiT behaviour of
guiding only the first k latent channels, 0 means all channels (our default).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repackctl.errors import ConfigError, DataError
from repackctl.metrics.frechet import FeatureStats, atomic_path, sha256_path
from repackctl.versions import installed_version

CARD_VERSION = 1
#: fields that may be None (everything else must hold a value)
OPTIONAL_FIELDS = frozenset({"git_revision"})
#: ``sampler`` of samples not made by repackctl (e.g. a released samples.npz): their generation
#: settings are unknown and written as null rather than invented
EXTERNAL_SAMPLER = "external"
#: generation fields that may be null on the card of external samples
EXTERNAL_UNKNOWN_FIELDS = frozenset(
    {"steps", "nfe", "cfg_scale", "cfg_interval", "cfg_legacy_channels", "shift", "seed"}
)


@dataclass
class ProtocolCard:
    """How a set of samples was generated and scored."""

    # generation
    sampler: str  # e.g. "euler-ode", "euler-maruyama-sde"
    steps: int
    nfe: int  # network evaluations per sample (CFG doubles them where active)
    cfg_scale: float
    cfg_interval: tuple[float, float]  # guidance active for lo ≤ t ≤ hi; (0, 1) = always
    cfg_legacy_channels: int  # k > 0: guide only the first k channels (legacy); 0: all
    shift: float  # timestep shift s in our convention
    label_scheme: str  # e.g. "balanced" (N/classes per class), "uniform-random"
    seed: int
    precision: str  # e.g. "fp32", "bf16"
    checkpoint: str  # name or path of the checkpoint
    checkpoint_sha256: str
    # scoring
    evaluator: str  # e.g. "repackctl.metrics.generative (torch-fidelity 0.4.0 functions)"
    feature_extractor: str
    feature_extractor_sha256: str
    reference_file: str
    reference_sha256: str
    num_samples: int
    # software
    versions: dict = field(default_factory=dict)  # torch, torch-fidelity, repackctl, …
    git_revision: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.cfg_interval is not None:  # None only on the card of external samples
            d["cfg_interval"] = [float(v) for v in self.cfg_interval]
        d["card_version"] = CARD_VERSION
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolCard:
        validate_card(data)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs["cfg_interval"] is not None:
            kwargs["cfg_interval"] = tuple(kwargs["cfg_interval"])
        return cls(**kwargs)

    @classmethod
    def build(
        cls,
        *,
        checkpoint: str | Path,
        reference_file: str | Path,
        feature_extractor_weights: str | Path | None = None,
        feature_extractor_sha256: str | None = None,
        **fields: Any,
    ) -> ProtocolCard:
        """Make a card, hashing the checkpoint (file or folder), reference and extractor weights.

        Versions and the git revision are filled in; every other field is passed by name.
        """
        if feature_extractor_sha256 is None:
            if feature_extractor_weights is None:
                raise ConfigError("give feature_extractor_weights (a file) or its sha256")
            feature_extractor_sha256 = sha256_path(feature_extractor_weights)
        fields.setdefault("versions", package_versions())
        fields.setdefault("git_revision", git_revision())
        return cls(
            checkpoint=str(checkpoint),
            checkpoint_sha256=sha256_path(checkpoint),
            reference_file=str(reference_file),
            reference_sha256=sha256_path(reference_file),
            feature_extractor_sha256=feature_extractor_sha256,
            **fields,
        )


#: the packages whose versions a card records (after ``python``), in this order
CARD_PACKAGES = ("torch", "torch-fidelity", "numpy", "scipy", "repackctl")


def package_versions() -> dict[str, str]:
    """Versions of the packages that change scores (missing ones are reported as such), as
    every versions record reads them (``repackctl.versions.installed_version``: once per
    process; repackctl from a source checkout by its ``__version__``); a new dict per call."""
    return {"python": platform.python_version()} | {
        dist: installed_version(dist) for dist in CARD_PACKAGES
    }


def git_revision(path: str | Path | None = None) -> str | None:
    """``git describe --always --dirty`` of the source tree holding ``path`` (default: repackctl)."""
    if path is None:
        import repackctl

        path = Path(repackctl.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or not a checkout (an installed wheel)
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def validate_card(card: ProtocolCard | Mapping[str, Any]) -> dict:
    """Check that every field is present and filled; returns the card as a dict or raises."""
    d = card.to_dict() if isinstance(card, ProtocolCard) else dict(card)
    names = [f.name for f in dataclasses.fields(ProtocolCard)]
    missing = [n for n in names if n not in d]
    optional = OPTIONAL_FIELDS
    if d.get("sampler") == EXTERNAL_SAMPLER:
        optional = optional | EXTERNAL_UNKNOWN_FIELDS
    empty = [
        n
        for n in names
        if n in d and n not in optional and (d[n] is None or d[n] == "" or d[n] == {})
    ]
    if missing or empty:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if empty:
            parts.append(f"empty {', '.join(empty)}")
        raise ConfigError(
            f"the protocol card is incomplete ({'; '.join(parts)})",
            hint="every score is written with its full protocol: sampler, steps, NFE, CFG scale "
            "and interval, shift, labels, seed, precision, checkpoint, evaluator, extractor, "
            "reference file and N",
        )
    interval = d["cfg_interval"]
    if interval is not None and not (isinstance(interval, list | tuple) and len(interval) == 2):
        raise ConfigError(f"cfg_interval must be (lo, hi), got {interval!r}")
    for n in ("steps", "nfe", "num_samples"):
        if d[n] is None and n in optional:
            continue
        if not isinstance(d[n], int) or d[n] <= 0:
            raise ConfigError(f"protocol field {n} must be a positive integer, got {d[n]!r}")
    return d


def verify_card_files(card: ProtocolCard | Mapping[str, Any], **paths: str | Path) -> None:
    """Check ``<name>_sha256`` of the card against files, e.g. ``checkpoint=PATH, reference=PATH``.

    Keyword names: ``checkpoint``, ``reference`` (→ reference_sha256), ``feature_extractor``.
    """
    d = validate_card(card)
    keys = {"checkpoint": "checkpoint_sha256", "reference": "reference_sha256"}
    keys["feature_extractor"] = "feature_extractor_sha256"
    for name, path in paths.items():
        if name not in keys:
            raise ConfigError(f"unknown card file {name!r}", hint=f"use one of {', '.join(keys)}")
        path = Path(path)
        weights = path / f"{d.get('weights', '')}.safetensors"
        if name == "checkpoint" and path.is_dir() and d.get("weights") and weights.is_file():
            # cards written by `repackctl sample` hash the weights file that generated
            path = weights
        actual = sha256_path(path)
        if actual != d[keys[name]]:
            raise DataError(
                f"{path} (sha256 {actual[:12]}…) is not the {name} this score was computed with "
                f"({d[keys[name]][:12]}…)",
                hint="score again with the files named in the protocol card",
            )


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars → Python, non-finite floats → None, stats → summary."""
    if isinstance(value, FeatureStats):
        return {"n": value.n, "dim": value.dim}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy / torch scalar or array
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; a PSNR of identical images is reported as null
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise DataError(f"cannot write {type(value).__name__} to metrics.json")


def write_metrics_json(
    path: str | Path, metrics: Mapping[str, Any], card: ProtocolCard | Mapping[str, Any]
) -> Path:
    """Write ``{"metrics": …, "protocol": card, "written_at": …}`` atomically; refuses bad cards."""
    card_dict = validate_card(card)
    doc = {
        "metrics": _jsonable(metrics),
        "protocol": _jsonable(card_dict),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(path)
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # callers check the place first (evaluate/output.py); this is the last line of defence
        raise ConfigError(
            f"cannot write {path}: {e.strerror} ({e.filename})",
            "write the metrics into a folder you can write to, or to a new path ending in .json",
        ) from None
    return path


def read_metrics_json(path: str | Path) -> tuple[dict, ProtocolCard]:
    """Read a file written by :func:`write_metrics_json`; the card is validated."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if "metrics" not in doc or "protocol" not in doc:
        raise DataError(f"{path} has no metrics/protocol sections")
    return doc["metrics"], ProtocolCard.from_dict(doc["protocol"])
