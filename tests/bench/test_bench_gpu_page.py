"""The GPU check's page (``benchmarks/results/gpu.md``, what is committed and read) names the
machine: its title read a ``device_name`` the environment never holds, so every page was titled
``GPU check — cuda``, with no GPU model, torch, CUDA or driver versions anywhere on it."""

from __future__ import annotations

import torch

from repackctl.bench import gpu_check
from repackctl.bench.common import env_info


def _doc(env: dict) -> dict:
    """A check's document with no figures, around the environment ``env``."""
    none = {"rows": [], "params": {}}
    return {"model": "tiny", "batch": 4, "size": "tiny", "peak_tflops": {}, "train": [],
            "sample": none, "extract": none, "environment": env}  # fmt: skip


def test_the_page_names_the_gpu_and_the_versions_it_ran_on(tmp_path):
    env = env_info(torch.device("cpu"))  # what a GPU run records on top of this:
    env |= {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.1,
            "cudnn": 91002}  # fmt: skip
    page = gpu_check.markdown(_doc(env))
    title, _, machine = page.splitlines()[:3]
    assert title == "# GPU check — NVIDIA H100 80GB HBM3"
    for value in (env["torch"], env["cuda"], "91002", "79.1", env["cpu"]):
        assert str(value) in machine, machine
    # still a page the check recognises as its own (the next run replaces it)
    (tmp_path / "gpu.md").write_text(page)
    gpu_check.check_outputs(str(tmp_path / "gpu.md"))


def test_a_cpu_self_check_says_so_and_names_the_cpu():
    env = env_info(torch.device("cpu"))
    title = gpu_check.markdown(_doc(env)).splitlines()[0]
    assert env["cpu"] in title and "no GPU figures" in title, title
