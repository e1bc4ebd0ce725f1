"""`runs ls` checks checkpoints fast (file names, recorded sizes, ``state.json``); `runs info`,
`runs rm` and loading also check every file's sha256 — one check behind all of them
(``train.checkpoint.verify_checkpoint``), so `runs` never disagrees with the loader.

Runs are written by the real checkpoint writer (``save_checkpoint``, tiny tensors) under tmp_path
and damaged on disk the way a killed copy or a bad disk would.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from support.ckpt_state import write_state
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import CheckpointError
from repackctl.train import checkpoint as ckpt_io

runner = CliRunner()
NEWEST = "step-0000002"


def _run(runs: Path, name: str = "r") -> Path:
    """A pack-stage run with good checkpoints at steps 1 and 2."""
    run = runs / name
    for step in (1, 2):
        sd = {"w": torch.full((256,), float(step))}
        optim = {"state": {"exp_avg": torch.zeros(256)}, "lr": 0.1}
        ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, optim, {"extra": {"stage": "pack"}})  # fmt: skip
    return run


def _invoke(args: list[str], code: int = 0, stdin: str | None = None) -> str:
    res = runner.invoke(app, args, input=stdin)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


def _ls(runs: Path) -> dict:
    (run,) = json.loads(_invoke(["runs", "ls", "--json", "--runs", str(runs)]))["runs"]
    return run


def _info(runs: Path) -> tuple[dict, dict[str, str | None]]:
    data = json.loads(_invoke(["runs", "info", "r", "--json", "--runs", str(runs)]))
    return data, {c["name"]: c["problem"] for c in data["checkpoints"]}


def _state_path(run: Path, name: str = NEWEST) -> Path:
    return run / "checkpoints" / name / "state.json"


def test_state_records_the_size_of_every_file(tmp_path):
    folder = _run(tmp_path / "runs") / "checkpoints" / NEWEST
    state = json.loads((folder / "state.json").read_text())
    assert set(state["sizes"]) == set(state["files"]) == {"model.safetensors", "ema.safetensors", "optim.pt"}  # fmt: skip
    assert all(state["sizes"][n] == (folder / n).stat().st_size for n in state["sizes"])


def test_flipped_bytes_pass_ls_and_are_reported_by_info_and_loading(tmp_path):
    runs = tmp_path / "runs"
    folder = _run(runs) / "checkpoints" / NEWEST
    ema = folder / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only a checksum sees it
    ema.write_bytes(bytes(data))

    ls = _ls(runs)  # fast: sizes only, and it says so
    assert (ls["step"], ls["checkpoints"], ls["checksums_verified"]) == (2, 2, False)
    assert ckpt_io.checkpoint_problem(folder, checksums=False) is None

    info, problems = _info(runs)
    assert problems == {"step-0000001": None, NEWEST: "corrupt (ema.safetensors)"}
    assert (info["step"], info["checksums_verified"]) == (1, True)
    text = _invoke(["runs", "info", "r", "--runs", str(runs)])
    assert "corrupt (ema.safetensors)" in text

    with pytest.raises(CheckpointError) as e:  # the loader refuses it with the same check
        ckpt_io.verify_checkpoint(folder)
    assert str(ema) in e.value.message and "sha256" in e.value.message


@pytest.mark.parametrize("damage", ["truncated", "grown"])
def test_a_file_of_another_size_is_caught_by_ls_info_and_loading(tmp_path, damage):
    runs = tmp_path / "runs"
    run = _run(runs)
    model = run / "checkpoints" / NEWEST / "model.safetensors"
    size = model.stat().st_size
    raw = model.read_bytes()
    model.write_bytes(raw[: size // 2] if damage == "truncated" else raw + b"\0" * 16)
    now = model.stat().st_size
    reason = f"corrupt (model.safetensors: {now} bytes, state.json records {size})"

    ls = _ls(runs)
    assert (ls["step"], ls["checkpoints"]) == (1, 1)
    assert _info(runs)[1] == {"step-0000001": None, NEWEST: reason}
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load_weights(model.parent, "model")
    assert str(model) in e.value.message and f"state.json records {size}" in e.value.message
    # sampling a run names the damaged file of its newest checkpoint; no silent fallback
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        ckpt_io.checkpoint_for_loading(run)


def test_a_checkpoint_without_recorded_sizes_is_still_hashed_by_info(tmp_path):
    runs = tmp_path / "runs"
    run = _run(runs)
    path = _state_path(run)
    state = json.loads(path.read_text())
    del state["sizes"]  # as written before sizes were recorded (and before its own sha256)
    write_state(path, state, sealed=False)
    optim = path.parent / "optim.pt"
    optim.write_bytes(optim.read_bytes()[:-8])
    assert (_ls(runs)["step"], _ls(runs)["checkpoints"]) == (2, 2)  # nothing to compare sizes to
    assert _info(runs)[1][NEWEST] == "corrupt (optim.pt)"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: (f / "optim.pt").unlink(), "optim.pt is missing"),
        (lambda f: _edit(f, good=False), "marked bad (good: false)"),
        (lambda f: _edit(f, sizes={"optim.pt": "big"}), "state.json is malformed: sizes.optim.pt"),
    ],
    ids=["missing", "marked-bad", "malformed-sizes"],
)
def test_ls_and_info_give_the_loaders_reason(tmp_path, damage, problem):
    runs = tmp_path / "runs"
    folder = _run(runs) / "checkpoints" / NEWEST
    damage(folder)
    assert (_ls(runs)["step"], _ls(runs)["checkpoints"]) == (1, 1)
    assert _info(runs)[1][NEWEST].startswith(problem)
    with pytest.raises(CheckpointError) as e:
        ckpt_io.verify_checkpoint(folder, checksums=False)
    assert "\n" not in e.value.message and str(folder) in e.value.message


def _edit(folder: Path, **fields: object) -> None:
    path = folder / "state.json"
    write_state(path, json.loads(path.read_text()) | fields)


def test_ls_says_where_checksums_are_verified(tmp_path):
    runs = tmp_path / "runs"
    _run(runs)
    out = _invoke(["runs", "ls", "--runs", str(runs)])
    assert "runs info RUN` also verifies their sha256 checksums" in out
    assert "r" in out.split() and "pack" in out.split()
    helptext = " ".join(_invoke(["runs", "ls", "--help"]).split())
    assert "checksums" in helptext and "runs info RUN" in helptext


def test_rm_still_verifies_checksums_before_asking(tmp_path):
    runs = tmp_path / "runs"
    run = _run(runs)
    ema = run / "checkpoints" / NEWEST / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0xFF
    ema.write_bytes(bytes(data))
    out = _invoke(["runs", "rm", "r", "--runs", str(runs)], code=1, stdin="n\n")
    # the corrupt one is not counted as complete, as `runs info` says, but named: it is deleted too
    assert "1 checkpoint and 1 incomplete, damaged or marked bad" in out
    assert ema.is_file()
    _invoke(["runs", "rm", "r", "--yes", "--runs", str(runs)])
    assert not run.exists()


def test_runs_uses_only_the_public_checkpoint_check():
    import repackctl.runs

    tree = ast.parse(Path(repackctl.runs.__file__).read_text())
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "repackctl.train.checkpoint"
        for alias in node.names
    ]
    assert names == ["checkpoint_problem"]
