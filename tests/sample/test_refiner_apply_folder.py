"""`sample --refiner R` on the finished folder `refine apply --refiner R` wrote (s29 audit H2).

- A refined PNG deleted from that folder: `sample --refiner` answered "N already done" and made
  nothing. It now rewrites it from the folder's recorded samples.npz (as `sample` restores its
  own folders), with a ``Warning:``; when that file is gone too, it is refused by name.
- Under two processes the answer was "2N already done" (each process's full count summed).
- A t2i card records the entry of its default prompts as a field (``prompt_entry``), not only
  inside the words of ``prompt_source``.

Real toy stacks (tests/support/caches.py ``t2i_stack``, tests/support/stack.py), real CLI calls,
real folders, and two real worker processes (``support.launch.start_two``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import subprocess_env
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.launch import start_two
from support.snapshot import folder_files
from support.stack import refiner_env, save_refiner_run

from repackctl.errors import DataError
from repackctl.run_lock import SAMPLES_LOCK

MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
CPU = ["--device", "cpu"]
PROMPTS = ["--prompt", "a red star", "--prompt", "a blue ring"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--grid", "0", *CPU]
REFINER = "refine-s29c"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s29c-t2i") / "w")
    save_refiner_run(str(work / "runs"), REFINER, 32)  # the samples' side: 32 px
    return work


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return folder_files(folder, skip=(SAMPLES_LOCK,))


def _applied(src: Path, *sample: str) -> Path:
    """``sample`` into ``src``, then `refine apply` of it; the refined folder."""
    cli_ok(*sample, "--out", str(src))
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)
    return src.parent / f"{src.name}--{REFINER}"


def _deleted_png_is_restored_or_refused(refined: Path, sample: list[str]) -> None:
    before = _snapshot(refined)
    png = refined / "000002.png"
    png.unlink()
    out = cli_ok(*sample, "--refiner", REFINER, "--out", str(refined))
    assert "000002.png: missing" in out and "rewritten from its samples.npz" in out, out
    assert _snapshot(refined) == before  # the refined image back, byte for byte

    png.unlink()
    (refined / "samples.npz").unlink()  # nothing to restore it from: refused by name
    left = _snapshot(refined)
    out = cli_refused(DataError.exit_code, *sample, "--refiner", REFINER, "--out", str(refined))
    assert "000002.png" in out and "missing" in out, out
    assert f"refine apply {refined.parent / refined.name.removesuffix('--' + REFINER)}" in out
    assert _snapshot(refined) == left


def test_t2i_sample_refiner_restores_a_deleted_png_of_a_refine_apply_folder(work, tmp_path):
    sample = [*SAMPLE, *PROMPTS]
    refined = _applied(tmp_path / "s", *sample)
    _deleted_png_is_restored_or_refused(refined, sample)


cc_env = refiner_env(REFINER)


def test_sample_refiner_restores_a_deleted_png_of_a_refine_apply_folder(cc_env, tmp_path):
    sample = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--grid", "0", *CPU]
    refined = _applied(tmp_path / "s", *sample)
    _deleted_png_is_restored_or_refused(refined, sample)


def test_refine_apply_restores_a_deleted_png_of_a_sample_refiner_folder(cc_env, tmp_path):
    # the other way round: `refine apply` answered "already refined" with a PNG missing
    sample = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--grid", "0", *CPU]
    apply = ["refine", "apply", str(tmp_path / "s"), "--refiner", REFINER, *CPU]
    cli_ok(*sample, "--out", str(tmp_path / "s"))
    refined = tmp_path / f"s--{REFINER}"
    cli_ok(*sample, "--refiner", REFINER, "--out", str(refined))
    before = _snapshot(refined)
    png = refined / "000001.png"
    png.unlink()
    out = cli_ok(*apply)
    assert "000001.png: missing" in out and "4 (0 now, 4 already done)" in out, out
    assert _snapshot(refined) == before

    png.unlink()
    (refined / "samples.npz").unlink()
    left = _snapshot(refined)
    out = cli_refused(DataError.exit_code, *apply)
    assert "000001.png" in out and "missing" in out and f"--out {refined}" in out, out
    assert _snapshot(refined) == left
    cli_ok(*sample, "--refiner", REFINER, "--out", str(refined))  # as the hint says
    assert png.is_file() and "4 (0 now, 4 already done)" in cli_ok(*apply)


@pytest.mark.slow
def test_t2i_sample_refiner_under_two_processes_counts_the_job_once(work, tmp_path):
    refined = _applied(tmp_path / "s", *SAMPLE, *PROMPTS)
    env = subprocess_env(
        work, REPACKCTL_RUNS=str(work / "runs"), REPACKCTL_CACHE=str(work / "cache")
    )
    args = [MAIN, *SAMPLE, *PROMPTS, "--refiner", REFINER, "--out", str(refined)]
    code, stdout, stderr = start_two(args, env).wait(timeout=180)
    assert code == 0, stderr[-2000:]
    stdout = " ".join(stdout.split())
    assert "4 (0 now, 4 already done)" in stdout, stdout


def test_t2i_card_records_the_entry_of_the_default_prompts(work, tmp_path):
    cli_ok(*SAMPLE, "--out", str(tmp_path / "d"))
    card = json.loads((tmp_path / "d" / "protocol.json").read_text())
    entry = card["prompt_entry"]
    assert isinstance(entry, str) and "--val--" in entry, card
    assert card["prompt_source"] == f"first caption of each image of {entry}"
    cli_ok(*SAMPLE, *PROMPTS, "--out", str(tmp_path / "g"))
    assert json.loads((tmp_path / "g" / "protocol.json").read_text())["prompt_entry"] is None
