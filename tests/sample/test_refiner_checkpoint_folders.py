"""A refiner named by its checkpoint (``--refiner runs/R/checkpoints/step-N``) is named so in the
samples folder: ``--refine-R-step-N``. `sample --refiner` named the folder after the checkpoint
alone (``--refine-step-0000002``), so step N of two refiner runs shared a folder and the second
was refused; `refine apply` named it after the run alone, so a second checkpoint of one run was
refused until the first one's folder was moved away.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``) and two refiner
runs saved with the real ``save_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import _settings, save_refiner_run, stack_with_refiner

from repackctl.sample.run import run_sample
from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")
RUNS = ("ckname-a", "ckname-b")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    paths = stack_with_refiner(tmp_path_factory, RUNS[0])
    if not (Path(paths["runs"]) / RUNS[1]).is_dir():
        save_refiner_run(paths["runs"], RUNS[1], resolution=32)
    return paths


def _sampled(stack: dict[str, str], samples: Path, refiner: str) -> str:
    """The name of the folder `sample` makes under ``samples`` with ``--refiner refiner``."""
    flags = {"cache": stack["cache"], "runs": stack["runs"], "samples": str(samples)}
    flags |= {"device": "cpu", "seed": 3, "sample.run": "dit-tiny", "sample.num": 2}
    flags |= {"sample.steps": 1, "sample.refiner": refiner}
    return run_sample(resolve_settings(None, flags).settings).out_dir.name


def _ckpt(stack: dict[str, str], run: str) -> str:
    return str(Path(stack["runs"]) / run / "checkpoints" / "step-0000002")


def test_sample_names_the_refiner_run_and_checkpoint(stack, tmp_path):
    made = [_sampled(stack, tmp_path, _ckpt(stack, run)) for run in RUNS]
    assert made[0].endswith("--refine-ckname-a-step-0000002"), made
    assert made[1].endswith("--refine-ckname-b-step-0000002"), made
    # named by its run, the folder is the run's
    assert _sampled(stack, tmp_path, RUNS[0]).endswith("--refine-ckname-a")


def test_refine_apply_names_the_checkpoint_it_was_given(stack, tmp_path):
    src = run_sample(_settings(stack, run="dit-tiny", num=2, steps=1, out=str(tmp_path / "s")))
    common = ["--runs", stack["runs"], "--device", "cpu"]
    cli_ok("refine", "apply", str(src.out_dir), "--refiner", RUNS[0], *common)
    cli_ok("refine", "apply", str(src.out_dir), "--refiner", _ckpt(stack, RUNS[0]), *common)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s", "s--refine-ckname-a", "s--refine-ckname-a-step-0000002"
    ]  # fmt: skip
