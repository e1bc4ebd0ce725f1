"""`sample --refiner R` and `sample` then `refine apply --refiner R` write the same folder name.

- Forward order: `sample --refiner R` on the folder `refine apply` wrote was refused as one of
  "other settings", listing null values (the apply folder's settings file records other keys).
  It is now recognised as the same result (nothing made, nothing changed), as the reverse order
  is; one refined from other samples is refused naming what differs.
- `refine apply` on a folder without latents.npy recomputed the latents in the refiner's batches
  with the refined folder's thread count: ~1e-6 off the latents that made the images. They are
  now recomputed in the batches and with the CPU threads the samples folder records.

The shared toy stack (tests/support/stack.py) with a 32 px refiner; real CLI calls and folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from conftest import one_torch_thread
from support.cli import cli_ok, cli_refused
from support.stack import _images, _settings, refiner_env

from repackctl.errors import ConfigError
from repackctl.sample.refine import _Regenerator
from repackctl.sample.run import run_sample

REFINER = "refine-s28b"


env = refiner_env(REFINER)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sample_with_the_refiner_after_refine_apply_is_the_same_result(env):
    sample = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--device", "cpu"]
    cli_ok(*sample)
    (src,) = Path(env["samples"]).iterdir()
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, "--device", "cpu")
    refined = src.parent / f"{src.name}--{REFINER}"
    before = _snapshot(refined)

    out = cli_ok(*sample, "--refiner", REFINER)  # the same folder name: already there
    assert "4 (0 now, 4 already done)" in out, out
    assert _snapshot(refined) == before
    assert sorted(p.name for p in Path(env["samples"]).iterdir()) == [src.name, refined.name]

    # other samples (another seed) into that folder: refused by what differs, nothing changed
    out = cli_refused(
        ConfigError.exit_code, *sample, "--refiner", REFINER, "--seed", "9", "--out", str(refined)
    )
    assert "refine apply" in out and "(other seed)" in out and "null" not in out, out
    assert _snapshot(refined) == before


def test_refine_apply_recomputes_latents_as_the_samples_were_made(env, tmp_path):
    src = tmp_path / "s"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # recorded by the folder (cpu_threads)
    try:
        run_sample(_settings(env, run="dit-tiny", num=8, batch_size=8, steps=4, out=str(src)))
    finally:
        torch.set_num_threads(before)
    settings = json.loads((src / ".sample-settings.json").read_text())
    assert (settings["batch_size"], settings["cpu_threads"]) == (8, 2)
    stored = np.load(src / "latents.npy")
    protocol = json.loads((src / "protocol.json").read_text())
    with one_torch_thread():  # the refining call's count and batches (2, 3) are not the folder's
        regen = _Regenerator(src, protocol, env["runs"], torch.device("cpu"))
        for idx in ([0, 1], [2, 3, 4], [5, 6, 7]):
            assert np.array_equal(regen(idx).numpy(), stored[idx]), idx

    apply = ["refine", "apply", str(src), "--refiner", REFINER, "--device", "cpu"]
    refined = tmp_path / f"s--{REFINER}"
    with one_torch_thread():
        cli_ok(*apply, "--batch-size", "2")
    from_stored = _images(refined)
    shutil.move(refined, tmp_path / "kept")
    shutil.move(src / "latents.npy", tmp_path / "latents.npy")
    with one_torch_thread():
        assert "regenerated from the DiT" in cli_ok(*apply, "--batch-size", "2")
    assert np.array_equal(_images(refined), from_stored)
