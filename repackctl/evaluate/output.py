"""Where `evaluate fid` writes ``metrics.json``, checked before any sampling or scoring.

An explicit ``--out`` is a folder (``metrics.json`` goes inside; an existing folder is a folder
whatever its name) or a path ending in ``.json``. A target that cannot be written (a file where a
folder is expected, a read-only place) is refused before the work starts, so the user never waits
for scores that end in a traceback; an existing file that is not a ``metrics.json`` written by
repackctl is refused rather than replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

from repackctl.errors import ConfigError
from repackctl.files import ensure_writable_dir
from repackctl.paths import METRICS_JSON

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
    return isinstance(doc, dict) and "metrics" in doc and "protocol" in doc


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
