"""`refine apply` killed, then one of its refined PNGs damaged or replaced before the folder is
finished: the rerun refines it again (``Warning:`` naming it), and the folder ends byte for byte
as an uninterrupted apply leaves it.

Before, an unfinished refined folder's PNGs were trusted as they lay: the rerun refined only
the missing ones and assembled the replaced image into samples.npz, under a card that vouched
for it. Now each batch's PNGs are written after a manifest of their sha256 (as `sample` writes
its per-sample files), checked on resume and as they are assembled.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``) and a refiner
checkpoint written with the real ``save_checkpoint``; the killed apply is a real subprocess that
exits as a kill would at a crash point.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_torch_thread, subprocess_env
from support.cli import cli_ok
from support.stack import _settings, stack_with_refiner

from repackctl.crash import CRASH_ENV
from repackctl.run_lock import SAMPLES_LOCK
from repackctl.sample.refine import CRASH_AFTER_PNG
from repackctl.sample.run import run_sample

pytestmark = pytest.mark.usefixtures("one_thread")
REFINER = "audit2-refine32"
N, BATCH = 6, 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


def _args(stack: dict[str, str], src: Path) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--runs", stack["runs"],
            "--device", "cpu", "--batch-size", str(BATCH)]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SAMPLES_LOCK
    }


@pytest.fixture
def samples(stack, tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(samples folder, its refined folder, the files of an uninterrupted apply, moved away)."""
    with one_torch_thread():
        settings = _settings(stack, run="dit-tiny", num=N, steps=2, out=str(tmp_path / "s"))
        src = run_sample(settings).out_dir
        cli_ok(*_args(stack, src))
    out = tmp_path / f"s--refine-{REFINER}"
    ref = _files(out)
    shutil.move(out, tmp_path / "uninterrupted")
    return src, out, ref


def _killed_after_png(stack: dict[str, str], src: Path, index: int) -> None:
    """`refine apply` in a subprocess that exits as a kill would once PNG ``index`` is written."""
    env = subprocess_env(Path(stack["runs"]).parent, **{CRASH_ENV: f"{CRASH_AFTER_PNG}{index}"})
    cmd = [sys.executable, "-m", "repackctl", *_args(stack, src)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr[-2000:]


@pytest.mark.parametrize("how", ["replaced", "damaged"])
def test_a_png_changed_before_the_folder_is_finished_is_refined_again(stack, samples, how):
    src, out, ref = samples
    _killed_after_png(stack, src, 1)  # 000000.png and 000001.png of the first batch written
    assert sorted(p.name for p in out.glob("0*.png")) == ["000000.png", "000001.png"]
    png = out / "000001.png"
    if how == "replaced":  # another valid image: the source's own, unrefined
        shutil.copyfile(src / "000005.png", png)
    else:
        png.write_bytes(png.read_bytes()[:-20])
    with one_torch_thread():
        output = cli_ok(*_args(stack, src))
    assert f"Warning: {png} was changed after it was written: it is refined again" in output
    assert "5 now, 1 already done" in output
    now = _files(out)
    assert sorted(now) == sorted(ref)
    for name in ref:  # the PNGs, samples.npz, grid.png, the card: as uninterrupted
        assert now[name] == ref[name], name
    assert not (out / "latents").exists()  # the manifests are gone with the finished folder
