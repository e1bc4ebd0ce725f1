"""`pack train` refuses what would silently go wrong, and resumes wherever its cache was copied.

* `--attn-resolutions` must name the side of a decoder level at the run's latent grid;
* `--steps 0` is refused for a run without a checkpoint (it would train and write nothing) and,
  on a run that has one, shows that run as it is;
* a copied or moved cache resumes the run (the entry is told by name and content digests, not by
  its path); an entry of the same name with other data is refused.

Real Zarr caches written by `repackctl extract` (patchpix at 32 px: a 4×4 token grid), real
image folders, real (tiny) training runs through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from support.caches import patchpix_fixtures
from support.ckpt_state import write_state
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _error
from typer.testing import CliRunner

from repackctl.errors import CheckpointError, ConfigError
from repackctl.train.checkpoint import latest_checkpoint, list_checkpoints, read_state

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "8", "--shard", "8"]
# a tiny conv decoder: 4×4 grid → 32 px (levels of side 4, 8, 16, 32), d = 4
TINY = [
    *(
        "--encoder",
        "patchpix",
        "--resolution",
        "32",
        "-c",
        "4",
        "--ch",
        "8",
        "--pixel-shuffle",
        "1",
    ),
    *("--batch-size", "8", "--log-every", "2", "--image-every", "0", "--ckpt-every", "2"),
]


# a patchpix cache of 16 built-in train images at 32 px, and a private copy per test
base_cache, cache = patchpix_fixtures("checks-cache", 16)


# --------------------------------------------------------------------------- attention


def test_attention_at_no_decoder_side_is_refused_before_anything_is_written(cache, tmp_path):
    out = _error(
        ConfigError.exit_code,
        *("pack", "train", *TINY, "--steps", "2", "--name", "a3", "--attn-resolutions", "3"),
    )
    assert "pack.attn_resolutions [3]" in out and "feature side 3" in out
    assert "valid sides: 4, 8, 16, 32" in out and "pixel_shuffle" not in out
    assert not (tmp_path / "runs" / "a3").exists()
    # one valid side and one invalid: still refused, naming only the invalid one
    out = _error(
        ConfigError.exit_code,
        *("pack", "train", *TINY, "--steps", "2", "--name", "a3"),
        *("--attn-resolutions", "8", "--attn-resolutions", "64"),
    )
    assert "feature side 64" in out and "feature side 8" not in out
    # the pixel shuffle ends the conv levels early: the message says where
    out = _error(
        ConfigError.exit_code,
        *("pack", "train", *TINY, "--steps", "2", "--name", "a3", "--attn-resolutions", "16"),
        *("--pixel-shuffle", "4"),
    )
    assert "valid sides: 4, 8;" in out
    assert "with pixel_shuffle 4 the conv levels end at side 8" in out
    assert not (tmp_path / "runs" / "a3").exists()


def test_attention_at_decoder_sides_builds_attention_blocks(cache, tmp_path):
    from repackctl.pack.load import load_pack

    args = ["pack", "train", *TINY, "--steps", "2", "--name", "a8"]
    _ok(*args, "--attn-resolutions", "8", "--attn-resolutions", "32")
    decoder = load_pack("a8", runs=str(tmp_path / "runs")).model.decoder
    # levels deepest first: side 4, 8, 16, 32; one ResBlock per level + 1 → 2 blocks each
    assert [len(level.attns) for level in decoder.levels] == [0, 2, 0, 2]


# --------------------------------------------------------------------------- steps


def test_a_gan_that_starts_after_the_run_is_said(cache, tmp_path):
    """`--gan-weight 0.5` with the small preset's gan_start 400 on a 2-step run trained no GAN
    without a word."""
    gan = ["--gan-weight", "0.5", "--disc-channels", "8"]
    out = _ok("pack", "train", *TINY, "--steps", "2", *gan, "--name", "g")
    assert "Warning: the GAN term (gan_weight 0.5) starts at step 400 (gan_start)" in out
    assert "at or after this run's last step (2)" in out
    out = _ok("pack", "train", *TINY, "--steps", "2", *gan, "--gan-start", "1", "--name", "g1")
    assert "GAN term" not in out


def _run_files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but train.lock, by relative path, with its bytes."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


def test_steps_0_is_refused_for_a_new_run_and_at_or_below_the_step_changes_nothing(cache, tmp_path):
    """`--steps 0` (or below) is refused for a run without a checkpoint; on a finished run,
    `--steps N` with N at or below its step shows the run and writes nothing (it used to rewrite
    config.json with steps N, metrics, log.txt and add a TensorBoard event file). One 2-step run
    serves both: the refusals write no run, the shows write nothing."""
    run = tmp_path / "runs" / "s"
    out = _error(ConfigError.exit_code, "pack", "train", *TINY, "--steps", "0", "--name", "s")
    assert "pack.steps is 0" in out and "--steps N with N >= 1" in out
    assert not run.exists()
    out = _error(ConfigError.exit_code, "pack", "train", *TINY, "--steps", "-1", "--name", "s")
    assert "pack.steps" in out and not run.exists()

    _ok("pack", "train", *TINY, "--steps", "2", "--name", "s")
    ckpt = latest_checkpoint(run)
    files = {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()}
    before = _run_files(run)
    out = _ok("pack", "train", *TINY, "--steps", "0", "--name", "s")
    assert "nothing to train" in out and "at step 2" in out
    assert "None" not in out  # the summary is the run's: its checkpoint, method, shape, step
    assert "step-0000002" in out
    assert "repack / small" in out and "(4, 4, 4)" in out
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} == files
    assert _run_files(run) == before
    for steps in ("2", "1", "0"):
        out = _ok("pack", "train", *TINY, "--steps", steps, "--name", "s")
        assert "nothing to train" in out and "at step 2" in out
        assert _run_files(run) == before, steps
    assert json.loads((run / "config.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- a copied cache


def test_a_copied_cache_resumes_the_run(cache, tmp_path):
    _ok("pack", "train", *TINY, "--steps", "2", "--name", "c")
    copy = tmp_path / "cache2"
    shutil.copytree(cache, copy)
    out = _ok("pack", "train", *TINY, "--steps", "4", "--name", "c", "--cache", str(copy))
    assert f"cache {cache} → {copy}" in out
    ckpt = latest_checkpoint(tmp_path / "runs" / "c")
    assert ckpt.name == "step-0000004"
    extra = read_state(ckpt)["extra"]
    assert extra["cache"]["root"] == str(copy)  # where it trained last
    assert set(extra["content"]) == {"entry", "features", "rows"}
    # the original place still works too (the same content)
    _ok("pack", "train", *TINY, "--steps", "6", "--name", "c")
    assert latest_checkpoint(tmp_path / "runs" / "c").name == "step-0000006"


def test_a_moved_cache_resumes_a_run_from_before_content_digests(cache, tmp_path):
    """A checkpoint written before `content` was recorded: compared by name once its cache is
    gone (with a note), by the old entry's attributes while that is still there."""
    run = tmp_path / "runs" / "old"
    _ok("pack", "train", *TINY, "--steps", "2", "--name", "old")
    state_file = latest_checkpoint(run) / "state.json"
    state = json.loads(state_file.read_text())
    del state["extra"]["content"]
    _rewrite_state(state_file, state)
    moved = tmp_path / "moved"
    shutil.move(str(cache), str(moved))
    out = _ok("pack", "train", *TINY, "--steps", "4", "--name", "old", "--cache", str(moved))
    assert "taken by name" in out
    assert latest_checkpoint(run).name == "step-0000004"


def _rewrite_state(path: Path, state: dict) -> None:
    """Write a checkpoint's state.json as an older version did (its files' hashes stay valid:
    state.json is not among them)."""
    assert path.name not in state["files"]
    write_state(path, state, sealed=False)


def _folder(root: Path, seed: int) -> None:
    """2 classes × 8 random 32×32 PNGs (the same names for every seed)."""
    rng = np.random.default_rng(seed)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / cls / f"{i}.png")


def test_an_entry_of_the_same_name_with_other_data_is_refused(tmp_path):
    pets = tmp_path / "pets"
    _folder(pets, seed=0)
    a, b = tmp_path / "cache-a", tmp_path / "cache-b"
    _ok(*EXTRACT, "--data", f"imagefolder:{pets}", "--cache", str(a))
    _folder(pets, seed=1)  # the same folder, files and count: other pixels
    _ok(*EXTRACT, "--data", f"imagefolder:{pets}", "--cache", str(b))
    assert [p.name for p in a.iterdir() if p.is_dir()] == [
        p.name for p in b.iterdir() if p.is_dir()
    ]

    data = ["--data", f"imagefolder:{pets}"]
    _ok("pack", "train", *TINY, *data, "--steps", "2", "--name", "f", "--cache", str(a))
    run = tmp_path / "runs" / "f"
    before = sorted(p.name for p in run.rglob("*"))
    out = _error(
        CheckpointError.exit_code,
        *("pack", "train", *TINY, *data, "--steps", "4", "--name", "f", "--cache", str(b)),
    )
    assert "holds other sample data than run f was trained on" in out
    assert f"--cache {a}" in out
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written, nothing lost
    assert latest_checkpoint(run).name == "step-0000002"


# --------------------------------------------------------------------------- resume reads


def test_a_resume_verifies_the_newest_checkpoint_once_before_training(cache, monkeypatch):
    """Each verification hashes every file of the checkpoint (model, EMA, discriminator and
    optimizer: gigabytes in the paper preset). The pack resume looked the newest one up four
    times (recorded data, projection form, new-run check, resume checks) and the shuffle window
    once more, before the engine's own load verified it again."""
    import repackctl.train.checkpoint as checkpoint

    _ok("pack", "train", *TINY, "--steps", "2", "--name", "once")
    calls: list[str] = []
    real = checkpoint.verify_checkpoint

    def counted(folder, *args, **kwargs):
        calls.append(Path(folder).name)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "verify_checkpoint", counted)
    _ok("pack", "train", *TINY, "--steps", "4", "--name", "once")
    assert calls.count("step-0000002") == 2, calls  # the pack resume once, the engine's load once
    assert read_state(latest_checkpoint(cache.parent / "runs" / "once"))["step"] == 4
