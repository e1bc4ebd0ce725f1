"""`refine apply` on a samples folder without latents.npy recomputes the latents from the DiT that
made the samples; a DiT that is gone is refused before the refined folder is claimed.

It was refused only at the first batch, once the refined folder had been claimed (created, its
settings file written): a later run, with the DiT back or latents.npy restored, was refused with
"holds other refined images" for a folder that held none, until the user removed it. Now nothing
is written, and the run after the DiT is back refines the recomputed latents to the images the
stored latents give.

The shared toy stack (tests/support/stack.py), a private copy of its runs.
"""

from __future__ import annotations

import shutil

import numpy as np
from conftest import one_torch_thread
from support.cli import cli_ok, cli_refused
from support.stack import _images, _settings, make_dit_run, save_refiner_run, shared_stack

from repackctl.errors import CheckpointError
from repackctl.sample.run import run_sample


def test_a_gone_dit_is_refused_before_the_refined_folder_is_claimed(tmp_path_factory, tmp_path):
    stack = shared_stack(tmp_path_factory)
    runs = tmp_path / "runs"
    shutil.copytree(stack["runs"], runs)
    make_dit_run(str(runs), "dit-regen", seed=7)
    save_refiner_run(str(runs), "refine-32", 32)
    src, away = tmp_path / "s", tmp_path / "away"
    away.mkdir()
    with one_torch_thread():
        run_sample(_settings({**stack, "runs": str(runs)}, run="dit-regen", num=4, out=str(src)))
    apply = ["refine", "apply", str(src), "--refiner", "refine-32", "--runs", str(runs)]
    apply += ["--device", "cpu"]
    refined = tmp_path / "s--refine-32"

    shutil.move(src / "latents.npy", away / "latents.npy")
    shutil.move(runs / "dit-regen", away / "dit-regen")
    with one_torch_thread():
        out = cli_refused(CheckpointError.exit_code, *apply)
    assert "dit-regen" in out
    assert not refined.exists()  # nothing claimed, nothing written

    shutil.move(away / "dit-regen", runs / "dit-regen")  # the DiT is back: recomputed latents
    with one_torch_thread():
        assert "regenerated from the DiT" in cli_ok(*apply)
    recomputed = _images(refined)
    shutil.move(refined, away / "refined-recomputed")
    shutil.move(away / "latents.npy", src / "latents.npy")  # the stored latents: same images
    with one_torch_thread():
        assert "latents.npy" in cli_ok(*apply)
    assert np.array_equal(_images(refined), recomputed)
    assert not np.array_equal(recomputed, _images(src))  # refined
