"""The commands the demo's hints and report name are those of *this* demo: its --out, --quick
and --seed. They said `repackctl demo --fresh` (or `repackctl demo --pca-arm`) whatever folder
they were about, and that command works on ``runs/demo`` with the full plan: run as printed for
a demo in another folder, ``--fresh`` deleted the results of the demo in ``runs/demo`` and left
the one the hint was about as it was.

The stage runner is the demo's own (``repackctl.demo._Demo``), in a real folder; the hint is
parsed as a shell line, as a user pastes it.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from repackctl.demo import DemoPlan, _Demo
from repackctl.errors import CheckpointError
from repackctl.progress import null_progress


def _old_run() -> None:  # what `pack train` raises on a run made under an older preset
    raise CheckpointError("run pack was trained with loss weight feature = 0.0, now 1.0", "x")


def _command(hint: str, marker: str = "") -> list[str]:
    """The one `repackctl demo …` command of ``hint`` (that holds ``marker``)."""
    (cmd,) = [c for c in hint.split("`") if c.startswith("repackctl demo") and marker in c]
    return shlex.split(cmd)


def test_the_fresh_hint_names_the_folder_and_the_plan_of_this_demo(tmp_path: Path) -> None:
    out = tmp_path / "my demo"
    demo = _Demo(replace(DemoPlan.quick(out), seed=4), null_progress, lambda _: None)
    with pytest.raises(CheckpointError) as e:
        demo.stage("pack train", _old_run)
    argv = _command(e.value.hint)
    assert argv[:3] == ["repackctl", "demo", "--fresh"], argv
    assert argv[argv.index("--out") + 1] == str(out), argv
    assert "--quick" in argv and argv[argv.index("--seed") + 1] == "4", argv


def test_the_default_folder_s_full_demo_keeps_the_short_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    demo = _Demo(DemoPlan(out=(tmp_path / "runs" / "demo")), null_progress, lambda _: None)
    with pytest.raises(CheckpointError) as e:
        demo.stage("pack train", _old_run)
    assert _command(e.value.hint) == ["repackctl", "demo", "--fresh"], e.value.hint


def test_the_report_names_the_pca_arm_command_of_this_demo(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    out.mkdir()
    (out / "samples-pca.png").write_bytes(b"")  # left by an earlier run with --pca-arm
    demo = _Demo(DemoPlan.quick(out), null_progress, lambda _: None)
    argv = _command(demo.arm_leftovers())
    assert argv[argv.index("--out") + 1] == str(out), argv
    assert "--quick" in argv and "--pca-arm" in argv and "--seed" not in argv, argv


@pytest.mark.parametrize("t2i", [False, True], ids=["demo", "demo-t2i"])
def test_a_rerun_with_another_plan_names_this_demo_s_fresh_command(
    tmp_path: Path, t2i: bool
) -> None:
    """A rerun in ``--out X`` with another ``--seed`` is refused before any stage; its hint named
    `repackctl demo --fresh` (the default folder's full demo), not X's."""
    from repackctl.demo import DEMO_FILES
    from repackctl.demo_t2i import T2I_DEMO_FILES, T2IDemoPlan
    from repackctl.errors import ConfigError
    from repackctl.pipeline import claim_demo_folder

    out = tmp_path / "my demo"
    plan_cls, files, kind = (
        (T2IDemoPlan, T2I_DEMO_FILES, "demo --t2i") if t2i else (DemoPlan, DEMO_FILES, "demo")
    )
    claim_demo_folder(plan_cls.quick(out), kind, files, False, lambda _: None)
    again = replace(plan_cls.quick(out), seed=1)
    with pytest.raises(ConfigError) as e:
        claim_demo_folder(again, kind, files, False, lambda _: None)
    assert "seed 0 → 1" in e.value.message
    argv = _command(e.value.hint, "--fresh")
    assert argv[:2] == ["repackctl", "demo"] and "--fresh" in argv, argv
    assert ("--t2i" in argv) == t2i, argv
    assert argv[argv.index("--out") + 1] == str(out), argv
    assert "--quick" in argv and argv[argv.index("--seed") + 1] == "1", argv
    # the command it was started with: --quick, seed 0 (the hint said "give the flags it was
    # started with" without naming them; `--quick` is the one a user forgets)
    argv = _command(e.value.hint.split("go on with", 1)[1].split(",")[0])
    assert "--quick" in argv and "--seed" not in argv and "--fresh" not in argv, argv
    assert argv[argv.index("--out") + 1] == str(out) and ("--t2i" in argv) == t2i, argv
    # the full plan asked in a --quick demo's folder: the same
    with pytest.raises(ConfigError) as e:
        claim_demo_folder(plan_cls(out=out), kind, files, False, lambda _: None)
    argv = _command(e.value.hint.split("go on with", 1)[1].split(",")[0])
    assert "--quick" in argv and "--fresh" not in argv, argv
