"""A resumed run keeps what its preset filled in: ``--preset auto`` resolves by the machine
(``small`` on a CPU, ``paper`` where a GPU is visible), and a run started on a CPU and resumed
on a GPU machine switched to paper's lr, batch and EMA with only ``steps: 2 → 4`` printed.

No GPU is lent here: the machine's answer (``settings.gpu_available``) is set for the resume."""

from __future__ import annotations

import pytest

import repackctl.settings as settings_module
from repackctl.errors import ResumeConflict
from repackctl.settings import resolve_settings
from repackctl.settings.resume import reconcile

FLAGS = {"refine.steps": 2, "refine.name": "rf", "device": "auto"}


def _record(monkeypatch, gpu: bool, **flags) -> dict:
    monkeypatch.setattr(settings_module, "gpu_available", lambda: gpu)
    return resolve_settings(None, FLAGS | flags, environ={}).to_dict()


def test_a_run_started_on_a_cpu_keeps_its_preset_on_a_gpu_machine(monkeypatch):
    started = _record(monkeypatch, gpu=False)
    now = _record(monkeypatch, gpu=True, **{"refine.steps": 4})
    assert started["values"]["refine"]["preset"] == "small"
    assert now["values"]["refine"]["preset"] == "paper"  # the premise: auto differs here
    assert now["values"]["refine"]["batch_size"] != started["values"]["refine"]["batch_size"]
    rec = reconcile(started, now, "refine", [])
    for key in ("preset", "batch_size", "lr", "ema_decay", "base_channels"):
        assert rec.values["refine"][key] == started["values"]["refine"][key], key
        assert rec.sources[f"refine.{key}"] == "stored run config", key
    assert rec.changes == [("refine.steps", 2, 4)]


def test_a_preset_given_now_against_the_one_the_run_started_with_is_refused(monkeypatch):
    started = _record(monkeypatch, gpu=False)
    now = _record(monkeypatch, gpu=False, **{"refine.preset": "paper"})
    with pytest.raises(ResumeConflict, match="refine.preset"):
        reconcile(started, now, "refine", [])
