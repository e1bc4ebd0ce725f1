"""The PNGs of a *finished* samples folder are tied to its card (``files.samples.npz.images_sha256``).

- `sample` run again on a finished folder checks the PNGs' pixels against the card: a PNG
  swapped with another folder's, edited, cut short or missing is rewritten from the folder's
  samples.npz (when that verifies against the card), with one ``Warning:`` line, and the folder
  is then byte-identical to the folder as first written; the DiT samples nothing. When
  samples.npz does not verify either, the rerun is refused and nothing is rewritten; so is a
  card that is not the folder's (copied with its samples.npz from a folder of another seed).
- The same holds for text-to-image folders.
- `evaluate fid` on a folder whose samples.npz is gone checks the PNGs it scores against the
  card's ``images_sha256`` (Error + Hint naming the folder); cards without it score as before.

The shared toy stacks of tests/support (``shared_stack``: patchpix 32 px, ``dit-tiny``;
``t2i_stack``: a 2-step ``tA``), driven through the command line.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from PIL import Image
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, shared_stack, stack_env

from repackctl.errors import DataError
from repackctl.run_lock import SAMPLES_LOCK

CPU = ["--device", "cpu"]
SCORE = FD_SCORE


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _sample_args(out: Path, seed: int = 3) -> list[str]:
    return ["sample", "-r", "dit-tiny", "-n", "6", "--steps", "2", "--seed", str(seed), *CPU,
            "--out", str(out)]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, str]:
    """name → sha256 of every file of the folder (sub-folders included) but the writer's lock
    (its record names the last writer's pid)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SAMPLES_LOCK
    }


def _other_pixels(path: Path) -> None:
    """Rewrite a PNG with one pixel changed: it still decodes, to other pixels."""
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB")).copy()
    pixels[0, 0, 0] ^= 0x01
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two finished folders of seeds 3 and 4 (different images)."""
    good, other = tmp_path / "good", tmp_path / "other"
    cli_ok(*_sample_args(good))
    cli_ok(*_sample_args(other, seed=4))
    assert (good / "000001.png").read_bytes() != (other / "000001.png").read_bytes()
    return good, other


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


# --------------------------------------------------------------------------- 1. sample again
def test_sample_again_restores_damaged_pngs_byte_identical(env, tmp_path):
    good, other = _pair(tmp_path)
    before = _snapshot(good)
    shutil.copy(other / "000001.png", good / "000001.png")  # swapped with another folder's
    (good / "000002.png").write_bytes((good / "000002.png").read_bytes()[:60])  # cut short
    _other_pixels(good / "000003.png")  # still decodes, to other pixels
    (good / "000004.png").unlink()  # missing
    assert _snapshot(good) != before

    out = cli_ok(*_sample_args(good))
    assert "Warning: 4 PNGs" in out and "000001.png" in out and "samples.npz" in out, out
    assert "(0 now, 6 already done)" in out, out  # restored from samples.npz, not sampled
    assert _snapshot(good) == before


def test_a_png_cut_short_beside_no_samples_npz_is_made_again(env, tmp_path):
    """No samples.npz to restore it from: the PNG that does not decode is made again, as a
    missing one is (its hint said "run the same command again", which refused again)."""
    good = tmp_path / "good"
    cli_ok(*_sample_args(good))
    before = _snapshot(good)
    (good / "samples.npz").unlink()
    (good / "000003.png").write_bytes((good / "000003.png").read_bytes()[:60])  # cut short
    out = cli_ok(*_sample_args(good))
    assert "do not decode" in out and "000003.png" in out and "made again" in out, out
    assert _snapshot(good) == before  # the same PNG, samples.npz rebuilt as first written


def test_sample_again_refuses_when_samples_npz_does_not_verify_either(env, tmp_path):
    good, other = _pair(tmp_path)
    shutil.copy(other / "000001.png", good / "000001.png")
    shutil.copy(other / "samples.npz", good / "samples.npz")
    damaged = _snapshot(good)
    out = cli_refused(DataError.exit_code, *_sample_args(good))
    assert "cannot be rebuilt" in out and "--out" in out, out
    assert _snapshot(good) == damaged  # nothing rewritten

    # a card copied from another folder with its samples.npz and latents.npy: both verify
    # against that card, whose samples are not this folder's settings' (seed 4, not 3)
    good, other = tmp_path / "good2", tmp_path / "other2"
    cli_ok(*_sample_args(good))
    shutil.copytree(tmp_path / "other", other)
    for name in ("protocol.json", "samples.npz", "latents.npy"):
        shutil.copy(other / name, good / name)
    swapped = _snapshot(good)
    out = cli_refused(DataError.exit_code, *_sample_args(good))
    assert f"{good / 'protocol.json'}" in out and "seed" in out, out
    assert _snapshot(good) == swapped  # no PNG replaced by the other folder's


# --------------------------------------------------------------------------- 2. evaluate fid
def test_evaluate_checks_the_pngs_of_a_folder_without_samples_npz(env, tmp_path):
    good, other = _pair(tmp_path)
    npz = tmp_path / "kept.npz"
    shutil.move(good / "samples.npz", npz)
    cli_ok("evaluate", "fid", str(good), *SCORE)  # the recorded PNGs score
    (good / "metrics.json").unlink()

    shutil.copy(other / "000002.png", good / "000002.png")
    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(good), *SCORE)
    assert f"{good}" in out and "images_sha256" in out and f"--out {good}" in out, out
    assert not (good / "metrics.json").exists()  # nothing written before the refusal
    (good / "000003.png").write_bytes(b"\x89PNG\r\n")  # does not decode: refused, not a traceback
    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(good), *SCORE)
    assert "000003.png" in out, out

    # the hint's repair: samples.npz back, the same `sample` command restores the PNGs
    shutil.move(npz, good / "samples.npz")
    cli_ok(*_sample_args(good))
    (good / "samples.npz").unlink()
    cli_ok("evaluate", "fid", str(good), *SCORE)

    # a card that records no digest (older versions) scores its PNGs as before
    shutil.copy(other / "000002.png", good / "000002.png")
    card = _card(good)
    del card["files"]["samples.npz"]["images_sha256"]
    (good / "protocol.json").write_text(json.dumps(card))
    (good / "metrics.json").unlink()
    cli_ok("evaluate", "fid", str(good), *SCORE)
    assert (good / "metrics.json").is_file()


# --------------------------------------------------------------------------- 3. text-to-image
@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    with one_torch_thread():
        return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-finished") / "w")


def test_a_t2i_folder_sampled_again_restores_its_pngs(t2i, tmp_path, monkeypatch):
    use_stack(t2i, tmp_path, monkeypatch)
    folder = tmp_path / "t2i"
    args = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--prompt", "a red star",
            "--prompt", "a blue ring", *CPU, "--out", str(folder)]  # fmt: skip
    with one_torch_thread():
        cli_ok(*args)
        before = _snapshot(folder)
        shutil.copy(folder / "000001.png", folder / "000000.png")  # a blue ring for a red star
        (folder / "000003.png").write_bytes(b"not a png")
        out = cli_ok(*args)
    assert "Warning: 2 PNGs" in out and "000000.png" in out, out
    assert _snapshot(folder) == before
