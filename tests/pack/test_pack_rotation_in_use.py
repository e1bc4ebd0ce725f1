"""Checkpoint rotation keeps the checkpoints in use and rotates the others (audit s29, G3).

A resumed `pack train` whose checkpoints another run decodes with (a DiT trained on latents
encoded with one of them) set ``keep_last`` to 0: every checkpoint of the run was kept, however
many the run wrote, and the run recorded ``keep_last 0``. Rotation now takes the step folders
in use (``protect``): they are never deleted and take no ``--keep-last`` slot, the others
rotate as usual, and the log names those kept because in use. The engine asks the task at each
checkpoint (a DiT may start on a checkpoint the run wrote while it trains).

Real training runs: the engine on the toy task, and `pack train` through the CLI on the shared
stack (a real pack run, real DiT checkpoints decoding with its step folders).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import one_torch_thread
from support import train_toy_script as toy
from support.cli import cli_ok
from support.stack import build_stack, make_dit_run

from repackctl.pack.load import load_pack
from repackctl.progress import log_progress
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.loop import train


class _UsedToy(toy.ToyTask):
    """The toy task whose step folders 4 and 10 are decoded with by two other runs, from the
    moment each exists (as a DiT started on a checkpoint while the run trains)."""

    USED = {"step-0000004": ["dit-a"], "step-0000010": ["dit-b", "dit-c"]}

    def checkpoints_in_use(self, run_dir: Path) -> dict[str, list[str]]:
        root = ckpt_io.checkpoints_dir(run_dir)
        return {name: runs for name, runs in self.USED.items() if (root / name).is_dir()}


def _steps(run: Path) -> list[int]:
    return [int(p.name[5:]) for p in ckpt_io.list_checkpoints(run)]


def test_the_engine_keeps_the_checkpoints_in_use_and_rotates_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = toy.parse([str(run), "--steps", "20", "--ckpt-every", "2", "--keep-last", "2"])
    lines: list[str] = []
    with one_torch_thread():
        train(_UsedToy(), toy.config_from_args(args), log_progress(lines.append))
    # 10 checkpoints written: the two in use stay, the rest rotate to the newest 2
    assert _steps(run) == [4, 10, 18, 20]  # HEAD: [18, 20], the decoders deleted
    kept = [line for line in lines if "other runs or cached latents decode with them" in line]
    assert len(kept) == 2, lines  # each named once, when rotation first kept it for that
    assert "step-0000004 by dit-a" in kept[0] and "newest 2" in kept[0], kept
    assert "step-0000010 by dit-b, dit-c" in kept[1], kept
    # the run records the keep_last it was given, not 0
    assert json.loads((run / "config.json").read_text())["keep_last"] == 2


def test_a_resumed_pack_train_rotates_beside_two_checkpoints_in_use(tmp_path: Path) -> None:
    paths = build_stack(tmp_path)  # pack-tiny step 2, and dit-tiny decoding with it
    runs = Path(paths["runs"])
    where = ["--cache", paths["cache"], "--runs", paths["runs"], "--device", "cpu"]
    # the sizes build_stack gave the run (a library call: the run stored no settings)
    where += ["-c", "4", "--ch", "8", "--disc-channels", "8", "--batch-size", "4"]
    flags = ["--ckpt-every", "2", "--keep-last", "1", "--image-every", "0"]
    cli_ok("pack", "train", "--name", "pack-tiny", "--steps", "4", *flags, *where)
    make_dit_run(paths["runs"], "dit-b", seed=1)  # decodes with the newest: step-0000004
    ckpts = runs / "pack-tiny" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]

    out = cli_ok("pack", "train", "--name", "pack-tiny", "--steps", "10", *flags, *where)
    # 6 and 8 rotated away as --keep-last 1 says (HEAD kept every one: keep_last → 0)
    assert _steps(runs / "pack-tiny") == [2, 4, 10]
    said = "since other runs or cached latents decode with them: step-0000002 by dit-tiny; step-0000004 by dit-b"
    assert said in out, out
    assert said in " ".join((runs / "pack-tiny" / "log.txt").read_text().split())
    state = ckpt_io.read_state(ckpts / "step-0000010")
    assert state["config"]["keep_last"] == 1
    # both DiTs' decoders still load, with the weights each was trained against
    for dit in ("dit-tiny", "dit-b"):
        pack = ckpt_io.read_state(ckpt_io.list_checkpoints(runs / dit)[-1])["extra"]["pack"]
        assert load_pack(pack["checkpoint"]).pack_id == pack["pack_id"]
