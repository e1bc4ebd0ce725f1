"""`import official` killed between placing two runs: the rerun of the same command finishes it.

The runs are converted into a staging folder and renamed into place one after the other. A kill
after the first rename left ``off-pack`` placed and ``off-refine`` not, and the rerun was refused
("run … already exists") until the user removed ``off-pack`` by hand. Now the rerun converts
again, finds the placed run equal to what it converted, and places the rest; a run imported from
other files is still refused, before anything is placed.
"""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import subprocess_env
from support.official import official_refiner, official_stage1
from support.snapshot import snapshot

from repackctl.crash import CRASH_ENV


def _import(tmp_path, s1, s3, **env: str) -> subprocess.CompletedProcess:
    args = ["import", "official", "--stage1", str(s1), "--refiner", str(s3), "--out", "off"]
    cmd = [sys.executable, "-m", "repackctl", *args, "--image-size", "32"]
    return subprocess.run(
        cmd, env=subprocess_env(tmp_path, **env), capture_output=True, text=True, timeout=300
    )


def test_a_rerun_after_a_kill_between_the_renames_finishes_the_import(tmp_path):
    s1, s3, other = tmp_path / "s1.ckpt", tmp_path / "s3.ckpt", tmp_path / "other.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, s1)
    torch.save({"state_dict": official_refiner()}, s3)
    torch.manual_seed(1)
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, other)
    runs = tmp_path / "runs"

    killed = _import(tmp_path, s1, s3, **{CRASH_ENV: "import-placed-off-pack"})
    assert killed.returncode == 137, killed.stderr
    assert (runs / "off-pack").is_dir() and not (runs / "off-refine").exists()
    pack = snapshot(runs / "off-pack")

    # another stage-1 file does not match the placed run: refused, nothing placed
    refused = _import(tmp_path, other, s3)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    said = refused.stdout + refused.stderr
    assert "off-pack already exists" in said and "other files" in said, said
    assert not (runs / "off-refine").exists() and snapshot(runs / "off-pack") == pack

    rerun = _import(tmp_path, s1, s3)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert snapshot(runs / "off-pack") == pack  # kept as the killed import placed it
    assert (runs / "off-refine" / "checkpoints").is_dir()
    assert not list(runs.glob(".tmp-import-*"))  # no staging folder left behind
    # an uninterrupted import of the same files places the same refiner weights
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _import(fresh, s1, s3).returncode == 0

    def weights(run):  # state.json names the runs folder, which differs
        return {k: v for k, v in snapshot(run).items() if k.endswith(".safetensors")}

    assert weights(fresh / "runs" / "off-refine") == weights(runs / "off-refine")
    assert weights(runs / "off-refine")
