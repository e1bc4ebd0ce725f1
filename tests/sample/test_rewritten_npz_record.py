"""A finished samples folder whose card's record of samples.npz was rewritten to name another file.

The card records samples.npz twice: its file (sha256, size) and its pixels (``images_sha256``).
`sample --out FOLDER` run again, and `refine apply FOLDER`, trusted the file record alone: with
a samples.npz of all-zero images whose sha256 and size were written into the card, the rerun
overwrote the good PNGs with zeros ("4 PNGs … rewritten from its samples.npz") and `refine
apply` refined the zeros. The pixels are now checked before anything is restored or refined:
good PNGs are kept and samples.npz is rebuilt from them; where the PNGs are not the recorded
samples either, the rerun is refused naming samples.npz, and nothing is rewritten.

The shared toy stack with a 32 px refiner (tests/support/stack.py); real CLI calls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from support.cli import cli_ok, cli_refused
from support.stack import refiner_env

from repackctl.errors import DataError
from repackctl.files import sha256_file, write_png_atomic
from repackctl.run_lock import SAMPLES_LOCK as LOCK
from repackctl.sample.folder import npz_pixels_sha256, pixels_sha256, pngs_digest

REFINER = "refine-k37"
CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", *CPU]

env = refiner_env(REFINER)


def _images(npz: Path) -> np.ndarray:
    with np.load(npz, allow_pickle=False) as z:
        return z["arr_0"]


def _zeroed_with_its_record(folder: Path) -> None:
    """samples.npz of all-zero images (labels kept), its sha256 and size written into the
    card: only ``images_sha256`` still names the real samples."""
    npz = folder / "samples.npz"
    with np.load(npz, allow_pickle=False) as z:
        images, labels = z["arr_0"], z["arr_1"]
    np.savez(npz, np.zeros_like(images), labels)
    card_path = folder / "protocol.json"
    card = json.loads(card_path.read_text())
    card["files"]["samples.npz"] |= {"sha256": sha256_file(npz), "size": npz.stat().st_size}
    card_path.write_text(json.dumps(card, indent=2))


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder but the writer's lock (its record names the last writer)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK}


def _pngs(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("0*.png")}


def test_the_rerun_keeps_the_good_pngs_and_rebuilds_samples_npz_from_them(env, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(folder))
    real, pngs = _images(folder / "samples.npz"), _pngs(folder)
    recorded = json.loads((folder / "protocol.json").read_text())["files"]["samples.npz"]
    _zeroed_with_its_record(folder)

    out = cli_ok(*SAMPLE, "--out", str(folder))
    assert "rewritten from its samples.npz" not in out, out
    assert _pngs(folder) == pngs  # not overwritten with zeros
    assert np.array_equal(_images(folder / "samples.npz"), real)  # rebuilt from them
    card = json.loads((folder / "protocol.json").read_text())
    assert card["files"]["samples.npz"]["images_sha256"] == recorded["images_sha256"]


def test_zeroed_pngs_and_samples_npz_are_refused_by_name(env, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(folder))
    _zeroed_with_its_record(folder)
    zeros = _images(folder / "samples.npz")
    for i, png in enumerate(sorted(folder.glob("0*.png"))):  # the bytes `sample` writes
        write_png_atomic(png, zeros[i])
    before = _files(folder)

    out = cli_refused(DataError.exit_code, *SAMPLE, "--out", str(folder))
    assert f"{folder / 'samples.npz'} does not match" in out and "images_sha256" in out, out
    assert "nothing was rewritten" in out, out
    assert _files(folder) == before


def test_refine_apply_refuses_samples_npz_whose_pixels_are_not_the_cards(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(src))
    _zeroed_with_its_record(src)
    out = cli_refused(DataError.exit_code, "refine", "apply", str(src), "--refiner", REFINER, *CPU)
    assert f"{src / 'samples.npz'} is not the samples" in out, out
    assert "images_sha256" in out and "nothing was refined" in out, out
    assert not (tmp_path / f"s--{REFINER}" / "protocol.json").exists()


def test_one_pixel_digest_rule_for_pngs_and_samples_npz(env, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(folder))
    card = json.loads((folder / "protocol.json").read_text())
    recorded = card["files"]["samples.npz"]["images_sha256"]
    assert npz_pixels_sha256(folder / "samples.npz") == recorded
    assert pngs_digest(folder, 4) == recorded
    assert pixels_sha256(np.split(_images(folder / "samples.npz"), [1, 3])) == recorded
