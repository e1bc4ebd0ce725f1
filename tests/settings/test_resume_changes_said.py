"""Audit s37 B (findings 2, 3, 4, 6) of the settings layer's resume, on real settings records.

- ``--allow-change`` of a setting that shapes the network (``--size s --allow-change size``,
  ``--qk-norm --allow-change all``, ``--depth 3`` on a run whose depth its size chose, a preset
  that brings another network) passed the settings layer, and the stage built the network and
  failed with a raw ``load_state_dict`` dump: refused here, as without the allowance.
- An allowed preset change brought its values without a word: each is said and recorded.
- ``refine train --allow-change entry`` moved a refiner onto another entry (the held-out split).
- The refiner's EMA warning offered ``--ema-warmup``, which ``refine train`` lacks.
(The CLI side: tests/dit/test_preset_resume_changes.py.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from repackctl.errors import ResumeConflict
from repackctl.settings import resolve_settings
from repackctl.settings.checks import unreached_ema_decay
from repackctl.settings.resume import RESOLVED_SOURCE, reconcile

CANNOT = "cannot change on resume (--allow-change does not apply to it)"


def _record(**flags: object) -> dict:
    return resolve_settings(None, {"device": "cpu", **flags}, environ={}).to_dict()


def _dit(**flags: object) -> dict:
    return _record(**{"dit.name": "d", "dit.steps": 2, **flags})


@pytest.mark.parametrize(
    ("flags", "allow", "said"),
    [
        ({"dit.size": "s"}, ["size"], "dit.size: 'tiny' → 's'"),
        ({"dit.qk_norm": True}, ["all"], "dit.qk_norm: False → True"),
        ({"dit.arch": "sit"}, ["arch"], "dit.arch: 'lightningdit' → 'sit'"),
    ],
)
def test_an_allowed_change_of_the_network_is_refused_as_without_the_allowance(flags, allow, said):
    with pytest.raises(ResumeConflict) as refused:
        reconcile(_dit(), _dit(**flags), "dit", allow)
    assert said in refused.value.message and CANNOT in refused.value.message
    assert "--allow-change" not in refused.value.hint


def test_a_network_value_the_run_left_to_its_size_is_compared_with_what_it_built():
    built = {"dit.depth": 2, "dit.patch": 1}
    with pytest.raises(ResumeConflict) as refused:
        reconcile(_dit(), _dit(**{"dit.depth": 3}), "dit", ["all"], built)
    assert "dit.depth: 2 → 3" in refused.value.message and CANNOT in refused.value.message
    # the value it built may be given (an allowed None → 2, as before)
    rec = reconcile(_dit(), _dit(**{"dit.depth": 2}), "dit", ["depth"], built)
    assert ("dit.depth", None, 2) in rec.allowed


@pytest.mark.parametrize("section", ["dit", "t2i"])
def test_a_preset_that_brings_another_network_is_refused_naming_it(section):
    started = _record(**{f"{section}.name": "d", f"{section}.steps": 2})
    now = _record(**{f"{section}.name": "d", f"{section}.steps": 4, f"{section}.preset": "repa"})
    with pytest.raises(ResumeConflict) as refused:
        reconcile(started, now, section, ["preset"])
    message = refused.value.message
    assert f"{section}.preset: 'small' → 'repa', which brings" in message, message
    named = f"{section}.size" if section == "dit" else f"{section}.model"
    assert f"{named} {CANNOT}" in message, message
    assert "drop --preset to continue as started" in refused.value.hint


def test_an_allowed_preset_change_says_and_records_every_value_it_brings():
    keep = {"dit.size": "tiny", "dit.repa_weight": 0.5}
    now = _dit(**{"dit.preset": "paper", "dit.steps": 4, **keep})
    rec = reconcile(_dit(), now, "dit", ["preset"])
    lines = rec.lines()
    for brought in [
        "dit.latent_sampling: 'mean' → 'fixed' (preset paper)",
        "dit.schedule: 'constant' → 'step' (preset paper)",
        "dit.ema_warmup: True → False (preset paper)",
        "dit.cos_norm_floor: 0.01 → 0.0 (preset paper)",
        "dit.kernels: 'auto' → 'eager' (preset paper)",
        "dit.tf32: True → False (preset paper)",
    ]:
        assert brought in lines, lines
    assert ("dit.schedule", "constant", "step") in rec.history()
    assert ("dit.preset", "small", "paper") in rec.history()
    # without a preset change, a resume brings nothing
    assert reconcile(_dit(), _dit(**{"dit.steps": 4}), "dit", []).brought == []


def _refine(**flags: object) -> dict:
    return _record(**{"refine.name": "r", "refine.steps": 2, **flags})


def test_a_refiner_cannot_move_to_another_entry_even_when_allowed():
    started = _refine()
    started["values"]["refine"]["entry"] = "e--train--64px"  # resolved from its pack run
    started["sources"]["refine.entry"] = RESOLVED_SOURCE
    for allow in ([], ["entry"], ["all"]):
        with pytest.raises(ResumeConflict) as refused:
            reconcile(started, _refine(**{"refine.entry": "e--val--64px"}), "refine", allow)
        message = refused.value.message
        assert "refine.entry: 'e--train--64px' → 'e--val--64px'" in message, message
        assert f"refine.entry {CANNOT}" in message and "--allow-change" not in refused.value.hint
    # the entry it trains on given again is no change
    same = reconcile(started, _refine(**{"refine.entry": "e--train--64px"}), "refine", [])
    assert same.allowed == [] and same.changes == []


def test_the_refiner_ema_warning_offers_only_what_refine_train_has():
    values = SimpleNamespace(ema_decay=0.9)
    line = unreached_ema_decay(values, "refine", {"refine.ema_decay": "flag"}, 6, False)
    assert line is not None and "refine.ema_decay = 0.9 (from flag)" in line, line
    assert "--ema-warmup" not in line and "refine.ema_warmup" not in line, line
    assert "a lower --ema-decay, or --steps above 7" in line, line
    # train dit has the flag: still offered there
    dit = SimpleNamespace(ema_decay=0.9, ema_warmup=False)
    line = unreached_ema_decay(dit, "dit", {"dit.ema_decay": "flag"}, 6)
    assert line is not None and "--ema-warmup" in line, line
