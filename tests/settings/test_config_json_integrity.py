"""A run's ``config.json`` holds the settings record a resume takes every value from that is not
given again. It carries the sha256 of its own content; when it is lost, damaged or edited, the
settings come from the newest checkpoint (whose ``state.json`` verifies), never from the
defaults: a resume went on at the default lr, or at a changed digit's lr, silently.

Real components: a real cache and pack run (``support.caches.packed_cache``), `train dit` through
the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.train.checkpoint import latest_checkpoint, read_state

N = 32
TRAIN = ["train", "dit", "-b", "8", "--device", "cpu", "--image-every", "0", "--name", "d"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with latents and runs/ with a 2-step DiT run ``d`` trained at lr 0.003."""
    root = tmp_path_factory.mktemp("cfg")
    shared_packed_cache(tmp_path_factory, root / "cache", N)
    roots = ["--cache", str(root / "cache"), "--runs", str(root / "runs")]
    with one_torch_thread():
        cli_ok(*TRAIN, "--steps", "2", "--lr", "0.003", *roots)
    return root


@pytest.fixture
def run(base, tmp_path, monkeypatch) -> Path:
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
        monkeypatch.setenv(f"REPACKCTL_{name.upper()}", str(tmp_path / name))
    return tmp_path / "runs" / "d"


def _lr_line(out: str) -> str:
    return out.split("dit.lr = ", 1)[1].split(" ", 1)[0]


def test_config_json_carries_its_own_sha256(run):
    config = json.loads((run / "config.json").read_text())
    assert len(config["config_sha256"]) == 64
    assert cli_ok(*TRAIN, "--steps", "3", "--show-config").count("dit.lr = 0.003") == 1


def test_a_lost_config_json_resumes_with_the_checkpoints_settings(run):
    (run / "config.json").unlink()  # e.g. only checkpoints/ copied to another machine
    assert _lr_line(cli_ok(*TRAIN, "--steps", "3", "--show-config")) == "0.003"
    with one_torch_thread():
        cli_ok(*TRAIN, "--steps", "3")
    assert read_state(latest_checkpoint(run))["config"]["lr"] == 0.003  # not the default
    assert json.loads((run / "config.json").read_text())["lr"] == 0.003


def test_a_changed_digit_in_config_json_is_not_taken(run):
    path = run / "config.json"
    text = path.read_text()
    assert text.count('"lr": 0.003') >= 1
    path.write_text(text.replace('"lr": 0.003', '"lr": 0.009'))  # still valid JSON
    out = cli_ok(*TRAIN, "--steps", "3", "--show-config")
    assert f"Warning: {path} does not match the sha256 it was written with" in out
    assert "checkpoint step-0000002" in out
    assert _lr_line(out) == "0.003"


def test_a_changed_config_json_without_a_verified_checkpoint_is_refused(run):
    """No checkpoint holds the settings either (its state.json changed too): refused, nothing
    guessed."""
    path = run / "config.json"
    path.write_text(path.read_text().replace('"lr": 0.003', '"lr": 0.009'))
    state = latest_checkpoint(run) / "state.json"
    state.write_text(state.read_text().replace('"lr": 0.003', '"lr": 0.009'))
    out = cli_refused(ConfigError.exit_code, *TRAIN, "--steps", "3")
    assert "config.json does not match the sha256 it was written with" in out
    assert "start a new run" in out


def test_a_config_json_cut_short_resumes_training_and_its_text_is_kept(run):
    """The resume took the checkpoint's settings, then the engine's rewrite of config.json read
    the damaged file again and died with a JSONDecodeError traceback (train dit, refine, pack)."""
    path = run / "config.json"
    cut = path.read_text()[:100]  # a copy cut short, a disk that filled up
    path.write_text(cut)
    with one_torch_thread():
        out = cli_ok(*TRAIN, "--steps", "3")
    assert out.count(f"Warning: {path} is not valid JSON") == 1  # said once, not per reading
    assert read_state(latest_checkpoint(run))["step"] == 3
    assert json.loads(path.read_text())["lr"] == 0.003  # rewritten from the checkpoint's config
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["replaced_unreadable"] == cut  # nothing of the damaged file lost


def test_runs_info_names_a_damaged_config_json_and_shows_the_checkpoints(run):
    """`runs info` showed no config at all for a damaged config.json, and said nothing."""
    (run / "config.json").write_text("[1, 2]")
    out = "".join(cli_ok("runs", "info", "d").split())  # Rich may wrap the long line
    assert "config.jsonisnotaJSONobject(damaged);shown:theconfigofcheckpointstep-0000002" in out
    assert "config.lr0.003" in out
    info = json.loads(cli_ok("runs", "info", "d", "--json"))
    assert info["config"]["lr"] == 0.003
    assert info["config_problem"].startswith("config.json is not a JSON object")
