"""A resumed training deletes only the temporaries its checkpoint writer names (a killed save,
re-save or pruning: ``.tmp-step-…``, ``.tmp-old-step-…``, ``.tmp-pruned-step-…``). Any other
``.tmp-*`` path in ``checkpoints/`` is the user's, as `runs rm` says when it refuses: the audit
found a resume deleting a user's ``.tmp-backup`` folder and ``.tmp-mine.txt`` without a word."""

from __future__ import annotations

from support import train_toy_script as toy

from repackctl.progress import null_progress
from repackctl.train import train


def _config(run, steps: int):
    return toy.make_config(str(run), steps=steps, global_batch=8, ckpt_every=2, log_every=1,
                           block=4, buffer_blocks=2, cpu=True, lr=1e-2)  # fmt: skip


def test_resume_keeps_the_users_tmp_paths_and_removes_a_killed_writers(tmp_path):
    run = tmp_path / "run"
    train(toy.ToyTask(), _config(run, 2), null_progress)
    ckpts = run / "checkpoints"
    (ckpts / ".tmp-backup").mkdir()
    (ckpts / ".tmp-backup" / "notes.txt").write_text("my copy")
    (ckpts / ".tmp-mine.txt").write_text("keep")
    (ckpts / ".tmp-step-0000002-backup").mkdir()  # not the writer's pid form
    killed = [ckpts / ".tmp-step-0000004-4242", ckpts / ".tmp-pruned-step-0000002-4242"]
    for folder in killed:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"cut short")
    train(toy.ToyTask(), _config(run, 4), null_progress)
    assert (ckpts / ".tmp-backup" / "notes.txt").read_text() == "my copy"
    assert (ckpts / ".tmp-mine.txt").read_text() == "keep"
    assert (ckpts / ".tmp-step-0000002-backup").is_dir()
    assert not any(folder.exists() for folder in killed)
    assert (ckpts / "step-0000004" / "state.json").is_file()
