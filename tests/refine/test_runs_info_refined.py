"""`runs info` of a refiner run lists the samples folders it refined.

`runs info` of a pack run lists the runs that use it (``used by``), of a DiT run its samples
folders; of a refiner run it listed nothing of what the refiner made: the folders of
`refine apply` and of `sample --refiner`. They are now listed (``refined``; ``--json``:
``refined``), found under the samples root by the refiner each folder records (its card's
``refiner``, or, unfinished, its settings file's sha256: ``sample.refine.recorded_refiner``):

- a `refine apply` folder, a `sample --refiner` folder and an unfinished `refine apply` folder
  (a real exit at a crash point after its first PNG) of the run are listed;
- the unrefined samples, and a folder refined by a copy of the run (other name, same weights:
  its card names the copy's checkpoint) are not; the copy lists that one only.

The shared toy stack (tests/support/stack.py), real CLI calls, a private samples root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.cli import cli_ok
from support.stack import stack_with_refiner

from repackctl.crash import CRASH_ENV
from repackctl.paths import PROTOCOL_JSON
from repackctl.sample.refine import CRASH_AFTER_PNG

pytestmark = pytest.mark.usefixtures("one_thread")
REFINER, COPY = "s28-info-refine32", "s28-info-copy32"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    paths = stack_with_refiner(tmp_path_factory, REFINER)
    if not (Path(paths["runs"]) / COPY).is_dir():
        shutil.copytree(Path(paths["runs"]) / REFINER, Path(paths["runs"]) / COPY)
    return paths


def _sample(stack: dict[str, str], out: Path, *more: str) -> None:
    cli_ok("sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--seed", "3", "--runs",
           stack["runs"], "--cache", stack["cache"], "--device", "cpu", "--out", str(out),
           *more)  # fmt: skip


def _apply(stack: dict[str, str], src: Path, refiner: str) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", refiner, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", "2"]  # fmt: skip


def _info(stack: dict[str, str], run: str, samples: Path) -> dict:
    out = cli_ok("runs", "info", run, "--runs", stack["runs"], "--samples", str(samples))
    raw = cli_ok("runs", "info", run, "--runs", stack["runs"], "--samples", str(samples),
                 "--json")  # fmt: skip
    return {"text": out, "json": json.loads(raw)}


@pytest.mark.slow
def test_runs_info_of_a_refiner_lists_the_folders_it_refined(stack, tmp_path):
    samples = tmp_path / "samples"
    _sample(stack, samples / "a")
    _sample(stack, samples / "b", "--seed", "4")
    _sample(stack, samples / "c", "--seed", "5")
    _sample(stack, samples / "a-refined", "--refiner", REFINER)  # `sample --refiner`
    cli_ok(*_apply(stack, samples / "a", REFINER))
    cli_ok(*_apply(stack, samples / "b", COPY))
    # an unfinished `refine apply` folder: it records its refiner in its settings file only
    env = subprocess_env(Path(stack["runs"]).parent, **{CRASH_ENV: f"{CRASH_AFTER_PNG}0"})
    cmd = [sys.executable, "-m", "repackctl", *_apply(stack, samples / "c", REFINER)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr[-2000:]
    unfinished = samples / f"c--refine-{REFINER}"
    assert (unfinished / "000000.png").is_file() and not (unfinished / PROTOCOL_JSON).exists()

    mine = ["a--refine-" + REFINER, "a-refined", "c--refine-" + REFINER]
    info = _info(stack, REFINER, samples)
    assert info["json"]["refined"] == mine
    for name in mine:
        assert f"refined {name}" in info["text"], info["text"]
    for name in ("a", "b", "c", f"b--refine-{COPY}"):
        assert f"refined {name} " not in info["text"] + " ", info["text"]
    # the copy (same weights, its own checkpoint folder) refined b only; c's unfinished folder
    # records only the sha256 the two share, so both list it
    copy = _info(stack, COPY, samples)["json"]["refined"]
    assert copy == [f"b--refine-{COPY}", f"c--refine-{REFINER}"]
    # a DiT run lists none (its samples, as before)
    assert _info(stack, "dit-tiny", samples)["json"]["refined"] == []
