"""A samples folder's samples.npz whose pixels are not the samples its card records is refused.

The card's ``files["samples.npz"]`` sha256 and size name the file; ``images_sha256`` names its
pixels (the digest `sample` took of the PNGs it assembled them from). Only the first was
compared: a samples.npz of all-zero images, with its sha256 and size written into the card,
was scored by `evaluate fid` (rc 0, a score) and summarised by `evaluate stats`. The pixels are
now checked, once per file and process, and the hint's rebuild gives back the real samples.

The shared toy stack (extract → pack train → a DiT run), real `repackctl` CLI calls, the
built-in encoder's FD on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, FD_WEIGHTS, shared_stack, stack_env

import repackctl.evaluate.generative as generative
from repackctl.errors import DataError
from repackctl.files import sha256_file

SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--device", "cpu"]
STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", "--device", "cpu"]
STATS += FD_WEIGHTS


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    yield from stack_env(shared_stack(tmp_path_factory), tmp_path, monkeypatch)


def _images(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz, allow_pickle=False) as z:
        return z["arr_0"], z["arr_1"]


def _zeroed_with_its_record(folder: Path) -> None:
    """samples.npz of all-zero images (the labels kept), its sha256 and size written into the
    card's ``files`` record: only ``images_sha256`` still names the real samples."""
    npz = folder / "samples.npz"
    images, labels = _images(npz)
    np.savez(npz, np.zeros_like(images), labels)
    card_path = folder / "protocol.json"
    card = json.loads(card_path.read_text())
    card["files"]["samples.npz"] |= {"sha256": sha256_file(npz), "size": npz.stat().st_size}
    card_path.write_text(json.dumps(card, indent=2))


def test_a_samples_npz_whose_pixels_are_not_the_cards_is_refused(env, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(folder))
    real, _ = _images(folder / "samples.npz")
    _zeroed_with_its_record(folder)
    npz, metrics, sdir = folder / "samples.npz", tmp_path / "m.json", tmp_path / "stats"

    out = cli_refused(
        DataError.exit_code, "evaluate", "fid", str(folder), *FD_SCORE, "--out", str(metrics)
    )
    assert f"the images of {npz} are not the samples `repackctl sample` recorded" in out, out
    assert "(images_sha256)" in out, out
    hint = out.split("Hint:", 1)[1]
    assert f"move {npz} away" in hint and f"with --out {folder}" in hint, out
    # as a reference (`--ref FOLDER/samples.npz` and `evaluate stats` check it alike)
    stats = cli_refused(DataError.exit_code, *STATS, str(npz), "--stats-dir", str(sdir))
    assert stats.split("Hint:")[0] == out.split("Hint:")[0], (stats, out)
    assert not metrics.exists() and not sdir.exists()

    # the hint works: samples.npz moved away, the same command rebuilds it from the PNGs
    shutil.move(npz, tmp_path / "zeroed.npz")
    cli_ok(*SAMPLE, "--out", str(folder))
    assert np.array_equal(_images(npz)[0], real)
    cli_ok("evaluate", "fid", str(folder), *FD_SCORE, "--out", str(metrics))
    assert metrics.is_file()


def test_the_pixels_are_hashed_once_per_file(env, tmp_path, monkeypatch):
    """`evaluate fid` of a folder checks the pixels of its samples.npz in one pass; a second
    evaluate of the same file in this process does not read them again."""
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(folder))
    calls: list[Path] = []
    digest = generative.npz_pixels_sha256

    def counted(path: Path) -> str:
        calls.append(path)
        return digest(path)

    monkeypatch.setattr(generative, "npz_pixels_sha256", counted)
    monkeypatch.setattr(generative, "_PIXEL_DIGESTS", {})  # not one an earlier test left
    for name in ("m1.json", "m2.json"):
        cli_ok("evaluate", "fid", str(folder), *FD_SCORE, "--out", str(tmp_path / name))
    assert calls == [folder / "samples.npz"], calls
