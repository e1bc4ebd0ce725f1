"""`train t2i` under two processes: DDP without the search for unused parameters.

The built-in MMDiT, as `train t2i` builds it (null caption fixed to the empty caption's
features, the last block's text stream without output layers), uses every parameter in each
training forward. DDP was nevertheless built with ``find_unused_parameters=True``: an extra
traversal of the autograd graph on every step, and PyTorch's warning from every process.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import subprocess_env
from support.caches import shared_t2i_stack
from support.launch import start_two

from repackctl.models.mmdit import MMDiT, MMDiTConfig
from repackctl.train import latest_checkpoint, load_weights, read_state


def test_two_processes_train_t2i_without_searching_for_unused_parameters(
    tmp_path_factory, tmp_path: Path
) -> None:
    work = shared_t2i_stack(tmp_path_factory, tmp_path / "w")
    env = subprocess_env(work)  # its cache/ and runs/
    args = ["-m", "repackctl", "train", "t2i", "--name", "tp", "-b", "8", "--steps", "2"]
    args += ["--ckpt-every", "2", "--log-every", "1", "--image-every", "0", "--device", "cpu"]
    code, out, err = start_two(args, env).wait(240)
    assert code == 0, err[-3000:]
    assert "find_unused_parameters" not in err, err[-3000:]
    ckpt = latest_checkpoint(work / "runs" / "tp")
    assert ckpt.name == "step-0000002" and read_state(ckpt)["world_size"] == 2
    assert load_weights(ckpt, "model")  # both processes reached the checkpoint together


def test_only_a_learned_null_caption_can_leave_a_parameter_out() -> None:
    small = {"input_size": 4, "in_channels": 4, "patch_size": 2, "text_dim": 8, "depth": 2}
    small |= {"hidden_size": 32, "num_heads": 2, "null_length": 2}
    assert MMDiT(MMDiTConfig(**small, null_caption="fixed")).uses_every_parameter()
    assert MMDiT(MMDiTConfig(**small, null_caption="learned")).uses_every_parameter()
    # never dropped: the learned null caption is in no forward
    off = MMDiT(MMDiTConfig(**small, null_caption="learned", caption_dropout=0.0))
    assert not off.uses_every_parameter()
    # dropped, but without the pooled condition its pooled part is in no forward
    model = MMDiT(MMDiTConfig(**small, null_caption="learned", pooled_condition=False))
    assert not model.uses_every_parameter()
    # and what the rule says holds for a forward that drops one caption of two
    model = MMDiT(MMDiTConfig(**small, null_caption="learned")).train()
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    tokens, mask, pooled = (
        torch.randn(2, 3, 8),
        torch.ones(2, 3, dtype=torch.bool),
        torch.randn(2, 8),
    )
    out = model(x, t, tokens, mask, pooled, drop_mask=torch.tensor([True, False]))
    out = out[0] if isinstance(out, tuple) else out
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
