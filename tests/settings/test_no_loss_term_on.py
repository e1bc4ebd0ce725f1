"""`pack train` / `refine train` with no loss term on are refused with an `Error:` naming each
weight and its source, before any run folder is written (audit C, findings 1 and 2).

With every weight 0 (or a weight above 0 whose file is not set: LPIPS without
``lpips_weights``), `refine train` trained nothing (loss 0, gradient 0), saved its initial
refiner and exited 0; `pack train` died in its first backward pass (``RuntimeError: element 0
of tensors does not require grad``) after writing its run folder. Pack's GAN term alone is off
too: its adaptive weight scales it by the reconstruction terms, so the generator's gradient is
0. The refusal comes from the settings, so no cache or pack run is needed to see it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused, runner

from repackctl.cli.app import app

PACK_ZEROS = ["--l1-weight", "0", "--ffl-weight", "0", "--feature-weight", "0",
              "--scale-equivariance-weight", "0", "--kl-weight", "0"]  # fmt: skip


def _roots(tmp_path: Path) -> list[str]:
    return ["--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), "--device", "cpu"]


@pytest.mark.parametrize("gan", [["--gan-weight", "0"], ["--gan-start", "0"]])
def test_pack_train_with_no_loss_term_is_refused_before_writing(tmp_path, gan):
    args = ["pack", "train", "--name", "pz", "--steps", "2", *PACK_ZEROS, *gan]
    out = cli_refused(2, *args, *_roots(tmp_path))
    assert "no loss term is on" in out, out
    assert "pack.l1_weight = 0.0 (from flag)" in out and "pack.kl_weight = 0.0 (from flag)" in out
    assert "pack.perceptual_weight = 1.0 (from default), off without pack.lpips_weights" in out
    if gan[0] == "--gan-start":  # the GAN term on, scaled by reconstruction terms all off
        assert "pack.gan_weight = 0.5 (from default), scaled by the adaptive GAN weight" in out
    assert not (tmp_path / "runs" / "pz").exists()


def test_refine_train_with_no_loss_term_names_each_source_one_term_is_enough(tmp_path):
    cfg = tmp_path / "z.toml"
    cfg.write_text("[refine]\nl1_weight = 0\n")
    args = ["refine", "train", "--pack-run", "pack", "--name", "rz", "--steps", "2"]
    res = runner.invoke(
        app,
        [*args, "--config", str(cfg), *_roots(tmp_path)],
        env={"REPACKCTL_REFINE__GAN_WEIGHT": "0"},
    )
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in out, out
    assert "Error: no loss term is on" in out and "Hint:" in out, out
    assert "refine.l1_weight = 0.0 (from file z.toml)" in out, out
    assert "refine.gan_weight = 0.0 (from env REPACKCTL_REFINE__GAN_WEIGHT)" in out, out
    assert "refine.feature_weight = 0.0 (from default)" in out, out
    assert not (tmp_path / "runs" / "rz").exists()

    # one term on is enough: the small preset's feature distance alone; pack's KL alone (it
    # trains the posterior); the refiner's feature distance alone
    cli_ok("pack", "train", "--name", "p1", *PACK_ZEROS[:2], "--gan-weight", "0", "--show-config")
    cli_ok("pack", "train", "--name", "p2", *PACK_ZEROS[:-2], "--gan-weight", "0", "--show-config")
    refine = ["refine", "train", "--pack-run", "pack", "--name", "r1", "--show-config"]
    cli_ok(*refine, "--l1-weight", "0", "--gan-weight", "0", "--feature-weight", "1")
