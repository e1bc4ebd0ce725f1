"""``curves.png`` is drawn in the cleanup of every training (``Trainer.fit``'s ``finally``), so a
failure to draw replaced the command's own error: `refine train --lr 1e308` ended with a
Matplotlib traceback (``ValueError: arange: cannot compute length``) instead of its
``TrainingError``, and `pack train --lr 1e308` printed raw ``RuntimeWarning: overflow`` lines
(audit C, finding 3). Values that cannot be drawn (non-finite, beyond ±``PLOT_MAX``) are left
out, and a drawing that fails anyway is a ``Warning:`` line, never an exception.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from support import train_toy_script as toy

from repackctl.errors import TrainingError
from repackctl.train import train
from repackctl.train.logging import CURVES, METRICS, plot_curves


def _metrics(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_values_matplotlib_cannot_draw_are_left_out_without_warnings(tmp_path):
    rows = [
        {"step": 1, "loss/model": 0.5, "lr": 1e308},
        {"step": 2, "loss/model": float("nan"), "lr": 1e308},
        {"step": 3, "loss/model": 1e300, "loss/disc": float("inf"), "lr": 1e-4},
    ]
    _metrics(tmp_path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plot_curves(tmp_path) == tmp_path / CURVES
    assert [str(w.message) for w in caught] == []
    assert (tmp_path / CURVES).is_file()


def test_a_drawing_that_fails_is_a_warning_not_an_exception(tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas today")

    monkeypatch.setattr(Figure, "savefig", broken)
    _metrics(tmp_path, [{"step": 1, "loss/model": 0.5, "lr": 1e-4}])
    assert plot_curves(tmp_path) is None
    err = capsys.readouterr().err
    assert "Warning: could not draw" in err and "no canvas today" in err, err
    assert not (tmp_path / CURVES).exists() and not (tmp_path / f".tmp-{CURVES}").exists()


def test_a_diverging_run_ends_with_its_own_error_and_its_curves(tmp_path):
    run = tmp_path / "run"
    base = dict(steps=2, global_batch=8, ckpt_every=2, log_every=1, block=4, buffer_blocks=2)
    config = toy.make_config(str(run), **{**base, "cpu": True, "lr": 1e308})
    with pytest.raises(TrainingError, match="saved no checkpoint"):
        train(toy.ToyTask(), config)
    assert (run / CURVES).is_file()
