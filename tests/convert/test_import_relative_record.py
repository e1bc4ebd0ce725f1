"""`import official` refusing a run placed by an older import that recorded a relative path.

Imports before commit 6dee648 recorded ``imported_from.file`` as typed (``s1.ckpt``), without the
folder they ran from. A later import of other files under the same ``--out`` is refused, naming
where the placed run came from: it said "imported from other files: s1.ckpt", which, run from
another folder, names the user's own ``s1.ckpt`` there (the very file being imported) as the
other file. The relative record is now named as such, its folder unknown.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import subprocess_env
from support.ckpt_state import write_state
from support.official import official_stage1
from support.snapshot import snapshot

from repackctl.run_files import read_json_dict


def _import(tmp_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = ["import", "official", "--stage1", "s1.ckpt", "--out", "off", "--image-size", "32"]
    return subprocess.run(
        [sys.executable, "-m", "repackctl", *args],
        cwd=cwd,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _stage1(folder: Path) -> None:
    folder.mkdir()
    sd = official_stage1(res=32, ch_mult=(1, 2, 2, 2))  # each call draws other weights
    torch.save({"state_dict": sd}, folder / "s1.ckpt")


def test_a_relative_record_is_not_named_as_this_folders_file(tmp_path):
    _stage1(tmp_path / "a")
    assert _import(tmp_path, tmp_path / "a").returncode == 0
    run = tmp_path / "runs" / "off-pack"
    (state_path,) = (run / "checkpoints").glob("step-*/state.json")
    state = read_json_dict(state_path)
    assert state["extra"]["imported_from"]["file"] == str(tmp_path / "a" / "s1.ckpt")
    state["extra"]["imported_from"]["file"] = "s1.ckpt"  # as imports before 6dee648 wrote it
    write_state(state_path, state)
    placed = snapshot(run)

    _stage1(tmp_path / "b")  # other weights, under the same name, in another folder
    refused = _import(tmp_path, tmp_path / "b")
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0 and "Traceback" not in said, said
    assert "off-pack already exists and holds another import" in said, said
    assert "its weights differ" in said, said
    assert (
        f"imported from other files: 's1.ckpt', relative to the folder an older import ran "
        f"from, which its {state_path.parent.name}/state.json does not record" in said
    ), said
    assert "Hint: pick another --out" in said, said
    assert snapshot(run) == placed
