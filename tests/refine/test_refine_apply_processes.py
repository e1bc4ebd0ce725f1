"""`refine apply` started by two processes and resumed by one ends as the two-process job would.

README (`refine apply`): resumed by another number of processes, a refined folder is refined in
the batches of the job that started it (its settings record ``world_size``; the batches are
``sample.folder.job_batches``), so it ends byte-identical to an uninterrupted run. The refiner's
convolutions round by batch shape: with 10 samples in batches of 3, one process refines
[0-2][3-5][6-8][9] and two processes [0-2][3-4] | [5-7][8-9], and some refined PNGs differ by
1/255 between the two (checked here, so the comparison can fail).

A real two-process job (torchrun's environment, ``support.launch.start_two``, CPU, gloo) is
stopped part way: rank 1 exits as a kill would once it wrote refined PNG 5 (a crash point), and
rank 0, still refining or waiting for rank 1, is SIGKILLed as torchrun would. One process then
finishes the folder; every file ends as the uninterrupted two-process job left it (the card but
``refined_by``, which names the resuming call), the samples folder untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_ok
from support.launch import start_two
from support.stack import _settings, stack_with_refiner

from repackctl.crash import CRASH_ENV
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.sample.refine import CRASH_AFTER_PNG, REFINED_BY
from repackctl.sample.run import run_sample

pytestmark = pytest.mark.usefixtures("one_thread")
MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
REFINER = "s28-world-refine32"
N, BATCH = 10, 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the folder (its manifests ``latents/`` included) but the writer's lock."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SAMPLES_LOCK
    }


def _args(stack: dict[str, str], src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", str(BATCH)]  # fmt: skip


def _two(stack: dict[str, str], src: Path, **env: str) -> tuple[list[int], str]:
    """`refine apply` by two processes; (each one's return code, both stderrs)."""
    job = start_two([MAIN, *_args(stack, src)], subprocess_env(Path(stack["runs"]).parent, **env))
    _, _, err = job.wait(240)
    return [p.returncode for p in job.procs], err


def _card(files: dict[str, bytes]) -> dict:
    card = json.loads(files.pop(PROTOCOL_JSON))
    card.pop(REFINED_BY)  # the refining call's run header (world size, pid …)
    return card


@pytest.mark.slow
def test_apply_of_two_processes_resumed_by_one_ends_as_the_two_process_job(stack, tmp_path):
    with one_torch_thread():
        settings = _settings(stack, run="dit-tiny", num=N, steps=2, out=str(tmp_path / "s"))
        src = run_sample(settings).out_dir
    source = _files(src)
    out = src.parent / f"{src.name}--refine-{REFINER}"
    cli_ok(*_args(stack, src))  # one process, uninterrupted
    one = _files(out)
    shutil.move(out, tmp_path / "one")
    codes, err = _two(stack, src)  # two processes, uninterrupted
    assert codes == [0, 0] and "Traceback" not in err, err[-3000:]
    ref = _files(out)
    assert json.loads(ref[SETTINGS_JSON])["world_size"] == 2
    differ = [k for k in ref if k.endswith(".png") and ref[k] != one.get(k)]
    assert differ, "one and two processes refine alike: this test could not fail"
    shutil.move(out, tmp_path / "two")

    # rank 1 (samples 5-9) exits as a kill would once it wrote PNG 5 (the first of its batch
    # [5-7]); rank 0 (0-4) is SIGKILLed then, wherever it is
    codes, err = _two(stack, src, **{CRASH_ENV: f"{CRASH_AFTER_PNG}5"})
    assert codes[1] == 137, err[-3000:]
    assert not (out / PROTOCOL_JSON).exists()
    pngs = {p.name for p in out.glob("0*.png")}
    assert "000005.png" in pngs and len(pngs) < N, pngs
    # the resume makes a PNG that one process's batches round otherwise (sample 9: [9] alone,
    # not [8-9]), so a resume in its own batches is told apart
    assert [k for k in differ if k.endswith(".png") and k not in pngs], (differ, pngs)
    assert "latents" in {p.name for p in out.iterdir()}  # the manifests of the batches written
    res = cli_ok(*_args(stack, src))  # one process finishes it
    assert f"{N} ({N - len(pngs)} now, {len(pngs)} already done)" in res, res
    now = _files(out)
    assert json.loads(now[SETTINGS_JSON])["world_size"] == 2  # the job that started it
    assert sorted(now) == sorted(ref)
    assert [k for k in ref if k != PROTOCOL_JSON and now[k] != ref[k]] == []
    assert _card(now) == _card(ref)
    assert _files(src) == source  # nothing of the samples lost or changed
