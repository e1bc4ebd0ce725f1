"""An allowed preset change on resume must not change only the preset's name.

A resumed run keeps every value its preset filled in (``settings.resume.KEPT``), so
`pack train --preset paper --allow-change all` on a `small` run went on with small's lr, batch,
decoder and GAN schedule, recorded and summarised as `paper` (with paper's TF32 choice). Such a
change is refused, naming the values that would stay; one whose old preset filled nothing
(`train dit`'s `small`) still brings the new preset's values.

A real patchpix cache and real pack runs through the CLI; settings records from the real
settings layer for the DiT.
"""

from __future__ import annotations

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.errors import ResumeConflict
from repackctl.settings import resolve_settings
from repackctl.settings.resume import reconcile
from repackctl.train.checkpoint import list_checkpoints, read_state

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    *("--encoder", "patchpix", "--resolution", "32", "-c", "4", "--ch", "8"),
    *("--batch-size", "8", "--log-every", "1", "--image-every", "0", "--ckpt-every", "2"),
    *("--device", "cpu", "--name", "pk"),
]

base_cache, cache = patchpix_fixtures("preset-change-cache", 16)


def test_a_preset_change_that_keeps_the_old_presets_values_is_refused(cache, tmp_path):
    cli_ok("pack", "train", *TINY, "--preset", "small", "--steps", "2")
    run = tmp_path / "runs" / "pk"
    config = (run / "config.json").read_bytes()
    out = cli_refused(
        ResumeConflict.exit_code,
        *("pack", "train", *TINY, "--preset", "paper", "--allow-change", "all", "--steps", "4"),
    )
    assert "pack.preset: 'small' → 'paper'" in out, out
    assert "recorded as paper" in out and "--allow-change" in out, out
    # nothing trained or rewritten: the run is as it was
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]
    assert (run / "config.json").read_bytes() == config
    plan = read_state(list_checkpoints(run)[-1])["extra"]["plan"]
    assert plan["preset"] == "small" and plan["lr"] == 0.002
    # the same run resumes as started
    cli_ok("pack", "train", *TINY, "--steps", "4")
    assert read_state(list_checkpoints(run)[-1])["step"] == 4


def _record(**flags: object) -> dict:
    return resolve_settings(None, {"device": "cpu", **flags}, environ={}).to_dict()


def test_dit_preset_change_refused_only_where_the_old_preset_filled_values():
    # paper → repa: paper's lr, batch, schedule and EMA would stay under the name repa
    started = _record(**{"dit.preset": "paper", "dit.steps": 2, "dit.name": "d"})
    now = _record(**{"dit.preset": "repa", "dit.steps": 4, "dit.name": "d"})
    with pytest.raises(ResumeConflict, match="dit.preset") as e:
        reconcile(started, now, "dit", ["all"])
    assert "recorded as repa" in e.value.message and "beta2 0.95 (repa: 0.999)" in e.value.message
    # small (which fills nothing) → paper: the change is allowed and paper's values apply (the
    # run's network and REPA given: paper's XL size and REPA off cannot change on resume)
    started = _record(**{"dit.steps": 2, "dit.name": "d"})
    keep = {"dit.size": "tiny", "dit.repa_weight": 0.5}
    now = _record(**{"dit.preset": "paper", "dit.steps": 4, "dit.name": "d", **keep})
    rec = reconcile(started, now, "dit", ["preset"])
    assert ("dit.preset", "small", "paper") in rec.allowed
    assert "lr" not in rec.values["dit"]  # not kept: the paper preset fills it again
    assert "dit.schedule: 'constant' → 'step' (preset paper)" in rec.lines()
