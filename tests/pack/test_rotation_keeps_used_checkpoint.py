"""A resumed `pack train` keeps the checkpoints that other runs decode with.

A DiT trained on the latents of a pack checkpoint records that checkpoint as its decoder. Trained
on with `pack train` (more steps), the pack run's `--keep-last` rotation deleted it: the DiT
could no longer sample ("run … has no checkpoint 'step-…'") and the decoder's weights were gone
for good. Now a resumed run keeps the checkpoints other runs use beside its newest `--keep-last`
ones, and says so (test_pack_rotation_in_use: the other checkpoints rotate as usual).
"""

from __future__ import annotations

from pathlib import Path

from support.cli import cli_ok
from support.stack import build_stack

from repackctl.pack.load import load_pack
from repackctl.train.checkpoint import read_state


def test_rotation_keeps_the_checkpoint_a_dit_decodes_with(tmp_path: Path) -> None:
    paths = build_stack(tmp_path)  # pack-tiny step 2, and dit-tiny decoding with it
    dit = read_state(next((Path(paths["runs"]) / "dit-tiny" / "checkpoints").iterdir()))
    used = Path(dit["extra"]["pack"]["checkpoint"])
    assert used.name == "step-0000002" and used.is_dir()

    where = ["--cache", paths["cache"], "--runs", paths["runs"], "--device", "cpu"]
    # the sizes build_stack gave the run (a library call: the run stored no settings)
    where += ["-c", "4", "--ch", "8", "--disc-channels", "8", "--batch-size", "4"]
    flags = ["--steps", "6", "--ckpt-every", "2", "--keep-last", "1", "--image-every", "0"]
    out = cli_ok("pack", "train", "--name", "pack-tiny", *flags, *where)
    assert used.is_dir()  # HEAD deleted it
    assert "other runs or cached latents decode with them: step-0000002 by dit-tiny" in out, out
    # trained on; the others rotate by --keep-last 1 (step-0000004 is gone)
    assert sorted(p.name for p in used.parent.iterdir()) == ["step-0000002", "step-0000006"]
    # the DiT's decoder still loads, with the weights it was trained against
    assert load_pack(str(used)).pack_id == dit["extra"]["pack"]["pack_id"]

    # a pack run that no other run uses rotates as before
    cli_ok("runs", "rm", "dit-tiny", "--yes", "--runs", paths["runs"])
    cli_ok("pack", "train", "--name", "pack-tiny", *flags[:1], "8", *flags[2:], *where)
    assert sorted(p.name for p in used.parent.iterdir()) == ["step-0000008"]
