"""Pictures that explain: curves per loss scale, a grid at the end of any run, TensorBoard."""

from __future__ import annotations

import json

from support import train_toy_script as toy

from repackctl.train import trainer
from repackctl.train.logging import METRICS, plot_curves, scale_groups


def test_losses_of_different_scales_get_their_own_panels(tmp_path):
    records = [
        {"step": s, "loss/total": 100.0 / s, "loss/l1": 50.0 / s, "loss/kl": 1e-4 * s,
         "loss/gan": 0.5, "lr": 1e-4}
        for s in range(1, 9)
    ]  # fmt: skip
    groups = scale_groups(records, ["loss/gan", "loss/kl", "loss/l1", "loss/total"])
    assert ["loss/total", "loss/l1"] in groups and ["loss/kl"] in groups
    assert all(len(g) >= 1 for g in groups) and sum(len(g) for g in groups) == 4
    (tmp_path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_curves(tmp_path)
    assert out is not None and out.stat().st_size > 1000
    from PIL import Image

    with Image.open(out) as im:  # one panel per scale group plus the learning rate
        assert im.width >= 80 * 4 * (len(groups) + 1) * 0.9


def test_curves_are_drawn_at_the_end_and_at_most_once_a_minute_before(tmp_path, monkeypatch):
    """A checkpoint redraws ``curves.png`` only when the last drawing is CURVES_EVERY_S old."""
    drawn: list[int] = []
    real = trainer.plot_curves

    def counting(run_dir):
        drawn.append(len((tmp_path / "a" / METRICS).read_text().splitlines()))
        return real(run_dir)

    monkeypatch.setattr(trainer, "plot_curves", counting)
    argv = ["--steps", "6", "--ckpt-every", "2"]
    args = toy.parse([str(tmp_path / "a"), *argv])
    trainer.train(toy.task_from_args(args), toy.config_from_args(args))
    assert len(drawn) == 1 and (tmp_path / "a" / "curves.png").stat().st_size > 1000

    monkeypatch.setattr(trainer, "CURVES_EVERY_S", 0.0)  # every checkpoint is "a minute later"
    drawn.clear()
    args = toy.parse([str(tmp_path / "a"), *argv[:1], "10", *argv[2:]])  # resume to step 10
    trainer.train(toy.task_from_args(args), toy.config_from_args(args))
    assert len(drawn) == 2 and drawn[0] < drawn[1]  # steps 8 and 10, each with its new rows
