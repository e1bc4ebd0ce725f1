"""`pack train --pca-samples` is refused where nothing is fitted on the tokens.

``pca_samples`` sizes the PCA fit (``--method pca``) and the repack method's whitening fit
(``--whiten``, the ``small`` preset). With ``--method repack`` and no whitening (``--no-whiten``,
or the ``paper`` preset) the run fits nothing: the flag was accepted, recorded in the run's
settings and ignored. Now an `Error:` naming the setting that turned the fit off, before
anything is written; where a fit uses it, it is accepted as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused


@pytest.mark.parametrize(
    ("flags", "source"),
    [(["--no-whiten"], "from flag"), (["--preset", "paper"], "from preset paper")],
)
def test_pca_samples_without_a_fit_is_refused(
    tmp_path: Path, flags: list[str], source: str
) -> None:
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    args = ["pack", "train", *flags, "--pca-samples", "100", "--name", "p", *roots]
    shown = cli_refused(2, *args, "--show-config")  # was shown as a value the run would take
    assert "pack.pca_samples = 100" in shown and f"pack.whiten is False ({source})" in shown
    assert "drop --pca-samples" in shown, shown
    assert cli_refused(2, *args) == shown  # a run: refused before anything is written
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags", [["--whiten"], ["--method", "pca"]])
def test_pca_samples_with_a_fit_is_taken(tmp_path: Path, flags: list[str]) -> None:
    roots = ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    out = cli_ok("pack", "train", *flags, "--pca-samples", "100", "--show-config", *roots)
    assert "pack.pca_samples = 100" in out, out
