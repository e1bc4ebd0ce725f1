"""A samples folder's grid.png agrees with its card, and `sample` names a `refine apply` folder.

- `sample --grid 0` (or `refine apply --grid 0`) rerun on a finished folder made with a grid
  recorded ``grid: 0`` on its card and left the earlier grid.png beside it. The grid.png that
  the command wrote (its card records a grid) is now removed; another ``--grid`` redraws it.
- `sample --refiner R --grid N` on the folder `refine apply --refiner R` finished (and `refine
  apply --grid N` on the folder `sample --refiner R` finished) answered "already done" and kept
  the grid of the old size. The grid and the card's ``grid`` now follow the ``--grid`` given.
- `sample --out <a refine apply folder>` without --refiner was refused with a list of null
  values; it now says the folder holds the refined samples of its source, and names --refiner.

The shared toy stack (tests/support/stack.py) with a 32 px refiner, and the text-to-image toy
stack (tests/support/caches.py); real CLI calls and folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files
from support.stack import refiner_env, save_refiner_run

from repackctl.errors import ConfigError
from repackctl.paths import PROTOCOL_JSON
from repackctl.run_lock import SAMPLES_LOCK

REFINER = "refine-s30"
CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", *CPU]


env = refiner_env(REFINER)


def _grid(folder: Path) -> int:
    """The card's ``grid``, checked against the folder's grid.png (none exactly at 0)."""
    grid = json.loads((folder / PROTOCOL_JSON).read_text())["grid"]
    assert (folder / "grid.png").is_file() == (grid > 0), (grid, sorted(folder.iterdir()))
    return grid


def _size(folder: Path) -> tuple[int, int]:
    with Image.open(folder / "grid.png") as im:
        return im.size


def _samples(folder: Path) -> dict[str, bytes]:
    """What a grid change leaves as it was: every file but the grid, the card and the lock."""
    return folder_files(folder, skip=(SAMPLES_LOCK, "grid.png", PROTOCOL_JSON))


def test_sample_rerun_with_another_grid_makes_the_folder_agree_with_its_card(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(src))
    assert _grid(src) == 4
    four, samples = _size(src), _samples(src)

    cli_ok(*SAMPLE, "--grid", "0", "--out", str(src))  # no grid: the earlier one removed
    assert _grid(src) == 0 and _samples(src) == samples
    cli_ok(*SAMPLE, "--grid", "2", "--out", str(src))  # drawn again at the new size
    assert _grid(src) == 2 and _size(src) != four and _samples(src) == samples


def test_sample_grid_0_leaves_a_grid_png_the_command_did_not_write(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--grid", "0", "--out", str(src))
    mine = Image.new("RGB", (3, 3))
    mine.save(src / "grid.png")  # the card records no grid: not the command's
    before = (src / "grid.png").read_bytes()
    cli_ok(*SAMPLE, "--grid", "0", "--out", str(src))
    assert (src / "grid.png").read_bytes() == before


def test_sample_refiner_grid_applies_to_the_refine_apply_folder(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(src))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)
    assert _grid(refined) == 4
    four, samples = _size(refined), _samples(refined)
    again = [*SAMPLE, "--refiner", REFINER, "--out", str(refined)]

    out = cli_ok(*again, "--grid", "0")
    assert "4 (0 now, 4 already done)" in out, out
    assert _grid(refined) == 0 and _samples(refined) == samples
    cli_ok(*again, "--grid", "2")
    assert _grid(refined) == 2 and _size(refined) != four and _samples(refined) == samples
    card = (refined / PROTOCOL_JSON).read_bytes()
    cli_ok(*again, "--grid", "2")  # the same grid: nothing rewritten
    assert (refined / PROTOCOL_JSON).read_bytes() == card

    # `refine apply --grid 0` rerun on its own finished folder: the grid goes too
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, "--grid", "0", *CPU)
    assert _grid(refined) == 0 and _samples(refined) == samples


def test_refine_apply_grid_applies_to_the_sample_refiner_folder(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(src))
    cli_ok(*SAMPLE, "--grid", "4", "--refiner", REFINER, "--out", str(refined))
    four, samples = _size(refined), _samples(refined)
    apply = ["refine", "apply", str(src), "--refiner", REFINER, *CPU]

    before = folder_files(refined, skip=(SAMPLES_LOCK,))
    # no --grid: as many as the source's, which it shows already: left byte for byte
    assert "already refined" in cli_ok(*apply)
    assert folder_files(refined, skip=(SAMPLES_LOCK,)) == before
    cli_ok(*apply, "--grid", "0")
    assert _grid(refined) == 0 and _samples(refined) == samples
    cli_ok(*apply, "--grid", "2")
    assert _grid(refined) == 2 and _size(refined) != four and _samples(refined) == samples


def test_sample_without_refiner_names_the_refine_apply_folder(env, tmp_path):
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--out", str(src))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)
    before = folder_files(refined)
    out = cli_refused(ConfigError.exit_code, *SAMPLE, "--out", str(refined))
    assert "null" not in out and "refine apply" in out, out
    assert f"refined samples of {src}" in out, out
    hint = out.split("Hint:")[1]
    assert f"--refiner {REFINER}" in hint and "--out" in hint, out
    assert folder_files(refined) == before


# ------------------------------------------------------------------------ text-to-image


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s30-t2i") / "w")
    save_refiner_run(str(work / "runs"), REFINER, 32)  # the samples' side: 32 px
    return work


@pytest.mark.usefixtures("one_thread")
def test_t2i_grid_follows_the_flag_in_sample_and_refine_apply_folders(t2i, tmp_path, monkeypatch):
    use_stack(t2i, tmp_path, monkeypatch)
    t2i_sample = ["sample", "-r", "tA", "--steps", "2", "-n", "4", *CPU]
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*t2i_sample, "--grid", "4", "--out", str(src))
    assert _grid(src) == 4
    cli_ok(*t2i_sample, "--grid", "0", "--out", str(src))
    assert _grid(src) == 0

    cli_ok("refine", "apply", str(src), "--refiner", REFINER, "--grid", "4", *CPU)
    assert _grid(refined) == 4
    four = _size(refined)
    again = [*t2i_sample, "--refiner", REFINER, "--out", str(refined)]
    cli_ok(*again, "--grid", "0")
    assert _grid(refined) == 0
    cli_ok(*again, "--grid", "2")
    assert _grid(refined) == 2 and _size(refined) != four

    out = cli_refused(ConfigError.exit_code, *t2i_sample, "--out", str(refined))
    assert "null" not in out and f"refined samples of {src}" in out, out
    assert f"--refiner {REFINER}" in out.split("Hint:")[1], out
