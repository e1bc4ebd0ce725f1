"""`import official` finished from another folder, or with the files named otherwise.

The runs recorded ``--stage1`` / ``--refiner`` as typed, and the placed run was compared with
what the rerun converted by that record too: ``--stage1 s1.ckpt`` first, then the same file as
``/abs/s1.ckpt`` (or ``../a/s1.ckpt`` from another folder) was refused as "already exists
(imported from other files or settings)", although nothing differed, and a killed import could
not be finished from another working folder. Now the weights' sha256 and the recorded settings
decide (the run records the file's absolute path), and a real difference is named as such.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import subprocess_env
from support.official import official_refiner, official_stage1
from support.snapshot import snapshot

from repackctl.crash import CRASH_ENV
from repackctl.run_files import read_json_dict


def _import(
    tmp_path: Path, cwd: Path, s1: str, *more: str, size: int = 32, **env: str
) -> subprocess.CompletedProcess:
    args = ["import", "official", "--stage1", s1, *more, "--out", "off"]
    cmd = [sys.executable, "-m", "repackctl", *args, "--image-size", str(size)]
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=subprocess_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _files(tmp_path: Path) -> Path:
    a = tmp_path / "a"
    a.mkdir()
    torch.manual_seed(0)
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, a / "s1.ckpt")
    torch.save({"state_dict": official_refiner()}, a / "s3.ckpt")
    (tmp_path / "b").mkdir()
    return a


def test_a_killed_import_is_finished_from_another_folder(tmp_path):
    a = _files(tmp_path)
    runs = tmp_path / "runs"
    killed = _import(
        tmp_path, a, "s1.ckpt", "--refiner", "s3.ckpt", **{CRASH_ENV: "import-placed-off-pack"}
    )
    assert killed.returncode == 137, killed.stderr
    assert (runs / "off-pack").is_dir() and not (runs / "off-refine").exists()
    pack = snapshot(runs / "off-pack")

    # the same files, named from another working folder: the import is finished
    rerun = _import(tmp_path, tmp_path / "b", "../a/s1.ckpt", "--refiner", str(a / "s3.ckpt"))
    said = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, said
    assert "kept" in rerun.stdout and "off-pack" in rerun.stdout, said
    assert snapshot(runs / "off-pack") == pack  # kept as the killed import placed it
    assert (runs / "off-refine" / "checkpoints").is_dir()
    # the refiner run records its file by its absolute path, whatever was typed
    (step,) = (runs / "off-refine" / "checkpoints").glob("step-*")
    recorded = read_json_dict(step / "state.json")["extra"]["imported_from"]["file"]
    assert recorded == str((a / "s3.ckpt").resolve())

    # run again, finished, with an absolute path: nothing written, both kept
    both = {"pack": pack, "refine": snapshot(runs / "off-refine")}
    again = _import(tmp_path, a, str(a / "s1.ckpt"), "--refiner", "s3.ckpt")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "off-pack, off-refine" in " ".join(again.stdout.split()), again.stdout
    assert {"pack": snapshot(runs / "off-pack"), "refine": snapshot(runs / "off-refine")} == both


def test_a_real_difference_is_named(tmp_path):
    a = _files(tmp_path)
    runs = tmp_path / "runs"
    assert _import(tmp_path, a, "s1.ckpt").returncode == 0
    pack = snapshot(runs / "off-pack")

    # the same file at another --image-size: other settings, not other files
    other = _import(tmp_path, tmp_path / "b", str(a / "s1.ckpt"), size=64)
    said = " ".join((other.stdout + other.stderr).split())
    assert other.returncode != 0 and "Traceback" not in said, said
    assert "off-pack already exists" in said and "other settings" in said, said
    assert "autoencoder_config" in said and "other files" not in said, said
    assert "Hint: pick another --out" in said, said
    assert snapshot(runs / "off-pack") == pack
