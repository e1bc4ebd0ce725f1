"""A refiner and text-to-image samples: `refine apply` refines a t2i samples folder as it does a
class-conditional one, and `sample --refiner` of a t2i run takes only a refiner trained for its
samples.

- `refine apply` on a t2i folder read the card's ``labels``, which t2i cards do not record: a
  ``KeyError`` traceback once every refined PNG was written, and no card. Its samples.npz now
  records each sample's prompt id (``arr_1``), as the source's does, and its images are those of
  `sample --refiner` with the same prompts.
- A t2i folder without latents.npy cannot have its latents recomputed (they come from prompts,
  not labels): refused before anything is written.
- `sample --refiner` of a t2i run applied a refiner of another image side silently (the
  class-conditional path refused it): now refused before anything is written, naming both sides.

A real toy stack (tests/support/caches.py ``t2i_stack``) and refiners in the `refine train`
contract (tests/support/stack.py ``save_refiner_run``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.stack import save_refiner_run

from repackctl.errors import ConfigError, DataError

CPU = ["--device", "cpu"]
PROMPTS = ["--prompt", "a red star", "--prompt", "a blue ring"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--grid", "0", *PROMPTS, *CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-refiner") / "w")
    save_refiner_run(str(work / "runs"), "refine-32", 32)  # the samples' side: 32 px
    save_refiner_run(str(work / "runs"), "refine-64", 64)  # another side
    return work


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _npz(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "samples.npz", allow_pickle=False) as z:
        return z["arr_0"], z["arr_1"]


def test_refine_apply_refines_a_t2i_folder_as_sample_refiner_does(work, tmp_path):
    src, direct = tmp_path / "plain", tmp_path / "direct"
    cli_ok(*SAMPLE, "--out", str(src))
    cli_ok(*SAMPLE, "--refiner", "refine-32", "--out", str(direct))
    cli_ok("refine", "apply", str(src), "--refiner", "refine-32", *CPU)
    out = tmp_path / "plain--refine-32"
    card = json.loads((out / "protocol.json").read_text())
    assert card["refined_from"] == str(src) and card["refiner"]["sha256"]
    images, ids = _npz(out)
    src_images, src_ids = _npz(src)
    assert ids.tolist() == src_ids.tolist() == card["prompt_ids"] == [0, 1, 0, 1]
    assert not np.array_equal(images, src_images)  # refined
    assert np.array_equal(images, _npz(direct)[0])  # = `sample --refiner`, byte for byte


def test_refine_apply_refuses_a_t2i_folder_without_latents_before_writing(work, tmp_path):
    src = tmp_path / "plain"
    cli_ok(*SAMPLE, "--out", str(src))
    shutil.move(src / "latents.npy", tmp_path / "latents.npy")
    out = cli_refused(DataError.exit_code, "refine", "apply", str(src), "--refiner", "refine-32")
    assert "text-to-image" in out and "latents.npy" in out
    assert not (tmp_path / "plain--refine-32").exists()  # nothing written


def test_t2i_sample_refuses_a_refiner_of_another_image_side(work, tmp_path):
    out = cli_refused(
        ConfigError.exit_code, *SAMPLE, "--refiner", "refine-64", "--out", str(tmp_path / "s")
    )
    assert "32x32" in out and "64x64" in out
    assert not (tmp_path / "s").exists()  # refused before anything is written
