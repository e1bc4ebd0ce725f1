"""`repackctl demo --t2i --out runs/demo` writes where it is told: an --out equal to the class
demo's default was silently replaced by runs/demo-t2i (the flag accepted and ignored)."""

from __future__ import annotations

import json

from support.cli import cli_refused

from repackctl.pipeline import MARKER


def test_an_explicit_out_of_the_class_demos_default_is_not_redirected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / "runs" / "demo"  # a class-conditional demo's folder, as it marks it
    demo.mkdir(parents=True)
    (demo / MARKER).write_text(json.dumps({"made_by": "demo"}))
    (demo / "report.md").write_text("the class demo's report\n")
    out = cli_refused(2, "demo", "--t2i", "--quick", "--out", "runs/demo")
    # the folder asked for is the one checked (and refused: another demo made it) ...
    assert "not made by `repackctl demo --t2i`" in out and str(demo) in out
    # ... and nothing was written anywhere else
    assert not (tmp_path / "runs" / "demo-t2i").exists()
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "report.md"]
