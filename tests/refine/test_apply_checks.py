"""`refine apply` refines only what its refiner was trained for, and only what its card names.

- samples of another image side or latent grid (or latent channels) than the refiner's are refused
  (Error + Hint, exit 2) before the refined folder is created;
- the images refined are those of samples.npz, the content the card's ``refined_from_sha256``
  covers: PNGs edited (or deleted) after `sample` are never read, and a resumed run refines the
  npz images too.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny`` on 4×4 latents), plus
checkpoints written with the real ``save_checkpoint`` (random perturbed weights, as the stack's
DiT): a DiT on 8×8 latents of the same pack model (it decodes to 64×64 images) and refiners of
32 and 64 px and of 4 and 8 latent channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from support.stack import LATENT, _images, _settings, make_dit_run, save_refiner_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.files import write_png_atomic
from repackctl.sample.folder import png_path
from repackctl.sample.refine import source_digest
from repackctl.sample.run import run_sample
from repackctl.train.checkpoint import read_state

runner = CliRunner()


def _save_dit_on_8x8_latents(runs: str, name: str) -> None:
    """A DiT of the stack's pack model on 8×8 latents (the contract of ``make_dit_run``, another
    input size): its samples decode to 64×64 images."""
    from repackctl.models.variants import tiny
    from repackctl.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = tiny(in_channels=LATENT[0], input_size=8, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = read_state(make_dit_run(runs, f"{name}-base", seed=0))
    extra = state["extra"] | {"model_config": model.config.to_dict(), "latent_shape": [4, 8, 8]}
    sd = model.state_dict()
    save_checkpoint(Path(runs) / name, 5, {"model": sd, "ema": sd}, {}, {"extra": extra})


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    paths = shared_stack(tmp_path_factory)
    runs = paths["runs"]
    if not (Path(runs) / "chk-refine32").is_dir():
        save_refiner_run(runs, "chk-refine32", resolution=32)
        save_refiner_run(runs, "chk-refine64", resolution=64)
        save_refiner_run(runs, "chk-refine32c8", resolution=32, channels=8)
        _save_dit_on_8x8_latents(runs, "chk-dit64")
    return paths


def _apply(stack: dict[str, str], folder: Path, refiner: str, *extra: str) -> tuple[int, str]:
    args = ["refine", "apply", str(folder), "--refiner", refiner, "--runs", stack["runs"]]
    with one_torch_thread():
        res = runner.invoke(app, [*args, "--device", "cpu", *extra])
    return res.exit_code, res.output


def _sample(stack: dict[str, str], out: Path, run: str = "dit-tiny", **kw) -> Path:
    with one_torch_thread():
        return run_sample(_settings(stack, run=run, num=4, steps=2, out=str(out), **kw)).out_dir


def _refused(code: int, out: str, *words: str) -> None:
    assert code == ConfigError.exit_code, out
    assert "Traceback" not in out and "Error:" in out and "Hint:" in out, out
    for word in words:
        assert word in out, out


@pytest.mark.parametrize(
    ("refiner", "words", "absent"),
    [
        ("chk-refine32", ["images of 64x64 px", "trained on 32x32", "latent grid of 8x8"], []),
        ("chk-refine64", ["latent grid of 8x8 (trained on 4x4)"], ["images of"]),
    ],
)
def test_samples_of_another_side_or_grid_are_refused_before_anything_is_written(
    stack, tmp_path, refiner, words, absent
):
    samples = _sample(stack, tmp_path / "s64", run="chk-dit64")
    assert _images(samples).shape == (4, 64, 64, 3)  # the premise: 64 px from a 32 px pack
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out = _apply(stack, samples, refiner)
    _refused(code, out, *words, str(samples))
    assert not any(word in out for word in absent), out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no refined folder claimed


def test_sample_with_a_refiner_of_another_side_is_refused_before_anything_is_written(
    stack, tmp_path
):
    with one_torch_thread():
        res = runner.invoke(
            app,
            ["sample", "-r", "chk-dit64", "-n", "2", "--steps", "2", "--device", "cpu", "--runs",
             stack["runs"], "--refiner", "chk-refine32", "--out", str(tmp_path / "fused64")],
        )  # fmt: skip
    _refused(res.exit_code, res.output, "images of 64x64 px", "trained on 32x32")
    assert not (tmp_path / "fused64").exists()


def test_the_grid_the_refiner_recorded_is_checked_when_its_pack_checkpoint_is_gone(stack, tmp_path):
    """A refiner records the latent (d, h, w) it trained on: the check no longer depends on
    finding its pack checkpoint (moved, deleted), where it fell back to the samples' own pack
    checkpoint (the same pack id) and so accepted any grid that pack makes."""
    from repackctl.pack.load import load_pack

    runs = stack["runs"]
    gone = {"run": "pack-tiny", "checkpoint": str(tmp_path / "moved-away")}
    gone["pack_id"] = load_pack("pack-tiny", runs=runs).pack_id  # the samples' pack model
    grid = [LATENT[0], 8, 8]
    save_refiner_run(runs, "chk-refine-g8", resolution=32, latent_shape=grid, pack=gone)
    samples = _sample(stack, tmp_path / "s32")
    code, out = _apply(stack, samples, "chk-refine-g8")
    _refused(code, out, "a latent grid of 4x4 (trained on 8x8)")


def test_latents_of_other_channels_are_refused(stack, tmp_path):
    samples = _sample(stack, tmp_path / "s32")
    code, out = _apply(stack, samples, "chk-refine32c8")
    _refused(code, out, "latents of 4 channels (trained on 8)")
    assert not any(p.name.endswith("--refine-chk-refine32c8") for p in tmp_path.iterdir())


def test_apply_refines_the_npz_images_the_card_names_not_edited_pngs(stack, tmp_path):
    samples = _sample(stack, tmp_path / "plain")
    fused = _sample(stack, tmp_path / "fused", refiner="chk-refine32")  # sample --refiner
    digest = source_digest(samples)
    # the PNGs change after `sample` wrote samples.npz: one painted black, one deleted
    black = np.zeros(_images(samples).shape[1:], np.uint8)
    write_png_atomic(png_path(samples, 1), black)
    write_png_atomic(png_path(samples, 3), black)
    png_path(samples, 2).unlink()
    assert source_digest(samples) == digest  # the digest covers samples.npz, not the PNGs

    code, out = _apply(stack, samples, "chk-refine32")
    assert code == 0, out
    refined = tmp_path / "plain--refine-chk-refine32"
    assert np.array_equal(_images(refined), _images(fused))  # the npz images, refined
    card = json.loads((refined / "protocol.json").read_text())
    assert card["refined_from_sha256"] == digest and card["refined_from"] == str(samples)

    # resumed after losing one refined image: only that one is refined again, from the npz
    kept = {p.name: p.stat().st_mtime_ns for p in refined.glob("00000[012].png")}
    png_path(refined, 3).unlink()
    (refined / "samples.npz").unlink()
    code, out = _apply(stack, samples, "chk-refine32", "--batch-size", "1")
    assert code == 0, out
    assert {p.name: p.stat().st_mtime_ns for p in refined.glob("00000[012].png")} == kept
    again, ref = _images(refined).astype(int), _images(fused).astype(int)
    assert np.array_equal(again[:3], ref[:3])
    assert np.abs(again[3] - ref[3]).max() <= 1  # alone in its batch: CPU rounding at most


def test_a_rerun_restores_an_edited_refined_png_instead_of_vouching_for_it(stack, tmp_path):
    """A finished refined folder run again: an edited PNG is rewritten from the recorded
    samples.npz (the rerun rebuilt samples.npz and the card from whatever PNGs lay there); with
    samples.npz edited too, every image is refined again, to the same bytes."""
    src = _sample(stack, tmp_path / "s")
    code, out = _apply(stack, src, "chk-refine32")
    assert code == 0, out
    (refined,) = [p for p in tmp_path.iterdir() if p.name.startswith("s--refine")]
    card = json.loads((refined / "protocol.json").read_text())
    first, npz = _images(refined), (refined / "samples.npz").read_bytes()
    write_png_atomic(png_path(refined, 1), np.zeros_like(first[1]))
    code, out = _apply(stack, src, "chk-refine32")
    assert code == 0 and "Warning:" in out and "000001.png" in out, out
    assert np.array_equal(_images(refined), first)  # before: image 1 black, in a new card
    assert json.loads((refined / "protocol.json").read_text()) == card
    write_png_atomic(png_path(refined, 2), np.zeros_like(first[2]))
    (refined / "samples.npz").write_bytes(b"not an npz")
    code, out = _apply(stack, src, "chk-refine32")
    assert code == 0 and "refined again" in out, out
    assert (refined / "samples.npz").read_bytes() == npz and np.array_equal(_images(refined), first)


def test_an_unreadable_card_of_the_samples_is_an_error_not_a_traceback(stack, tmp_path):
    src = _sample(stack, tmp_path / "s")
    for text in ("{bad", "[1, 2]"):
        (src / "protocol.json").write_text(text)
        code, out = _apply(stack, src, "chk-refine32")
        assert code == 4 and "Error:" in out and "protocol.json" in out, out
        assert "Traceback" not in out
