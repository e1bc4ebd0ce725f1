"""Defects of `evaluate recon` / `evaluate probe` left by an earlier audit, on a real cache and
pack run.

1. ``--entry X --split Y`` scored X and dropped ``--split`` without a word; ``recon --seed``
   changed nothing (recon decodes posterior means of a fixed subset) and was accepted.
2. A `recon` rerun without ``--inception-weights`` (or with other weights) replaced the report
   that held an rFID with one whose rFID is null (or another extractor's): a result was lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import random_inception_state
from support.cli import cli_ok, cli_refused
from support.stack import build_val_stack, stack_env

from repackctl.errors import ConfigError

VAL = "builtin-n3--val--32px"
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """extract (16 built-in train images) → pack-tiny → dit-tiny, plus a val entry of 3."""
    return build_val_stack(tmp_path_factory.mktemp("audit2-stack"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _checkpoint(env: dict[str, str]) -> Path:
    from repackctl.train.checkpoint import latest_checkpoint

    return latest_checkpoint(Path(env["runs"]) / "pack-tiny")


def test_a_split_beside_an_entry_is_refused(env, monkeypatch):
    ckpt = _checkpoint(env)
    before = sorted(p.name for p in ckpt.iterdir())
    for command in (["recon"], ["probe", "--epochs", "2"]):
        args = ["evaluate", *command, "--run", "pack-tiny", "--entry", VAL, "--split", "train"]
        out = cli_refused(ConfigError.exit_code, *args, *CPU)
        assert "pack.eval_split = 'train' (from flag)" in out and "ignored" in out, out
        assert "drop --split" in out and "drop --entry" in out
    assert sorted(p.name for p in ckpt.iterdir()) == before  # nothing scored or written
    # a split from a less specific layer is overridden by the --entry flag, as any setting is
    monkeypatch.setenv("REPACKCTL_PACK__EVAL_SPLIT", "train")
    out = cli_ok("evaluate", "recon", "--run", "pack-tiny", "--entry", VAL, "-n", "1", *CPU)
    assert f"{VAL} (1 images)" in out


def test_recon_refuses_a_seed_flag_that_changes_nothing(env, monkeypatch):
    ckpt = _checkpoint(env)
    recon = ["evaluate", "recon", "--run", "pack-tiny", "-n", "2", *CPU]
    report = ckpt / f"recon-{VAL}-n2.json"
    out = cli_refused(ConfigError.exit_code, *recon, "--seed", "7")
    assert "--seed 7" in out and "ignored" in out and "drop --seed" in out
    assert not report.exists()
    scores = []
    for seed in ("0", "7"):  # a seed from the environment is everyone's: not refused, no effect
        monkeypatch.setenv("REPACKCTL_SEED", seed)
        cli_ok(*recon)
        doc = json.loads(report.read_text())
        scores.append((doc["psnr"], doc["ssim"], doc["subset"]))
    assert scores[0] == scores[1]
    # the probe trains with the seed: it is taken there and names its table
    monkeypatch.delenv("REPACKCTL_SEED")
    cli_ok("evaluate", "probe", "--run", "pack-tiny", "-n", "1", "--epochs", "2", "--seed", "7",
           *CPU)  # fmt: skip
    assert (ckpt / f"probe-{VAL}-n1-epochs2-seed7.json").is_file()


def test_a_recon_rerun_keeps_the_report_that_holds_an_rfid(env, inception_file, tmp_path):
    ckpt = _checkpoint(env)
    recon = ["evaluate", "recon", "--run", "pack-tiny", "-n", "3", *CPU]
    report, grid = ckpt / f"recon-{VAL}.json", ckpt / f"recon-{VAL}.png"
    fast = ["--fd-method", "cholesky"]  # exact, and quick in 2048-d from 3 images (not sqrtm)
    cli_ok(*recon, "--inception-weights", str(inception_file), *fast)
    kept, kept_grid = report.read_bytes(), grid.read_bytes()
    rfid = json.loads(kept)["rfid"]
    assert rfid is not None
    out = cli_refused(ConfigError.exit_code, *recon, "--grid-images", "2")
    assert "holds an rFID" in out and "--inception-weights" in out and inception_file.name in out
    other = tmp_path / "other-inception.pth"
    state = random_inception_state()
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, other)
    out = cli_refused(ConfigError.exit_code, *recon, "--inception-weights", str(other), *fast)
    assert "other Inception weights" in out and inception_file.name in out
    assert report.read_bytes() == kept and grid.read_bytes() == kept_grid  # nothing lost
    # the same weights again: the same result recomputed replaces it
    cli_ok(*recon, "--inception-weights", str(inception_file), "--grid-images", "2", *fast)
    again = json.loads(report.read_text())
    assert again["rfid"] == pytest.approx(rfid) and again["inception"]["weights_sha256"]
