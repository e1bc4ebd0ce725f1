"""Options that a command would accept and then ignore are refused or not offered.

- ``[t2i]`` keys inherited from ``train dit`` that ``train t2i`` does not use (``NOT_T2I``:
  class_dropout, no_shift, size, patch, arch, preset) were shown by ``--show-config``, stored
  in ``config.json`` and ignored; now a value given for one is refused naming its source and
  what to use instead, and they are neither shown nor stored;
- REPA options given while REPA is off (``--repa-weight 0``, or the paper preset's λ 0) and
  ``pack train --kl-weight`` with ``--method pca`` were dropped silently; now refused like an
  lr-schedule option the schedule does not use (a preset's values never count);
- ``--num-workers`` (train dit / t2i, refine train) and ``pack train --probe-epochs`` acted
  nowhere; they are no longer offered.

Real CLI (Typer's runner), real config files; no data is needed: the refusals come first."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused, runner

from repackctl.cli.app import app


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t2i.toml"
    path.write_text(text)
    return str(path)


def test_a_dit_only_key_in_the_t2i_section_of_a_file_is_refused(tmp_path):
    config = _toml(tmp_path, "[t2i]\nclass_dropout = 0.5\n")
    out = cli_refused(2, "train", "t2i", "--config", config, "--show-config")
    assert "t2i.class_dropout" in out and "(from file t2i.toml)" in out
    assert "t2i.caption_dropout (--caption-dropout)" in out
    out = cli_refused(2, "train", "t2i", "--config", _toml(tmp_path, "[t2i]\nsize = 'xl'\n"))
    assert "t2i.size" in out and "--model" in out and "mmdit-s-2" in out
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def test_a_dit_only_key_in_the_t2i_environment_is_refused(monkeypatch):
    monkeypatch.setenv("REPACKCTL_T2I__NO_SHIFT", "true")
    out = cli_refused(2, "train", "t2i", "--show-config")
    assert "t2i.no_shift" in out and "(from env REPACKCTL_T2I__NO_SHIFT)" in out


def test_t2i_show_config_lists_no_dit_only_key():
    shown = cli_ok("train", "t2i", "--show-config")
    assert "t2i.caption_dropout" in shown
    for key in ("class_dropout", "no_shift", "size", "patch", "arch"):
        assert f"t2i.{key} " not in shown, key
    assert "dit.class_dropout" in cli_ok("train", "dit", "--show-config")  # dit keeps them


def test_repa_options_given_with_repa_off_are_refused(tmp_path):
    args = ["train", "dit", "--name", "ditR", "--steps", "2", "--global-batch", "8"]
    out = cli_refused(2, *args, "--repa-weight", "0", "--repa-depth", "1", "--device", "cpu")
    assert "dit.repa_depth = 1 (from flag)" in out
    assert "dit.repa_weight is 0.0 (from flag)" in out and "--repa-weight 0.5" in out
    assert not (tmp_path / "runs" / "ditR").exists()
    out = cli_refused(2, "train", "dit", "--preset", "paper", "--repa-hidden", "32",
                      "--show-config")  # fmt: skip
    assert "dit.repa_hidden = 32 (from flag)" in out and "(from preset paper)" in out
    out = cli_refused(2, "train", "t2i", "--repa-weight", "0", "--repa-stop-step", "1",
                      "--show-config")  # fmt: skip
    assert "t2i.repa_stop_step = 1 (from flag)" in out and "drop --repa-stop-step" in out
    # the repa preset fills repa_depth and repa_hidden: not given, so not refused at λ 0
    cli_ok("train", "dit", "--preset", "repa", "--repa-weight", "0", "--show-config")
    cli_ok("train", "dit", "--repa-depth", "1", "--show-config")  # default λ 0.5


def test_kl_weight_with_the_pca_method_is_refused(monkeypatch):
    src = ["pack", "train", "-e", "patchpix", "--resolution", "32", "--method", "pca"]
    out = cli_refused(2, *src, "--kl-weight", "1e-4", "--show-config")
    assert "pack.kl_weight = 0.0001 (from flag)" in out and "pack.method is 'pca'" in out
    assert "--method repack" in out
    cli_ok(*src, "--show-config")
    monkeypatch.setenv("REPACKCTL_PACK__KL_WEIGHT", "1e-4")
    out = cli_refused(2, *src, "--show-config")
    assert "unset REPACKCTL_PACK__KL_WEIGHT" in out
    cli_ok("pack", "train", "-e", "patchpix", "--resolution", "32", "--show-config")  # repack


@pytest.mark.parametrize(
    "command, absent",
    [
        (["train", "dit"], "--num-workers"),
        (["train", "t2i"], "--num-workers"),
        (["refine", "train"], "--num-workers"),
        (["pack", "train"], "--probe-epochs"),
    ],
)
def test_options_that_cannot_act_are_not_offered(command, absent):
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--memory-gb" in res.output, res.output
    assert absent not in res.output
    res = runner.invoke(app, [*command, absent, "1", "--show-config"])
    assert res.exit_code == 2 and "No such option" in res.output
