"""Nothing is unpickled from a user's file (DESIGN.md §6): every place that takes a weights or
checkpoint path is handed a pickle whose loading would create a marker file; the marker never
appears and the command fails with an ``Error:``/``Hint:`` line. ``--trust-pickle`` is the only
way in (``import official``), and a failed import leaves nothing that blocks a retry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from support.evil import write_evil_pickle
from support.official import official_lightningdit, official_refiner, official_stage1
from support.snapshot import snapshot
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import RepackError

runner = CliRunner()


def _clean_failure(r, *must: str) -> None:
    out = r.output.replace("\n", "")
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and "Error:" in r.output and "Hint:" in r.output
    for text in must:
        assert text in out, (text, r.output)


# --------------------------------------------------------------------------- weights paths


def test_encoder_weights_pth(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = write_evil_pickle(tmp_path / "encoder.pth", marker)
    r = runner.invoke(app, ["extract", "--weights", str(evil), "--device", "cpu"])
    _clean_failure(r, "encoder.pth")
    assert not marker.exists()
    from repackctl.encoders.builtin import load_state_dict_file

    with pytest.raises(RepackError):
        load_state_dict_file(evil)
    assert not marker.exists()


def test_inception_weights(tmp_path) -> None:
    from repackctl.metrics.inception import InceptionExtractor

    marker = tmp_path / "pwned"
    evil = write_evil_pickle(tmp_path / "inception.pth", marker)
    with pytest.raises(RepackError, match="inception.pth") as e:
        InceptionExtractor(evil)
    assert e.value.hint and not marker.exists()


def test_lpips_weights(tmp_path) -> None:
    from repackctl.pack.losses import load_lpips

    marker = tmp_path / "pwned"
    evil = write_evil_pickle(tmp_path / "lpips.pth", marker)
    with pytest.raises(RepackError, match="lpips.pth") as e:
        load_lpips(evil)
    assert e.value.hint and not marker.exists()


# --------------------------------------------------------------------------- import official


@pytest.fixture
def release(tmp_path) -> dict[str, Path]:
    """A valid official release in the test's folder (stage 1, DiT, refiner, latent stats)."""
    paths = {k: tmp_path / n for k, n in [("stage1", "s1.ckpt"), ("dit", "dit.pt")]}
    paths |= {"refiner": tmp_path / "s3.ckpt", "latent-stats": tmp_path / "stats.pt"}
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, paths["stage1"])
    dit = official_lightningdit(side=4)
    torch.save({"model": dit, "ema": dit, "global_step": 3}, paths["dit"])
    torch.save({"state_dict": official_refiner()}, paths["refiner"])
    torch.save(
        {"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, paths["latent-stats"]
    )
    return paths


def _import(runs: Path, paths: dict[str, Path], *extra: str):
    argv = ["import", "official", "--image-size", "32", "--out", "off", "--runs", str(runs)]
    for key, path in paths.items():
        argv += [f"--{key}", str(path)]
    return runner.invoke(app, argv + list(extra))


@pytest.mark.parametrize("which", ["stage1", "dit", "latent-stats", "refiner"])
def test_import_official_refuses_each_pickle(tmp_path, release, which) -> None:
    marker = tmp_path / "pwned"
    paths = dict(release)
    paths[which] = write_evil_pickle(tmp_path / f"evil-{which}.pt", marker)
    runs = tmp_path / "runs"
    r = _import(runs, paths)
    _clean_failure(r, f"evil-{which}.pt", "--trust-pickle")
    assert not marker.exists()
    # nothing half-written: no run, no staging folder
    assert not runs.exists() or sorted(p.name for p in runs.iterdir()) == []


def test_failed_import_leaves_nothing_and_a_retry_works(tmp_path, release) -> None:
    runs = tmp_path / "runs"
    bad = dict(release)
    bad["refiner"] = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {"unet.nothing": torch.ones(1)}}, bad["refiner"])
    r = _import(runs, bad)
    _clean_failure(r, "stage-3")
    assert sorted(p.name for p in runs.iterdir()) == []  # stage 1 and DiT were not kept half-done
    r = _import(runs, release)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in runs.iterdir()) == ["off-dit", "off-pack", "off-refine"]
    dit_state = (runs / "off-dit" / "checkpoints" / "step-0000003" / "state.json").read_text()
    assert str(runs / "off-pack" / "checkpoints") in dit_state and ".tmp-import" not in dit_state
    before = snapshot(runs)
    r = _import(runs, release)  # the same import again: the runs are its own, kept as they are
    assert r.exit_code == 0 and "already in place" in " ".join(r.output.split()), r.output
    assert snapshot(runs) == before
    other = dict(release) | {"refiner": tmp_path / "other.ckpt"}
    torch.manual_seed(123)
    torch.save({"state_dict": official_refiner()}, other["refiner"])  # other weights
    _clean_failure(_import(runs, other), "already exists")  # refused, untouched
    assert snapshot(runs) == before


def test_trusted_latent_stats_hint_and_load(tmp_path, release) -> None:
    stats = tmp_path / "stats-with-meta.pt"
    meta = argparse.Namespace(source="release")
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1), "m": meta}, stats)
    paths = dict(release) | {"latent-stats": stats}
    paths.pop("refiner")
    r = _import(tmp_path / "runs", paths)
    _clean_failure(r, "stats-with-meta.pt", "pass --trust-pickle")
    r = _import(tmp_path / "runs", paths, "--trust-pickle")
    assert r.exit_code == 0, r.output
    assert "pass --trust-pickle" not in r.output


def test_bad_latent_stats_values_have_a_hint(tmp_path, release) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text('{"mean": "x", "std": [1, 1, 1, 1]}')
    paths = dict(release) | {"latent-stats": stats}
    paths.pop("refiner")
    _clean_failure(_import(tmp_path / "runs", paths), "stats.json")


def test_the_marker_pickle_really_runs_code_when_unpickled(tmp_path) -> None:
    """Guards the tests above: full unpickling of the file does create the marker."""
    marker = tmp_path / "pwned"
    torch.load(write_evil_pickle(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()
