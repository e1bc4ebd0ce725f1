"""The hint of a run whose steps went non-finite names only flags its stage's command has:
it suggested `clip_grad` and DiT qk-norm to every stage, while `refine train` has no
--clip-grad and only `train dit` / `train t2i` have --qk-norm (task N, item 1).

Each stage trains 2 steps at a diverging learning rate on a copy of the shared stage stack: the
save at step 2 comes after a non-finite step, so the command saves nothing and is refused. They
train in fp32: bf16 is suggested to fp16 runs only."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.caches import use_roots
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.errors import TrainingError
from repackctl.train.trainer import NAN_HINT, nan_hint

CPU = ["--device", "cpu", "--steps", "2", "--ckpt-every", "2", "--lr", "1e10"]
PACK = ["pack", "train", "-e", "patchpix", "--resolution", "32", "-n", "16", "--batch-size", "4"]
PACK += ["-c", "4", "--ch", "8", "--disc-channels", "8", "--name", "p-nan"]
REFINE = ["refine", "train", "--pack-run", "pack-tiny", "--base-channels", "8", "--name", "r-nan"]
DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--image-every", "0", "--name", "d-nan"]


@pytest.mark.parametrize(
    ("args", "has", "lacks"),
    [
        (PACK, ["--lr", "--clip-grad"], ["qk-norm", "clip_grad", "bf16"]),
        (REFINE, ["--lr"], ["clip", "qk-norm", "bf16"]),
        (DIT, ["--lr", "--clip-grad", "--qk-norm"], ["clip_grad", "bf16"]),
    ],
    ids=["pack", "refine", "dit"],
)
def test_the_non_finite_hint_names_only_the_stages_flags(
    args, has, lacks, tmp_path_factory, tmp_path, monkeypatch
):
    use_roots(Path(shared_stack(tmp_path_factory)["runs"]).parent, tmp_path, monkeypatch)
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    with one_torch_thread():
        if args is DIT:
            cli_ok("pack", "encode", "--run", "pack-tiny", "--device", "cpu")
        out = cli_refused(TrainingError.exit_code, *args, *CPU)
    assert "but saved no checkpoint" in out
    hint = out.partition("Hint:")[2]
    assert all(flag in hint for flag in has), hint
    assert not any(word in hint for word in lacks), hint
    assert "--allow-change" in hint  # the rest of the hint is kept


def test_bf16_is_suggested_to_fp16_runs():
    assert nan_hint("refine", "fp16") == (
        "train with a lower learning rate (--lr) or --precision bf16 instead of fp16"
    )
    assert "--clip-grad 1.0, --qk-norm" in nan_hint("t2i", "fp16")
    assert nan_hint(None, "fp32") == NAN_HINT  # a library task: the settings' names
