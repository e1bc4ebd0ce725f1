"""`repackctl demo --t2i` reuses the scores in its samples folder's adherence.json only when they
are of the PNGs the folder holds, with every score the report reads. It read the file with
``json.loads`` (a damaged one was a traceback on every rerun) and took any file of the plan's
classifier steps and seed (another folder's scores, copied or left over, went into report.md and
metrics.json as this run's).

Real components: the quick demo through the CLI (extract, pack, captions in a second process,
train t2i, sample, evaluate adherence) in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok

from repackctl.evaluate.generative import folder_sha256
from repackctl.sample.folder import png_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _scores(out: Path) -> Path:
    (path,) = (out / "samples").glob("*/adherence.json")
    return path


@pytest.mark.slow
def test_damaged_or_foreign_scores_are_scored_again_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "demo-t2i"
    demo = ["demo", "--t2i", "--quick", "--out", str(out)]
    cli_ok(*demo)
    path = _scores(out)
    good = json.loads(path.read_text())
    n = json.loads((out / "metrics.json").read_text())["n_samples"]
    pngs = [png_path(path.parent, i) for i in range(n)]
    assert good["samples_sha256"] == folder_sha256(pngs, path.parent)  # what is compared

    # a damaged file (a disk that filled up, an editor): scored again, no traceback
    path.write_text('{"classifier": ')
    cli_ok(*demo)
    again = json.loads(path.read_text())
    assert again["classifier_recon_val_accuracy"] == good["classifier_recon_val_accuracy"]
    assert again["shape_accuracy"] == good["shape_accuracy"]

    # scores of other samples (same classifier settings): never reported as these
    foreign = good | {"shape_accuracy": 0.987, "samples_sha256": "0" * 64}
    path.write_text(json.dumps(foreign))
    cli_ok(*demo)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shape_accuracy"] == good["shape_accuracy"] != 0.987
    assert "98.7" not in (out / "report.md").read_text()
    assert json.loads(path.read_text())["samples_sha256"] == good["samples_sha256"]
