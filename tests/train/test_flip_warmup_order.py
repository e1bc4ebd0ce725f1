"""Audit 7 of `train dit` / `train t2i`: settings that were accepted and did nothing, and a
refusal that named no setting.

1. ``--flip`` on packed latents without a mirrored copy (an entry extracted with
   ``--no-flips``) trained without a single flip, with ``flip: true`` in the run's record. A
   flip given now is refused; the default one is named in a ``Warning:`` line.
2. ``--schedule warmup`` without ``--warmup-steps`` (0) trained at a constant lr, recorded as a
   warm-up schedule. Refused, naming both settings.
3. A resume whose sample order would change (``--memory-gb`` that no longer holds the data, or
   ``--seed N --allow-change seed``) was refused as "trained with other block" / "other seed",
   with the hint "use the same settings": it now names what the run trained with and the flag
   that gives it back, and says that ``--allow-change`` does not apply.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import CheckpointError, ConfigError
from repackctl.settings import resolve_settings
from repackctl.settings.resume import resume_settings

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "dit", "--size", "tiny", "-b", "8", "--device", "cpu", "--image-every", "0"]
FLAT = "builtin-n8--train--32px"  # extracted with --no-flips: latents of one flip slot


def _flat_entry(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pack stack of ``packed_cache`` (a copy of the shared one) plus an entry of 8 images
    without mirrored copies, encoded by its pack run ``pk``."""
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", "8", "--no-flips"]
    cli_ok("extract", *src, "--chunk", "8", "--shard", "8", "--num-workers", "0")
    cli_ok("pack", "encode", "--run", "pk", "--entry", FLAT, "--device", "cpu")


def test_a_flip_the_latents_cannot_give_is_refused_or_named(
    tmp_path, tmp_path_factory, monkeypatch
):
    _flat_entry(tmp_path, tmp_path_factory)
    runs = tmp_path / "runs"
    args = [*TRAIN, "--entry", FLAT, "--steps", "1"]
    out = cli_refused(ConfigError.exit_code, *args, "--name", "f", "--flip")
    assert "dit.flip = True (from flag)" in out and "no mirrored copy" in out, out
    assert "--no-flip" in out and not (runs / "f").exists()
    monkeypatch.setenv("REPACKCTL_DIT__FLIP", "true")
    out = cli_refused(ConfigError.exit_code, *args, "--name", "f")
    assert "unset REPACKCTL_DIT__FLIP" in out and not (runs / "f").exists()
    monkeypatch.delenv("REPACKCTL_DIT__FLIP")
    # the default flip: the run trains, and says that it trains without flips
    out = cli_ok(*args, "--name", "d")
    assert "Warning: dit.flip is on (default)" in out and "trains without flips" in out, out
    assert "Warning" not in cli_ok(*args, "--name", "n", "--no-flip")


def test_a_warmup_schedule_without_warmup_steps_is_refused(tmp_path, monkeypatch):
    out = cli_refused(
        ConfigError.exit_code, "train", "dit", "--schedule", "warmup", "--show-config"
    )
    assert "dit.schedule = 'warmup' (from flag)" in out and "dit.warmup_steps" in out, out
    assert "--warmup-steps N" in out and "--schedule constant" in out
    monkeypatch.setenv("REPACKCTL_T2I__SCHEDULE", "warmup")
    out = cli_refused(ConfigError.exit_code, "train", "t2i", "--show-config")
    assert "t2i.schedule = 'warmup'" in out and "unset REPACKCTL_T2I__SCHEDULE" in out, out
    assert "t2i.schedule" in cli_ok("train", "t2i", "--warmup-steps", "5", "--show-config")
    resolved = resolve_settings(flags={"dit.schedule": "warmup"}, environ={})
    with pytest.raises(ConfigError, match="dit.warmup_steps, which is 0"):  # the library path
        resume_settings(tmp_path / "runs" / "new", resolved.settings, resolved.to_dict(), "dit")


def test_a_resume_that_would_change_the_order_names_the_setting(tmp_path, tmp_path_factory):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    run = tmp_path / "runs" / "o"
    train_o = [*TRAIN, "--name", "o", "--ckpt-every", "2"]
    cli_ok(*train_o, "--steps", "2")  # 16 samples: held in memory
    before = {p: p.read_bytes() for p in (run / "config.json", run / "metrics.jsonl")}
    out = cli_refused(CheckpointError.exit_code, *train_o, "--steps", "3", "--memory-gb", "1e-9")
    assert "held in memory" in out and "chunk blocks of 8 rows" in out, out
    assert "resume with --in-memory" in out and "other block" not in out
    out = cli_refused(
        CheckpointError.exit_code, *train_o, "--steps", "3", "--seed", "1", "--allow-change", "seed"
    )
    assert "seed 0 (now 1)" in out and "resume with --seed 0" in out, out
    assert "--allow-change does not apply" in out
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002"]
    # the flag the hint names resumes the run
    out = cli_ok(*train_o, "--steps", "3", "--memory-gb", "1e-9", "--in-memory")
    assert "resumed at 2" in out, out
