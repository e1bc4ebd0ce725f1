"""Text-to-image `sample` prints and records its run header (world size, device, precision and
where it came from, seed, version) as class-conditional `sample` does (``run_header``).

Before, a t2i samples folder's card recorded no ``run_header`` and nothing was printed, so
nothing said which device or precision source made its samples.

The toy t2i stack (tests/support/caches.py ``t2i_stack``).
"""

from __future__ import annotations

import json

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_t2i_sampling_prints_and_records_its_run_header(tmp_path_factory, tmp_path, monkeypatch):
    stack = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-header") / "w")
    use_stack(stack, tmp_path, monkeypatch)
    out = tmp_path / "t"
    args = ["sample", "-r", "tA", "-n", "4", "--steps", "2", "--grid", "0", "--device", "cpu"]
    args += ["--prompt", "a red star", "--prompt", "a blue ring", "--out", str(out)]
    output = cli_ok(*args, "--precision", "fp32", "--seed", "5")
    assert "world 1 · cpu · fp32 (flag) · seed 5 · repackctl" in output
    header = json.loads((out / "protocol.json").read_text())["run_header"]
    assert header["world_size"] == 1 and header["device"] == "cpu"
    assert (header["precision"], header["precision_source"], header["seed"]) == ("fp32", "flag", 5)
