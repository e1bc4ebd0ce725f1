"""Reruns of `evaluate fid` and `evaluate adherence` with other settings, left by an earlier
audit.

1. `evaluate adherence` rerun with other ``--steps`` or ``--seed`` replaced ``adherence.json``
   (another result) without a word, where `evaluate fid` refuses a result of another protocol.
2. The same ``--metrics`` in another order (``fd,fid`` after ``fid,fd``) counted as another
   protocol in `evaluate fid`, so the rerun was refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import random_inception_state
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.stack import build_stack, stack_env

from repackctl.errors import ConfigError
from repackctl.evaluate.output import check_replaceable

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return build_stack(tmp_path_factory.mktemp("audit2-reruns"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("audit2-t2i") / "w")


def test_the_same_metrics_in_another_order_are_the_same_protocol(env, tmp_path):
    inception = tmp_path / "inception.pth"
    torch.save(random_inception_state(), inception)
    cli_ok("sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--grid", "0", *CPU)
    (folder,) = Path(env["samples"]).iterdir()
    ref = ["--ref-cache", "builtin-n16--train--32px"]  # 16 images: quick on a CPU
    fid = ["evaluate", "fid", str(folder), *ref, "--inception-weights", str(inception)]
    fid += ["--fd-method", "cholesky"]  # exact, and quick in 2048-d from 4 samples (not sqrtm)
    cli_ok(*fid, "--metrics", "fid,fd", *CPU)
    path = folder / "metrics.json"
    first = json.loads(path.read_text())["metrics"]
    cli_ok(*fid, "--metrics", "fd,fid", *CPU)  # the same result recomputed
    doc = json.loads(path.read_text())
    assert doc["metrics"]["fid"] == pytest.approx(first["fid"])
    assert doc["metrics"]["metrics"] == ["fid", "fd"]  # one order, whatever the flag's
    # another metric set is still another protocol, refused before any scoring
    out = cli_refused(ConfigError.exit_code, *fid, "--metrics", "fid", *CPU)
    assert "another protocol" in out
    # a file an earlier version wrote for `--metrics fd,fid` kept that order: still this result
    doc["metrics"]["metrics"] = ["fd", "fid"]
    path.write_text(json.dumps(doc))
    this = {k: doc["metrics"][k] for k in ("generated", "reference")}
    check_replaceable(path, this | {"metrics": ["fid", "fd"]})
    with pytest.raises(ConfigError, match="another protocol"):
        check_replaceable(path, this | {"metrics": ["fid"]})


def test_adherence_keeps_a_result_of_other_classifier_settings(t2i, tmp_path, monkeypatch):
    use_stack(t2i, tmp_path, monkeypatch)
    folder = tmp_path / "s"
    cli_ok("sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "4", "--prompt",
           "a red star", "--out", str(folder), *CPU)  # fmt: skip
    adherence = ["evaluate", "adherence", str(folder), *CPU]
    cli_ok(*adherence, "--steps", "2")
    path = folder / "adherence.json"
    kept = path.read_bytes()
    for flags, said in ((["--steps", "3"], "--steps 2 (this run: 3)"),
                        (["--steps", "2", "--seed", "4"], "--seed 0 (this run: 4)")):  # fmt: skip
        out = cli_refused(ConfigError.exit_code, *adherence, *flags)
        assert said in out and "--steps 2 --seed 0" in out, out
        assert path.read_bytes() == kept  # the other result is kept
    cli_ok(*adherence, "--steps", "2")  # the same settings: the same result recomputed
    again, before = json.loads(path.read_text()), json.loads(kept)
    assert again["classifier"] == before["classifier"]
    assert again["shape_accuracy"] == before["shape_accuracy"]
