"""`refine apply` and damaged or edited samples folders (s37 audit O, findings 2, 4 and 5).

- An edited card of the samples folder (``cfg_scale``) was refined under and passed on into the
  refined folder's card; an edited card of the refined folder was called one of "other
  samples". Both are now refused by name before anything is written
  (``check_card_is_the_folders``), and the hint, followed, ends it.
- A cut or removed ``protocol.json`` of the samples folder: the hints said "sample it again" /
  "pass a folder written by `repackctl sample`"; they now name the same `repackctl sample`
  command with ``--out`` (it writes the card again), and following them ends the refusal.
- A `sample --refiner` folder whose own latents.npy is damaged or gone, its images intact: it
  was called one of "other latents", and no hint ended that short of moving it away. Its
  latents.npy is now named, with the copy to put back, and putting it back ends it.

Real toy stack (tests/support/stack.py ``refiner_env``), real CLI calls, real folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files
from support.stack import refiner_env

from repackctl.errors import DataError

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--grid", "0", *CPU]
REFINER = "refine-s38f2"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

env = refiner_env(REFINER)


def _apply(src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, *CPU]


def _edit_card(folder: Path, **fields: object) -> None:
    card = folder / "protocol.json"
    card.write_text(json.dumps(json.loads(card.read_text()) | fields, indent=1))


def test_refine_apply_refuses_an_edited_card_of_either_folder(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--out", str(src))
    _edit_card(src, cfg_scale=4.0)  # the samples were made at the default scale
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert f"{src / 'protocol.json'}" in out and "cfg_scale" in out, out
    assert f"--out {src}" in out, out
    assert not refined.exists()  # nothing refined under the edited card

    (src / "protocol.json").unlink()  # as the hint says
    cli_ok(*SAMPLE, "--out", str(src))
    cli_ok(*_apply(src))
    card = json.loads((refined / "protocol.json").read_text())
    assert card["cfg_scale"] == json.loads((src / "protocol.json").read_text())["cfg_scale"]
    assert card["cfg_scale"] != 4.0

    # the refined folder's own card edited: named, not taken for one of "other samples"
    shutil.rmtree(refined)
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    _edit_card(refined, cfg_scale=4.0)
    before = folder_files(refined)
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert f"{refined / 'protocol.json'}" in out and "cfg_scale" in out, out
    assert "other samples" not in out, out
    assert folder_files(refined) == before


def test_refine_apply_hints_for_a_cut_or_removed_card_end_it(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(src))
    card = src / "protocol.json"
    card.write_bytes(card.read_bytes()[: card.stat().st_size // 2])
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "sample it again" not in out and f"--out {src}" in out, out
    card.unlink()  # as the hint says
    cli_ok(*SAMPLE, "--out", str(src))
    cli_ok(*_apply(src))

    shutil.rmtree(tmp_path / f"s--{REFINER}")
    card.unlink()
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "has no protocol.json" in out and f"--out {src}" in out, out
    assert "pass a folder written by" not in out, out
    cli_ok(*SAMPLE, "--out", str(src))  # as the hint says
    cli_ok(*_apply(src))


def test_refine_apply_names_a_damaged_latents_npy_of_the_refined_folder(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--out", str(src))
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    lat = refined / "latents.npy"
    for damage in ("flip", "remove"):
        if damage == "flip":
            data = bytearray(lat.read_bytes())
            data[len(data) // 2] ^= 0xFF
            lat.write_bytes(bytes(data))
        else:
            lat.unlink()
        out = cli_refused(DataError.exit_code, *_apply(src))
        assert f"{lat} is" in out and "other latents" not in out, out
        assert f"copy {src / 'latents.npy'} to {lat}" in out, out
        shutil.copyfile(src / "latents.npy", lat)  # as the hint says
        assert "4 (0 now, 4 already done)" in cli_ok(*_apply(src))
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))  # `sample` keeps it too

    # moved away, then `sample --out` wrote the card again without it: the card records none
    lat.unlink()
    cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))
    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "records none" in out and f"copy {src / 'latents.npy'} to {lat}" in out, out
    shutil.copyfile(src / "latents.npy", lat)  # as the hint says
    assert "4 (0 now, 4 already done)" in cli_ok(*_apply(src))
