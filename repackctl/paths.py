"""Where caches, runs and samples live. Every path is made absolute once, here."""

from __future__ import annotations

from pathlib import Path

from repackctl.errors import CheckpointError

# file names inside runs and samples folders
SAMPLING_JSON = "sampling.json"  # a run's sampling defaults (written by `import official`)
SETTINGS_JSON = ".sample-settings.json"  # the settings a samples folder was started with
PROTOCOL_JSON = "protocol.json"  # the protocol card of a samples folder
SAMPLES_NPZ = "samples.npz"  # ADM-layout images of a samples folder
METRICS_JSON = "metrics.json"  # scores with their card
LATENTS_DIR = "latents"  # per-index raw latents of a samples folder (while it is being made)
LATENTS_FILE = "latents.npy"  # all raw latents of a finished samples folder


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
    """Name of a dataset-split entry in the cache (DESIGN.md §4)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset)
    return f"{safe}--{split}--{resolution}px"


def run_dir(runs: str, name: str) -> Path:
    """Folder of the run ``name`` under the runs root."""
    return local_path(runs) / name


def resolve_checkpoint_arg(runs: str, run: str, checkpoint: str | None = None) -> Path:
    """A run name (under ``runs``), run folder or checkpoint folder → the folder to load."""
    path = Path(run).expanduser()
    base = path if path.exists() else run_dir(runs, run)
    if not base.exists():
        raise CheckpointError(
            f"no run {run!r} (looked in {base})", "train one first, or check --runs / the name"
        )
    if checkpoint is None:
        return base.resolve()
    ck = Path(checkpoint).expanduser()
    if ck.is_dir():
        return ck.resolve()
    folder = base / "checkpoints" / checkpoint
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
