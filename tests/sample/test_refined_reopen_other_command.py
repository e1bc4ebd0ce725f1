"""A finished refined folder reopened by the other command (s38 audit Q, findings 1, 3, 4).

- `refine apply` on a `sample --refiner` folder, and `sample --refiner --out` on a `refine
  apply` folder, answered "already refined" (rc 0) though a PNG was cut with samples.npz
  removed, samples.npz was changed, or the card's images_sha256 was edited. They now check it
  as `sample --out` checks its own folders: a PNG restored from a verified samples.npz, or a
  refusal naming the PNG / samples.npz with the command that makes the folder whole; an edited
  images_sha256 gets its own refusal. Each hint, followed, ends it.
- A cut protocol.json of a `sample --refiner` folder was reported as one of "other samples"
  (other checkpoint, weights, seed …); it is now named as unreadable, with the card's repair.

Real toy stack (tests/support/stack.py ``refiner_env``), real CLI calls, real folders.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from support.cli import cli_ok, cli_refused
from support.stack import refiner_env

from repackctl.errors import DataError

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--grid", "0", *CPU]
REFINER = "refine-s38f2"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

env = refiner_env(REFINER)


def _apply(src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, *CPU]


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _decodes(path: Path) -> bool:
    with Image.open(path) as im:
        im.load()
    return True


def _folders(tmp_path: Path, by_sample: bool) -> tuple[Path, Path]:
    """(samples folder, its refined folder), the latter made by `sample --refiner` or by
    `refine apply`."""
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--out", str(src))
    if by_sample:
        cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    else:
        cli_ok(*_apply(src))
    return src, refined


def test_cut_png_without_npz_of_a_sample_refiner_folder_is_refused_by_refine_apply(env, tmp_path):
    src, refined = _folders(tmp_path, by_sample=True)
    _cut(refined / "000001.png")
    (refined / "samples.npz").unlink()
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "000001.png" in out and "already" not in out, out
    assert f"--out {refined}" in out, out
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))  # as the hint says
    assert "already refined" in cli_ok(*_apply(src))
    assert _decodes(refined / "000001.png") and (refined / "samples.npz").is_file()


def test_changed_npz_of_a_refine_apply_folder_is_refused_by_sample_refiner(env, tmp_path):
    src, refined = _folders(tmp_path, by_sample=False)
    with zipfile.ZipFile(refined / "samples.npz", "a") as zf:
        zf.writestr("extra.npy", b"x")  # another file than the recorded one
    out = cli_refused(DataError.exit_code, *SAMPLE, "--refiner", REFINER, "--out", str(refined))
    assert "samples.npz" in out and f"refine apply {src}" in out, out
    cli_ok(*_apply(src))  # as the hint says: refined again
    assert "already done" in cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))


def test_edited_images_record_of_a_sample_refiner_folder_is_named(env, tmp_path):
    src, refined = _folders(tmp_path, by_sample=True)
    card = refined / "protocol.json"
    data = json.loads(card.read_text())
    data["files"]["samples.npz"]["images_sha256"] = "0" * 64
    card.write_text(json.dumps(data, indent=1))
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "images_sha256 was edited" in out and f"remove {card}" in out, out
    card.unlink()  # as the hint says
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    assert "already refined" in cli_ok(*_apply(src))


def test_cut_card_of_a_sample_refiner_folder_is_named_unreadable(env, tmp_path):
    src, refined = _folders(tmp_path, by_sample=True)
    _cut(refined / "protocol.json")
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "cannot be read" in out and "other samples" not in out, out
    assert f"--out {refined}" in out, out
    (refined / "protocol.json").unlink()  # as the hint says
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    assert "already refined" in cli_ok(*_apply(src))
