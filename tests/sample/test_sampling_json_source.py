"""`sample` says which values came from the run's sampling.json.

A run's ``sampling.json`` (``train dit --preset paper/repa``, ``import official``) gives the
sampler settings no flag, variable or file gave. The summary printed ``sampler …, 4 steps`` with
no source, and ``--show-config`` printed ``sample.sampler = None # default``, wrong in value and
source: a run's recorded sampler (an SDE at cfg 1.8, say) went unseen. The summary now has a
``run defaults`` row naming those settings and the file; the settings `--show-config` prints
(``plan.shown_sample_settings``) are the values `sample` uses, with that file as their source.

The shared toy stack (tests/support/stack.py), a DiT run made beside it with a sealed
sampling.json; real CLI calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import make_dit_run, shared_stack

from repackctl.run_files import json_sha256
from repackctl.sample.plan import sampling_rows, shown_sample_settings
from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = "dit-sj"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    stack = shared_stack(tmp_path_factory)
    run = Path(stack["runs"]) / RUN
    if not run.exists():
        make_dit_run(stack["runs"], RUN, seed=7)
        doc: dict = {"defaults": {"steps": 2, "shift": 2.0}, "source": "test"}
        doc["sha256"] = json_sha256(doc)
        (run / "sampling.json").write_text(json.dumps(doc))
    return stack


def test_the_summary_names_the_values_the_run_gave(stack, tmp_path) -> None:
    args = ["sample", "-r", RUN, "-n", "2", "--grid", "0", "--device", "cpu"]
    out = cli_ok(*args, "--runs", stack["runs"], "--samples", str(tmp_path / "s"))
    sampling = Path(stack["runs"]) / RUN / "sampling.json"
    assert "2 steps, shift 2" in out, out  # taken from the file
    assert "run defaults" in out and "steps, shift from the run's sampling.json" in out, out
    (card,) = (tmp_path / "s").glob("*/protocol.json")  # the row, unwrapped by the table
    row = ("run defaults", f"steps, shift from the run's sampling.json ({sampling})")
    assert sampling_rows(json.loads(card.read_text())) == [row]


def test_show_config_values_are_the_ones_sample_uses(stack, monkeypatch) -> None:
    monkeypatch.setenv("REPACKCTL_SAMPLE__CFG_T_HI", "0.9")
    given = {"sample.run": RUN, "sample.num": 2, "sample.shift": 3.0, "runs": stack["runs"]}
    shown = shown_sample_settings(resolve_settings(None, given))
    rows = {k: (v, s) for k, v, s in shown.rows(("sample",))}
    sampling = Path(stack["runs"]) / RUN / "sampling.json"
    assert rows["sample.steps"] == (2, f"the run's sampling.json ({sampling})")
    assert rows["sample.shift"] == (3.0, "flag")  # a flag beats the file
    assert rows["sample.sampler"] == ("euler", "default")  # not None
    assert rows["sample.cfg"] == (1.0, "default")
    assert (
        rows["sample.cfg_t_hi"][0] == 0.9
        and "REPACKCTL_SAMPLE__CFG_T_HI" in rows["sample.cfg_t_hi"][1]
    )


def test_show_config_through_the_command_shows_the_run_s_values(stack) -> None:
    """`sample -r RUN --show-config` prints what `sample` uses, not the unset ``None``s."""
    args = ["sample", "-r", RUN, "-n", "2", "--runs", stack["runs"], "--show-config"]
    out = " ".join(cli_ok(*args).split())  # the table may wrap
    assert "sample.steps = 2" in out and "the run's sampling.json" in out, out
    assert "sample.sampler = None" not in out, out
