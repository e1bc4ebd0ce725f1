"""FSDP shards each transformer block as its own unit, the MMDiT's included.

``shard_module`` looked for a ModuleList named ``blocks`` only, so the MMDiT's ``joint_blocks``
were sharded as part of the whole model: every process gathered all its weights at once in the
forward pass, and `train t2i --parallel fsdp` saved no memory. Checked in a real process with a
one-process gloo group (FSDP2 runs on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env
from support.launch import free_port, worker_env

SCRIPT = """
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from repackctl.models.mmdit import MMDiT, MMDiTConfig
from repackctl.train.sharding import shard_module

dist.init_process_group("gloo")
cfg = MMDiTConfig(in_channels=4, input_size=8, patch_size=1, depth=2, hidden_size=32,
                  num_heads=2, text_dim=16)
mmdit = shard_module(MMDiT(cfg))
units = [isinstance(b, FSDPModule) for b in mmdit.joint_blocks]
print("mmdit", units, isinstance(mmdit, FSDPModule))
dist.destroy_process_group()
"""


def test_each_joint_block_of_the_mmdit_is_its_own_fsdp_unit(tmp_path: Path) -> None:
    env = worker_env(subprocess_env(tmp_path), 0, 1, free_port())
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mmdit [True, True] True" in res.stdout, res.stdout + res.stderr
