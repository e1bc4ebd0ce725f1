"""Where caches, runs and samples live. Every path is made absolute once, here."""

from __future__ import annotations

import re
from pathlib import Path

from repackctl.errors import CheckpointError, ConfigError

# file names inside runs and samples folders; these four are defined beside the other run files
# and re-exported here (``runs`` reads them too, and must not import ``paths``, which asks
# ``runs`` for its hints)
from repackctl.run_files import PROTOCOL_JSON as PROTOCOL_JSON
from repackctl.run_files import SAMPLES_NPZ as SAMPLES_NPZ
from repackctl.run_files import SAMPLING_JSON as SAMPLING_JSON
from repackctl.run_files import SETTINGS_JSON as SETTINGS_JSON

METRICS_JSON = "metrics.json"  # scores with their card
LATENTS_DIR = "latents"  # per-index raw latents of a samples folder (while it is being made)
LATENTS_FILE = "latents.npy"  # all raw latents of a finished samples folder


#: one safe path component: starts with a letter or digit, then letters, digits, ``.``, ``_``, ``-``
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


_EXAMPLES = {"run name": "my-run_1", "split": "val", "dataset id": "my-data"}


#: the longest safe name: file systems take 255 bytes per name, and temporary and removal names
#: add to it (``.removing-<name>``, ``.<name>.<pid>-<host>.<hex>.tmp``)
MAX_NAME = 160


def safe_name(value: str, what: str) -> str:
    """``value`` if it is one safe path component (run names, splits, dataset ids), else an error.

    Safe: ``[A-Za-z0-9][A-Za-z0-9._-]*`` and not ``.``/``..`` (excluded by the first character):
    no separators, no absolute paths, nothing that climbs out of the folder it is joined to;
    at most ``MAX_NAME`` characters (a longer one was an ``OSError`` traceback).
    """
    if isinstance(value, str) and SAFE_NAME.fullmatch(value) and len(value) > MAX_NAME:
        raise ConfigError(
            f"{what} {value[:32]}… is {len(value)} characters long: it becomes a folder name, "
            f"beside temporary names made from it, so it may be at most {MAX_NAME}",
            f"pick a shorter {what}, e.g. {_EXAMPLES.get(what, 'my-name_1')!r}",
        )
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a safe name: it becomes a folder name, so it must be one "
            "path component of letters, digits, '.', '_' or '-', starting with a letter or digit",
            f"pick another {what}, e.g. {_EXAMPLES.get(what, 'my-name_1')!r}",
        )
    return value


def is_url(root: str) -> bool:
    """True for fsspec URLs (``s3://…``, ``memory://…``), false for local paths and ``file://``."""
    return "://" in root and not root.startswith("file://")


def local_path(root: str) -> Path:
    """A local cache/run root as an absolute path (``~`` expanded, ``file://`` stripped)."""
    if root.startswith("file://"):
        root = root[len("file://") :]
    return Path(root).expanduser().resolve()


def cache_root(root: str) -> str:
    """The cache root as stored in attributes: absolute local path or the URL unchanged."""
    return root if is_url(root) else str(local_path(root))


def entry_name(dataset: str, split: str, resolution: int) -> str:
    """Name of a dataset-split entry in the cache (DESIGN.md §4); both parts must be safe names."""
    return f"{safe_name(dataset, 'dataset id')}--{safe_name(split, 'split')}--{resolution}px"


def run_dir(runs: str, name: str) -> Path:
    """Folder of the run ``name`` (a safe name, checked here) under the runs root."""
    return local_path(runs) / safe_name(name, "run name")


#: the command that makes a run of each stage (for "no such run" hints)
TRAIN_COMMANDS = {
    "pack": "repackctl pack train",
    "dit": "repackctl train dit",
    "refine": "repackctl refine train",
}


def _looks_loadable(folder: Path) -> bool:
    """True for a folder that looks like a run or a checkpoint (``checkpoints/``, ``config.json``
    or ``state.json``): the folders a bare name must not silently pick over, or be picked over."""
    return folder.is_dir() and (
        (folder / "checkpoints").is_dir()
        or (folder / "config.json").is_file()
        or (folder / "state.json").is_file()
    )


def _here_or_there(name: str, here: Path, there: Path, what: str) -> Path:
    """The folder an argument names: ``here`` (the argument as a path, relative to the cwd) or
    ``there`` (the name inside the runs root or the run).

    A path that exists is taken as it is, anything else is ``there`` — except for a bare name
    (one safe component, no separator) that exists in both places as two different folders:
    if the one here looks like no run or checkpoint (a samples folder, say) the one there is
    meant; otherwise it is ambiguous and refused, naming both (``./NAME`` or a full path picks).
    """
    if not here.exists():
        return there
    if not SAFE_NAME.fullmatch(name) or not there.exists() or here.resolve() == there.resolve():
        return here
    if not _looks_loadable(here):
        return there
    raise ConfigError(
        f"{what} {name!r} names two different folders: {here.resolve()} (in the current "
        f"folder) and {there}",
        f"pass ./{name} for the folder here, or the full path {there}",
    )


def resolve_checkpoint_arg(
    runs: str, run: str, checkpoint: str | None = None, stage: str | None = None
) -> Path:
    """A run name (under ``runs``), run folder or checkpoint folder → the folder to load.

    The one resolver of a run or checkpoint argument: a path that exists is taken as it is,
    anything else is a run name under ``runs``; a bare name that is both a folder here and a run
    under ``runs`` is the run when the folder here is no run, otherwise an error naming both
    (``_here_or_there``). ``checkpoint`` (a folder, or ``step-NNNNNNN`` of the run, resolved
    the same way) picks one checkpoint, otherwise the run or checkpoint folder itself is returned
    (``train.checkpoint.checkpoint_for_loading`` then takes the newest one, refused when it is
    damaged). A missing
    run is an error whose hint lists the runs that exist (of ``stage`` when given, with the
    command that makes one).
    """
    from repackctl.runs import runs_hint

    base = _here_or_there(run, Path(run).expanduser(), local_path(runs) / run, "run")
    if not base.exists():
        hint = runs_hint(local_path(runs), stage)
        if stage in TRAIN_COMMANDS:
            hint += f"; to make one: `{TRAIN_COMMANDS[stage]} --name {run}`"
        what = f"{stage} run or checkpoint" if stage else "run"
        raise CheckpointError(f"no {what} {run!r} (looked in {base})", hint)
    if checkpoint is None:
        return base.resolve()
    own = base / "checkpoints" / checkpoint
    folder = _here_or_there(checkpoint, Path(checkpoint).expanduser(), own, "checkpoint")
    if not folder.is_dir():
        have = (
            sorted(p.name for p in (base / "checkpoints").glob("step-*")) if base.is_dir() else []
        )
        raise CheckpointError(
            f"run {run!r} has no checkpoint {checkpoint!r} (have: {', '.join(have) or 'none'})",
            "pass --checkpoint step-NNNNNNN, or leave it out for the latest",
        )
    return folder.resolve()


def run_root_of(checkpoint: Path) -> Path:
    """``runs/<name>/checkpoints/step-…`` → ``runs/<name>``."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
