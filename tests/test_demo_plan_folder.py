"""``DemoPlan.of_demo`` (what `benchmarks/demo_seeds.py --demo DIR` reads) names the pipeline
that made a folder when it is not the class demo's, instead of reading the other demo's plan as
"another version's plan"."""

from __future__ import annotations

import json

import pytest

from repackctl.demo import DemoPlan
from repackctl.demo_t2i import T2IDemoPlan
from repackctl.errors import ConfigError
from repackctl.pipeline import MARKER, PLAN_FILE, folder_made_by


def _folder(tmp_path, made_by: str, plan: dict):
    out = tmp_path / "demo"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"made_by": made_by}))
    (out / PLAN_FILE).write_text(json.dumps(plan))
    return out


def test_a_t2i_demo_folder_is_named_as_one(tmp_path):
    out = _folder(tmp_path, "demo --t2i", T2IDemoPlan.quick(tmp_path / "demo").record())
    with pytest.raises(ConfigError) as e:
        DemoPlan.of_demo(out)
    assert "repackctl demo --t2i" in str(e.value) and "another version" not in str(e.value)


def test_the_class_demos_folder_gives_its_plan(tmp_path):
    plan = DemoPlan.quick(tmp_path / "demo")
    out = _folder(tmp_path, "demo", plan.record())
    assert folder_made_by(out) == "demo"
    assert DemoPlan.of_demo(out) == plan


@pytest.mark.parametrize("marker", ["", "[1]", '{"made_by": 3}'])
def test_an_unreadable_marker_names_no_pipeline(tmp_path, marker):
    (tmp_path / MARKER).write_text(marker)
    assert folder_made_by(tmp_path) is None
