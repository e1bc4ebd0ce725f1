"""``--allow-change NAME`` with a NAME that is no setting is refused, naming close matches.

A typo (``--allow-change lrr``) was accepted silently: the change the user meant to allow was
then refused, or, where the flag came with no such change, they took it as allowed. Every
training command refuses it before anything is read or written, with the closest names; ``all``,
a section's setting (bare or dotted), a common setting and the names the stages' own resume
checks take stay valid. Real CLI invocations (no data needed: the check comes first).
"""

from __future__ import annotations

import pytest
from support.cli import runner

from repackctl.cli.app import app
from repackctl.errors import ConfigError

COMMANDS = {
    "dit": ["train", "dit", "--name", "r"],
    "t2i": ["train", "t2i", "--name", "r"],
    "pack": ["pack", "train", "--name", "r"],
    "refine": ["refine", "train", "--name", "r"],
}


def _run(section: str, *allow: str) -> tuple[int, str]:
    args = [*COMMANDS[section], "--steps", "1", "--device", "cpu"]
    for name in allow:
        args += ["--allow-change", name]
    res = runner.invoke(app, args)
    out = " ".join(res.output.split())
    assert "Traceback" not in out, out
    return res.exit_code, out


@pytest.mark.parametrize("section", list(COMMANDS))
def test_an_unknown_name_is_refused_with_close_matches(section, tmp_path):
    code, out = _run(section, "lr", "lrr")
    assert code == ConfigError.exit_code, out
    assert f"Error: --allow-change 'lrr' (from flag) is no {section} setting" in out, out
    assert "did you mean lr" in out and "Hint:" in out, out
    code, out = _run(section, "ema_decya")
    assert "did you mean ema_decay" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("section", list(COMMANDS))
def test_known_names_pass_the_check(section):
    names = ["all", "lr", f"{section}.lr", "precision", "seed", "steps"]
    names += ["tf32", "adaptive_gan_weight"] if section == "pack" else []
    _, out = _run(section, *names)  # refused later for the missing data, not for a name
    assert "--allow-change" not in out, out


def test_every_name_the_pack_resume_checks_take_is_known():
    from repackctl.pack.losses import LossConfig
    from repackctl.pack.task import LOSS_SETTINGS
    from repackctl.settings import resolve_settings
    from repackctl.settings.checks import allow_change_names

    names = set(allow_change_names(resolve_settings(None, {}, environ={}).settings, "pack"))
    loss = {LOSS_SETTINGS.get(k, k) for k in LossConfig().to_dict()}
    assert loss | {"tf32", "watson_weights", "precision"} <= names, loss - names
