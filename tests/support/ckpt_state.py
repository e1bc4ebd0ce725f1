"""Rewrite a checkpoint's ``state.json`` in tests that change one of its fields on purpose."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repackctl.run_files import json_sha256
from repackctl.train.checkpoint import STATE_SHA256


def write_state(path: Path, state: dict[str, Any], sealed: bool = True) -> None:
    """Write ``state`` to ``path`` (a checkpoint's ``state.json``). ``sealed``: with the sha256
    of its new content, as a tool that rewrites the file consistently would (the change under
    test is then the field, not damage); else without one, as versions before it wrote it."""
    doc = {k: v for k, v in json.loads(json.dumps(state)).items() if k != STATE_SHA256}
    if sealed:
        doc[STATE_SHA256] = json_sha256(doc, STATE_SHA256)
    path.write_text(json.dumps(doc))


def run_state(root: Path, run: str) -> tuple[Path, dict[str, Any]]:
    """(newest checkpoint, its state) of the run ``root / "runs" / run``."""
    from repackctl.train.checkpoint import latest_checkpoint, read_state

    ckpt = latest_checkpoint(root / "runs" / run)
    return ckpt, read_state(ckpt)


def as_recorded_before(run_dir: Path, section: str, key: str, setting: str) -> None:
    """The run's records as a version before the pack setting ``setting`` wrote them: ``key``
    gone from the autoencoder config's ``section`` (``projection``/``decoder``) and from the plan,
    the setting gone from the settings record, in every checkpoint and in ``config.json``."""

    def strip(extra: dict) -> None:
        for config in (
            extra.get("autoencoder_config"),
            (extra.get("plan") or {}).get("autoencoder"),
        ):
            if config:
                config[section].pop(key, None)
        settings = extra.get("settings") or {}
        (settings.get("values") or {}).get("pack", {}).pop(setting, None)
        (settings.get("sources") or {}).pop(f"pack.{setting}", None)

    rewrite_records(run_dir, strip)


def started_before(run: Path, section: str, names: list[str], recorded: list[str]) -> None:
    """``run``'s records as a version before the settings ``names`` wrote them: each gone from
    the settings record, and each ``recorded`` (``"refiner_config.max_groups"``, a dotted path
    in a checkpoint's task extra) gone, in every checkpoint and in ``config.json``."""

    def strip(extra: dict) -> None:
        record = extra.get("settings") or {}
        for name in names:
            ((record.get("values") or {}).get(section) or {}).pop(name, None)
            (record.get("sources") or {}).pop(f"{section}.{name}", None)
        for path in recorded:
            *parents, key = path.split(".")
            node = extra
            for part in parents:
                node = node.get(part) or {}
            node.pop(key, None)

    rewrite_records(run, strip)


def rewrite_records(run_dir: Path, strip: Callable[[dict], None]) -> None:
    """``strip`` applied to the task extra of every checkpoint's state (and of its config) and of
    ``config.json``, each written back as the older version that lacked it wrote it."""
    for path in (run_dir / "checkpoints").glob("step-*/state.json"):
        state = json.loads(path.read_text())
        strip(state["extra"])
        strip((state.get("config") or {}).get("extra") or {})
        write_state(path, state)
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    strip(config["extra"])
    config.pop("config_sha256", None)  # as that version wrote it
    path.write_text(json.dumps(config))
