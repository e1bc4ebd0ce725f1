"""`--kernels triton` in a real model: the same forward and gradients as eager (interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from repackctl import kernels

CHILD = textwrap.dedent(
    """
    import torch
    from repackctl import kernels
    from repackctl.models.repa import repa_loss
    from repackctl.models.variants import tiny
    from repackctl.transport.loss import velocity_loss

    torch.manual_seed(0)
    model = tiny(in_channels=4, input_size=4, num_classes=3)
    assert model.config.norm == 'rmsnorm' and model.config.mlp == 'swiglu' and model.config.rope
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # leave adaLN-Zero so every op matters
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([0.3, 0.8]), torch.tensor([0, 2])
    target, tokens = torch.randn(2, 4, 4, 4), torch.randn(2, 16, 4)
    out = {}
    for name in ("eager", "triton"):
        kernels.select(name)
        model.zero_grad()
        v = model(x, t, y)
        loss = velocity_loss(v, target, cos_weight=1.0).mean
        loss = loss + repa_loss(v.flatten(2).transpose(1, 2), tokens)
        loss.backward()
        out[name] = (v.detach(), [p.grad.clone() for p in model.parameters()])
    (ve, ge), (vt, gt) = out["eager"], out["triton"]
    torch.testing.assert_close(vt, ve, rtol=1e-4, atol=1e-5)
    for a, b in zip(gt, ge):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    print("SAME")
    """
)


@pytest.mark.slow
def test_selecting_triton_changes_nothing_but_the_kernels() -> None:
    if not kernels.available():
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "SAME" in done.stdout, done.stderr[-3000:]


def test_eager_is_the_default_and_unknown_backends_are_refused() -> None:
    assert kernels.selected() == "eager"  # conftest restores the default after every test
    with pytest.raises(Exception, match="unknown kernel backend"):
        kernels.select("cuda-magic")
