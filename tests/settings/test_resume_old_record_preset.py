"""An allowed preset change on a run older than a setting says and records that setting's change.

`train dit --preset paper --allow-change preset` on a run whose stored record predates ``tf32``
and ``cos_norm_floor`` (it trained with TF32 on and a floor of 0.01: ``dit.run.STARTED_WITHOUT``)
printed and recorded each value paper brings to the stored settings (``resume: dit.schedule:
'constant' → 'step' (preset paper)``), but took paper's ``tf32 False`` and ``cos_norm_floor
0.0`` without a word and left them out of ``config_history.jsonl``. They are said and recorded
like the others, compared with what the run trained with.
"""

from __future__ import annotations

import json

import pytest
from support.caches import shared_packed_cache
from support.ckpt_state import started_before
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")

DIT = ["train", "dit", "-b", "8", "--device", "cpu", "--image-every", "0", "--name", "d"]
# the run's network and REPA weight given: paper's XL size and REPA off cannot change on resume
PAPER = ["--preset", "paper", "--allow-change", "preset", "--size", "tiny", "--repa-weight", "0.5"]
UNSTORED = ["tf32", "cos_norm_floor"]


def test_a_preset_change_says_and_records_the_settings_the_old_record_lacks(
    tmp_path, tmp_path_factory
):
    shared_packed_cache(tmp_path_factory, tmp_path / "cache", 16)
    run = tmp_path / "runs" / "d"
    cli_ok(*DIT, "--steps", "1", "--repa-weight", "0.5")
    started_before(run, "dit", UNSTORED, [])  # as a version before those settings wrote it
    stored = json.loads((run / "config.json").read_text())["extra"]["settings"]["values"]["dit"]
    assert not set(UNSTORED) & set(stored)

    out = " ".join(cli_ok(*DIT, "--steps", "2", *PAPER).split())
    log = " ".join((run / "log.txt").read_text().split())
    for line in [
        "dit.schedule: 'constant' → 'step' (preset paper)",  # a stored value, said before too
        "dit.tf32: True → False (preset paper)",
        "dit.cos_norm_floor: 0.01 → 0.0 (preset paper)",
    ]:
        assert f"resume: {line}" in out, out
        assert f"resume: {line}" in log, log
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    changes = [c for h in history for c in h.get("changes", [])]
    assert ["dit.tf32", True, False] in changes, changes
    assert ["dit.cos_norm_floor", 0.01, 0.0] in changes, changes
    assert ["dit.preset", "small", "paper"] in changes, changes
    # the run goes on with paper's values, recorded as such
    values = json.loads((run / "config.json").read_text())["extra"]["settings"]["values"]["dit"]
    assert values["tf32"] is False and values["cos_norm_floor"] == 0.0, values
