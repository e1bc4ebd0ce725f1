"""``EagerAdamW`` is ``torch.optim.AdamW`` bit for bit, and a training process that uses it
does not import ``torch._dynamo`` (about 3 s of CPU a process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from repackctl.eager_adamw import EagerAdamW

ROOT = Path(__file__).resolve().parents[2]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def _train(opt_class: type, fused: bool | None, steps: int, state: dict | None = None):
    model = _model(0)
    opt = opt_class(model.parameters(), lr=3e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("fused", [True, None])
def test_the_same_weights_state_and_resume_as_torchs_adamw(fused):
    ours, ours_opt = _train(EagerAdamW, fused, 7)
    theirs, theirs_opt = _train(torch.optim.AdamW, fused, 7)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    mine, other = ours_opt.state_dict(), theirs_opt.state_dict()
    assert mine["param_groups"] == other["param_groups"]
    for k, v in other["state"].items():
        assert mine["state"][k].keys() == v.keys()
        assert all(torch.equal(mine["state"][k][n], v[n]) for n in v)
    # a checkpoint of torch's optimizer resumes in ours, and the other way round
    ckpt = {"model": theirs.state_dict(), "opt": theirs_opt.state_dict()}
    resumed, _ = _train(EagerAdamW, fused, 3, ckpt)
    back = {"model": ours.state_dict(), "opt": ours_opt.state_dict()}
    straight, _ = _train(torch.optim.AdamW, fused, 3, back)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_optimizer_step_does_not_import_dynamo(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import torch
        from repackctl.eager_adamw import EagerAdamW
        model = torch.nn.Linear(4, 2)
        opt = EagerAdamW(model.parameters(), lr=1e-3, fused=True)
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        opt.load_state_dict(opt.state_dict())
        print("dynamo" if "torch._dynamo" in sys.modules else "eager")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "eager", out.stderr
