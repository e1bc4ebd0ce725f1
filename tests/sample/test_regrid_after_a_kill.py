"""A kill between a finished refined folder's new grid.png and its card is mended by a rerun.

`sample --refiner R --grid N` on the folder `refine apply --refiner R` finished (and the
reverse) draws grid.png again and then records ``grid`` on the card. Killed between the two,
the folder held the new grid beside the old count; a rerun asking for the old count found the
card agreeing and a grid.png there, and left the wrong grid forever. The card is now marked
(``grid_pending``) before the grid is touched and cleared with the new count: a rerun finding
the mark draws the grid again, and one finding the card and grid agreeing leaves the folder as
it is (no file rewritten, no lock taken).

The shared toy stack with a 32 px refiner (tests/support/stack.py); real CLI calls, a real
killed process (``REPACKCTL_TEST_CRASH_AFTER``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.cli import cli_ok
from support.stack import refiner_env

from repackctl.crash import CRASH_ENV
from repackctl.paths import PROTOCOL_JSON

REFINER = "refine-s30c"
CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", *CPU]


env = refiner_env(REFINER)


def _applied(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(samples folder, its `refine apply` folder with a 4-image grid, that grid.png)."""
    src, refined = tmp_path / "s", tmp_path / f"s--{REFINER}"
    cli_ok(*SAMPLE, "--grid", "4", "--out", str(src))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)
    assert json.loads((refined / PROTOCOL_JSON).read_text())["grid"] == 4
    return src, refined, (refined / "grid.png").read_bytes()


def _stamps(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_a_rerun_with_the_old_grid_redraws_the_grid_a_kill_left(env, tmp_path):
    src, refined, four = _applied(tmp_path)
    card = (refined / PROTOCOL_JSON).read_bytes()
    again = [*SAMPLE, "--refiner", REFINER, "--out", str(refined)]
    before = _stamps(refined)
    cli_ok(*again, "--grid", "4")  # card and grid agree: nothing is written, not even the lock
    assert _stamps(refined) == before
    cli_ok(*again, "--grid", "2")
    assert (refined / "grid.png").read_bytes() != four
    # what a kill between the two writes leaves: the 2-image grid beside the marked card of 4
    marked = {**json.loads(card), "grid_pending": True}
    (refined / PROTOCOL_JSON).write_text(json.dumps(marked))

    cli_ok(*again, "--grid", "4")  # the card's own count: the grid follows it again
    assert (refined / "grid.png").read_bytes() == four
    assert (refined / PROTOCOL_JSON).read_bytes() == card  # the mark cleared, nothing else

    cli_ok(*again, "--grid", "2")
    (refined / PROTOCOL_JSON).write_text(json.dumps(marked))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)  # the source's 4
    assert (refined / "grid.png").read_bytes() == four


def test_a_killed_regrid_is_mended_by_the_rerun(env, tmp_path):
    _, refined, four = _applied(tmp_path)
    card = (refined / PROTOCOL_JSON).read_bytes()
    again = [*SAMPLE, "--refiner", REFINER, "--out", str(refined)]
    killed = subprocess.run(
        [sys.executable, "-m", "repackctl", *again, "--grid", "2"],
        env={**os.environ, CRASH_ENV: "regrid-finished-grid"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    left = json.loads((refined / PROTOCOL_JSON).read_text())
    assert left == {**json.loads(card), "grid_pending": True}  # marked, the count not yet
    assert (refined / "grid.png").read_bytes() != four  # …after the grid of 2

    cli_ok(*again, "--grid", "4")
    assert (refined / "grid.png").read_bytes() == four
    assert (refined / PROTOCOL_JSON).read_bytes() == card
