"""`evaluate fid <samples folder>`: ``--precision`` and ``--seed`` take effect or are refused.

1. Scoring samples that exist, ``--precision X`` was accepted and changed nothing, and a
   ``--seed N`` that draws nothing (a reference that is not the built-in data, no random FD
   encoder) was accepted too. Both are refused before anything is scored; ``--seed`` with
   ``--ref builtin`` (it picks the reference images) or ``--fd-weights random`` (the encoder)
   is taken, and so is a seed or precision from the environment (every command's).
2. A samples card without ``precision`` (older versions) was scored with this command's
   ``--precision`` written on the metrics card as the samples' precision: it reads "not recorded".

The shared toy stack (tests/support/stack.py): a tiny DiT sampled into a folder; FD in the
built-in encoder's space, on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import FD_SCORE, FD_WEIGHTS, shared_stack, stack_env

from repackctl.errors import ConfigError

SCORE = FD_SCORE  # --ref builtin --metrics fd, cholesky, CPU
#: FD of the samples against themselves as the reference: nothing in it is drawn with a seed
SELF = ["--metrics", "fd", "--fd-method", "cholesky", "--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _sampled(env: dict[str, str]) -> Path:
    cli_ok("sample", "-r", "dit-tiny", "-n", "6", "--steps", "2", "--device", "cpu")
    (folder,) = Path(env["samples"]).iterdir()
    return folder


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.skipif(bool(FD_WEIGHTS), reason="the FD encoder is random (seeded) in this checkout")
def test_seed_and_precision_flags_take_effect_or_are_refused(env, tmp_path):
    folder = _sampled(env)
    fid = ["evaluate", "fid", str(folder)]
    out = cli_refused(ConfigError.exit_code, *fid, *SCORE, "--precision", "bf16")
    assert "--precision bf16" in out and "(at fp32)" in out and "ignored" in out, out
    assert "drop --precision" in out, out
    out = cli_refused(ConfigError.exit_code, *fid, "--ref", str(folder), *SELF, "--seed", "5")
    assert "--seed 5" in out and "with seed 0" in out and "ignored" in out, out
    assert "drop --seed" in out, out
    assert not (folder / "metrics.json").exists()  # refused before anything was scored

    # the same seed and precision from the environment are every command's: not refused
    env_out = tmp_path / "env.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPACKCTL_SEED", "5")
        mp.setenv("REPACKCTL_PRECISION", "bf16")
        cli_ok(*fid, "--ref", str(folder), *SELF, "--out", str(env_out))
    assert _doc(env_out)["protocol"]["precision"] == "fp32"  # the samples', from their card

    # a seed that draws the reference images or the FD encoder is taken
    scores = {}
    for seed in ("0", "5"):
        target = tmp_path / f"builtin-seed{seed}.json"
        cli_ok(*fid, *SCORE, "--seed", seed, "--out", str(target))
        scores[seed] = _doc(target)["metrics"]
    # other built-in reference images: another reference hash, another FD
    assert scores["0"]["reference"]["sha256"] != scores["5"]["reference"]["sha256"]
    assert scores["0"]["fd"] != scores["5"]["fd"]
    target = tmp_path / "random-encoder.json"
    cli_ok(*fid, "--ref", str(folder), *SELF, "--fd-weights", "random", "--seed", "5",
           "--out", str(target))  # fmt: skip
    assert _doc(target)["metrics"]["fd_detail"]["encoder"]["weights"] == "random:5"


def test_an_older_card_without_precision_says_not_recorded(env):
    folder = _sampled(env)
    card = _doc(folder / "protocol.json")
    assert card.pop("precision") == "fp32"
    (folder / "protocol.json").write_text(json.dumps(card, indent=2))  # as older versions wrote
    cli_ok("evaluate", "fid", str(folder), *SCORE)
    scored = _doc(folder / "metrics.json")["protocol"]
    assert scored["precision"] == "not recorded"  # before: this command's --precision (fp32)
