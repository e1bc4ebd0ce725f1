"""A text-to-image samples folder with a damaged latents.npy (s38 audit Q, finding 2).

Both hints (`refine apply`, `sample --out`) said to move latents.npy away so that `refine apply`
recomputes the latents from the DiT, which it never does for a t2i folder (it then refused
again). They now say that those latents cannot be recomputed and send the user to sample with
``--refiner RUN``; `sample --out`'s also says to move the file away to keep the images.
Each hint, followed, ends it.

A real toy stack (tests/support/caches.py ``t2i_stack``) and a refiner in the `refine train`
contract (tests/support/stack.py ``save_refiner_run``); real CLI calls and folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.stack import save_refiner_run

from repackctl.errors import DataError

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--grid", "0", *CPU]
REFINER = "refine-32"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s38-t2i") / "w")
    save_refiner_run(str(work / "runs"), REFINER, 32)  # the samples' side: 32 px
    return work


def test_t2i_damaged_latents_hints_send_to_sample_with_the_refiner(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(src))
    lat = src / "latents.npy"
    raw = bytearray(lat.read_bytes())
    raw[-1] ^= 0xFF
    lat.write_bytes(bytes(raw))

    out = cli_refused(DataError.exit_code, "refine", "apply", str(src), "--refiner", REFINER, *CPU)
    assert "cannot be recomputed" in out and "--refiner RUN" in out, out
    assert "recomputes the latents" not in out, out
    out = cli_refused(DataError.exit_code, *SAMPLE, "--out", str(src))
    assert "cannot be recomputed" in out and "move latents.npy out" in out, out

    lat.rename(tmp_path / "latents.moved")  # as `sample --out`'s hint says
    cli_ok(*SAMPLE, "--out", str(src))
    assert not lat.exists() and (src / "samples.npz").is_file()
    refined = tmp_path / f"r--{REFINER}"
    out = cli_ok(*SAMPLE, "--refiner", REFINER, "--out", str(refined))  # as both hints say
    assert "4 (4 now" in out, out
    assert sorted(p.name for p in refined.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
