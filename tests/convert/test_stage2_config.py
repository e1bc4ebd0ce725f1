"""`import official` reads what the stage-2 .pt's own training config says about its latents
and transport, not only its ``sample`` section: their sampling de-normalises with
``(x·std) / data.latent_multiplier + mean`` (0.18215 when ``data`` does not name one), so a
multiplier other than 1 is folded into the imported std; a DiT trained with another transport
(``path_type``/``prediction``) is refused instead of sampled in the wrong convention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.official import official_lightningdit, official_stage1
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.pack.load import denormalise

RELEASE_TRANSPORT = {"path_type": "Linear", "prediction": "velocity", "use_lognorm": True}


def _import(tmp_path: Path, train_cfg: dict):
    """A 32-px official-layout release whose stage-2 .pt stores ``train_cfg``, imported."""
    s1, dit, stats = tmp_path / "s1.ckpt", tmp_path / "dit.pt", tmp_path / "st.pt"
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, s1)
    model = official_lightningdit(side=4)
    torch.save({"model": model, "ema": model, "config": train_cfg, "global_step": 3}, dit)
    torch.save({"mean": torch.ones(1, 4, 1, 1), "std": 2 * torch.ones(1, 4, 1, 1)}, stats)
    args = ["import", "official", "--stage1", str(s1), "--dit", str(dit)]
    args += ["--latent-stats", str(stats), "--image-size", "32", "--out", "off"]
    return CliRunner().invoke(app, [*args, "--runs", str(tmp_path / "runs")])


def _stats(tmp_path: Path) -> dict:
    state = tmp_path / "runs" / "off-dit" / "checkpoints" / "step-0000003" / "state.json"
    return json.loads(state.read_text())["extra"]["latent_stats"]


@pytest.mark.parametrize(
    ("data", "multiplier"),
    [({"latent_multiplier": 0.5}, 0.5), ({"latent_norm": True}, 0.18215), (None, 1.0)],
    ids=["given", "their-default", "no-data-section"],
)
def test_latent_multiplier_is_applied_as_their_sampling_does(tmp_path, data, multiplier) -> None:
    cfg = {"transport": RELEASE_TRANSPORT} | ({"data": data} if data is not None else {})
    r = _import(tmp_path, cfg)
    assert r.exit_code == 0, r.output
    x = torch.randn(2, 4, 4, 4)
    theirs = (x * 2.0) / multiplier + 1.0  # stage2/inference_batch.py
    assert torch.allclose(denormalise(x, _stats(tmp_path)), theirs, atol=1e-5)
    if multiplier != 1.0:
        assert "latent_multiplier" in r.output


@pytest.mark.parametrize(
    ("transport", "needle"),
    [({"path_type": "GVP"}, "transport.path_type 'GVP'"), ({"prediction": "noise"}, "'noise'")],
)
def test_another_transport_is_refused(tmp_path, transport, needle) -> None:
    r = _import(tmp_path, {"transport": RELEASE_TRANSPORT | transport})
    assert r.exit_code != 0, r.output
    assert "Error:" in r.output and "Hint:" in r.output and needle in r.output, r.output
    assert "Traceback" not in r.output
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


@pytest.mark.parametrize("bad", [0, -1.0, "x"])
def test_a_multiplier_that_is_not_positive_is_refused(tmp_path, bad) -> None:
    r = _import(tmp_path, {"data": {"latent_multiplier": bad}})
    assert r.exit_code != 0 and "data.latent_multiplier" in r.output, r.output
    assert "Traceback" not in r.output
