"""A refused resume names every breaking change at once, and says where each was given: a
variable's hint said "drop the flag", and a second conflict showed only as "(and 1 more)", to
be refused again once the first was allowed."""

from __future__ import annotations

import pytest

from repackctl.errors import ResumeConflict
from repackctl.settings import resolve_settings
from repackctl.settings.resume import reconcile

BASE = {"dit.steps": 2, "dit.name": "d", "dit.lr": 1e-3, "dit.schedule": "constant"}


def _record(flags: dict, environ: dict | None = None) -> dict:
    return resolve_settings(None, flags, environ=environ or {}).to_dict()


def test_every_conflict_is_named_with_its_allow_change():
    started = _record(BASE)
    now = _record(BASE | {"dit.steps": 6, "dit.schedule": "cosine", "dit.lr": 2e-3})
    with pytest.raises(ResumeConflict) as e:
        reconcile(started, now, "dit", [])
    assert "dit.lr: 0.001 → 0.002" in e.value.message
    assert "dit.schedule: 'constant' → 'cosine'" in e.value.message
    assert "dit.steps: 2 → 6" in e.value.message  # a cosine schedule spans all steps
    hint = e.value.hint
    for name in ("lr", "schedule", "steps"):
        assert f"--allow-change {name}" in hint
    assert "drop the flag" in hint
    rec = reconcile(started, now, "dit", ["lr", "schedule", "steps"])  # what the hint says
    assert rec.values["dit"]["lr"] == 2e-3


def test_a_value_from_the_environment_is_named_as_a_variable():
    started = _record(BASE)
    flags = {k: v for k, v in BASE.items() if k != "dit.lr"}  # a flag would win over it
    now = _record(flags, {"REPACKCTL_DIT__LR": "0.002"})
    with pytest.raises(ResumeConflict) as e:
        reconcile(started, now, "dit", [])
    assert "unset REPACKCTL_DIT__LR" in e.value.hint and "drop the flag" not in e.value.hint
