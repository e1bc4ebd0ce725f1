"""`import official` refuses ``--latent-stats`` and ``--num-heads`` without ``--dit``: they only
shape the DiT run, so without one they were accepted and took no effect (the stats of a
stage-1 + refiner import were recorded nowhere). The refusal is one ``Error:`` + ``Hint:``
naming the flag, before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from support.official import official_refiner, official_stage1
from typer.testing import CliRunner

from repackctl.cli.app import app


@pytest.mark.parametrize(
    ("more", "needle"),
    [
        (["--latent-stats", "STATS"], "--latent-stats"),
        (["--num-heads", "2"], "--num-heads"),
        (["--num-heads", "3", "--latent-stats", "STATS"], "--latent-stats and --num-heads"),
    ],
    ids=["latent-stats", "num-heads", "both"],
)
def test_dit_options_without_dit_are_refused(tmp_path, more, needle) -> None:
    s1, s3, stats = tmp_path / "s1.ckpt", tmp_path / "s3.ckpt", tmp_path / "st.pt"
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, s1)
    torch.save({"state_dict": official_refiner()}, s3)
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, stats)
    args = ["import", "official", "--stage1", str(s1), "--refiner", str(s3), "--out", "off"]
    args += ["--image-size", "32", "--runs", str(tmp_path / "runs")]
    r = CliRunner().invoke(app, args + [str(stats) if m == "STATS" else m for m in more])
    assert r.exit_code != 0, r.output
    assert "Error:" in r.output and "Hint:" in r.output and needle in r.output, r.output
    assert "no --dit was given" in r.output and "Traceback" not in r.output
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    # the same import without the DiT-only flags succeeds
    assert CliRunner().invoke(app, args).exit_code == 0


def test_latent_stats_json_is_read_whatever_the_case_of_its_suffix(tmp_path):
    """A stats file named ``STATS.JSON`` was given to torch.load, which called it pickled."""
    from repackctl.convert.official import _load_stats

    path = tmp_path / "STATS.JSON"
    path.write_text(json.dumps({"mean": [0.5, -1.0], "std": [2.0, 1.5]}))
    assert _load_stats(path, 2) == {"mean": [0.5, -1.0], "std": [2.0, 1.5]}
