"""Cached reference statistics are reused only when what made them is the same.

The key held the images' hash, n, resolution, the extractor's name and its weights' sha256;
statistics made by another torch, timm or torch-fidelity (another model code, other
arithmetic) or, for the built-in data, drawn by another numpy (the images are keyed by the
generator's description, not its pixels), or with another encoder architecture under the same
weights, were reused as if they were this installation's: the score mixed two extractors
without a word. Everything is real: `evaluate stats` through the CLI, the stats file rewritten
with the module's own writer (so its checksum holds) as another installation would have left it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import FD_WEIGHTS

from repackctl.evaluate.generative import read_stats_bundle, write_stats_bundle

STATS = ["evaluate", "stats", "builtin", "--extractor", "fd", "--resolution", "32"]
STATS += ["--num", "12", "--device", "cpu", *FD_WEIGHTS]

pytestmark = pytest.mark.usefixtures("one_thread")


def _as_if_made_by(path: Path, change: dict) -> None:
    """Rewrite the stats file ``path`` with ``change`` applied to its metadata."""
    fd = read_stats_bundle(path)["fd"]
    meta = {k: v for k, v in fd.metadata.items() if k != "arrays_sha256"}
    for key, value in change.items():
        if isinstance(value, dict):
            meta[key] = {**meta.get(key, {}), **value}
        else:
            meta[key] = value
    write_stats_bundle(path, fd.as_stats(), meta)


@pytest.mark.parametrize(
    "change",
    [
        {"software": {"torch": "1.13.0"}},
        {"software": {"timm": "0.9.2"}},
        {"software": {"numpy": "1.26.4"}},
        {"encoder_spec": {"arch": "another-vit"}},
        {"feature": "the CLS token"},
    ],
    ids=["torch", "timm", "numpy-of-builtin", "encoder-arch", "feature-rule"],
)
def test_stats_of_another_installation_are_recomputed(tmp_path: Path, change: dict) -> None:
    sdir = tmp_path / "stats"
    first = cli_ok(*STATS, "--stats-dir", str(sdir))
    assert "computed" in first and "reused" not in first
    (path,) = sdir.glob("*.npz")
    again = cli_ok(*STATS, "--stats-dir", str(sdir))
    assert "reused" in again  # the same installation: the file is the result
    _as_if_made_by(path, change)
    third = cli_ok(*STATS, "--stats-dir", str(sdir))
    assert "reused" not in third and "computed" in third, third
    fd = read_stats_bundle(path)["fd"]
    for key, value in change.items():  # replaced by this installation's
        if isinstance(value, dict):
            assert all(fd.metadata.get(key, {}).get(k) != v for k, v in value.items())
        else:
            assert fd.metadata.get(key) != value


def test_stats_record_the_software_they_were_made_with(tmp_path: Path) -> None:
    import numpy as np
    import timm
    import torch

    sdir = tmp_path / "stats"
    cli_ok(*STATS, "--stats-dir", str(sdir))
    (path,) = sdir.glob("*.npz")
    meta = read_stats_bundle(path)["fd"].metadata
    assert meta["software"] == {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }
