"""`pack train` resume: `pack.pca_samples` cannot change, not even with `--allow-change`.

``pca_samples`` sizes the PCA / whitening fit made when a run starts; a resume takes that fit
from the checkpoint and never refits it (the projection and decoder were trained on it). So
`--pca-samples 100 --allow-change pca_samples` was accepted, recorded as an allowed change in
the run's config and ignored. Now each form is an `Error:` saying why it cannot change, before
anything of the run changes; a resume that keeps the value goes on as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

base_cache, cache = patchpix_fixtures("s28-pca-samples")

TRAIN = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", "16"]
TRAIN += ["--batch-size", "4", "-c", "4", "--ch", "8", "--name", "pk", "--image-every", "0"]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--pca-samples", "100", "--allow-change", "pca_samples"], "cannot change on resume"),
        (["--pca-samples", "100", "--allow-change", "all"], "pack.pca_samples: 20000 → 100"),
        (["--pca-samples", "100"], "pack.pca_samples: 20000 → 100"),
        (["--allow-change", "pack.pca_samples"], "--allow-change pack.pca_samples"),
    ],
)
def test_pca_samples_cannot_change_on_resume(
    cache: Path, tmp_path: Path, flags: list[str], said: str
) -> None:
    roots = ["--cache", str(cache), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    cli_ok(*TRAIN, "--steps", "1", *roots)  # the small preset: whitened, fitted at the start
    run = tmp_path / "runs" / "pk"
    before = _snapshot(run)
    out = cli_refused(2, *TRAIN, "--steps", "2", *flags, *roots)
    assert said in out and "cannot change on resume" in out, out
    assert "fit is part of the run's checkpoints" in out, out
    assert "pass --allow-change" not in out, out  # the old hint offered what did nothing
    assert _snapshot(run) == before  # nothing of the run changed (no step, no config history)
    assert "steps │ 2" in cli_ok(*TRAIN, "--steps", "2", "--pca-samples", "20000", *roots)
