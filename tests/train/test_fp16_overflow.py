"""An fp16 GradScaler overflow is the scaler probing its scale, not divergence: the update is
skipped and the scale halved, but the step neither counts towards the non-finite stop nor skips
the next checkpoint.

They were counted as non-finite steps. The scaler starts at a scale of 2¹⁶ and doubles it every
2000 good steps, so an fp16 run overflows now and then by design: each overflow since a save
point skipped the checkpoint (a long fp16 run kept almost none), and the first steps' run of
overflows could stop the run.

fp16 training needs CUDA; the toy task (its loss × 2⁸) trains on the CPU with a real
``torch.amp.GradScaler`` whose first scale (2¹²⁷) makes the first scaled gradients overflow for
certain, as fp16's do, until it has backed off. A real divergence (a NaN loss) still counts.
"""

from __future__ import annotations

import torch
from support.train_toy_script import ToyTask, make_config

from repackctl.train import StepOutput
from repackctl.train.trainer import Trainer


class LoudToy(ToyTask):
    """The toy regression with its loss × 2⁸: gradients large enough to overflow at 2¹²⁷."""

    def training_step(self, modules, batch, step):
        out = super().training_step(modules, batch, step)
        return StepOutput({k: v * 256.0 for k, v in out.losses.items()}, out.logs)


def _trainer(tmp_path, task: ToyTask, **kw) -> Trainer:
    config = make_config(
        str(tmp_path / "run"), steps=30, global_batch=8, lr=1e-2, ckpt_every=10, keep_last=5,
        log_every=5, ema_decay=0.9, cpu=True, max_nonfinite_steps=3, **kw,
    )  # fmt: skip
    trainer = Trainer(task, config)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    return trainer


def test_scaler_overflows_skip_updates_but_neither_checkpoints_nor_the_run(tmp_path):
    trainer = _trainer(tmp_path, LoudToy())
    result = trainer.fit()
    assert trainer.scaler.get_scale() <= 2.0**124  # it overflowed at least 3 times, backing off
    assert result.step == 30 and result.bad_steps == 0
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert steps == ["step-0000010", "step-0000020", "step-0000030"]  # none skipped


def test_a_nan_loss_still_counts_with_the_scaler_on(tmp_path):
    trainer = _trainer(tmp_path, LoudToy(nan_steps=frozenset({22})))
    result = trainer.fit()
    assert result.bad_steps == 1
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert steps == ["step-0000010", "step-0000020"]  # the window with the NaN is not saved
