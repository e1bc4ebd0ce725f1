"""`refine train` runs that a careful user meets: a second seed of a noisy refiner, and the GAN
turned on when a run trained without it is resumed. Real CLI runs on the shared patchpix stack.

- Noisy triplets (``--noise σ``) draw their noise from the run's seed, but one cache group per σ
  held them: a second refiner run with another ``--seed`` was refused ("made with other settings
  (seed: 0 vs 1)") with a hint to remove the triplets the first run trains on. Each seed now has
  its own group (the first one keeps the plain name), and both runs train and resume.
- A run trained with ``--gan-weight 0`` has no discriminator in its checkpoints. Resumed with
  ``--gan-weight 0.5 --allow-change gan_weight``, it failed after its triplets were checked with
  "disc.safetensors is missing / pass a complete checkpoint folder" (the checkpoint is complete)
  and wrote its resume lines to log.txt. It is now refused before anything is written, naming
  the setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry
from repackctl.cli.app import app
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import KIND, triplet_group_name
from repackctl.train.checkpoint import list_checkpoints, read_state


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _invoke(stack: dict[str, str], *args: str):
    common = ["--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]
    return CliRunner().invoke(app, ["refine", "train", *args, *common])


def _train(stack: dict[str, str], *args: str) -> str:
    r = _invoke(stack, *args)
    assert r.exit_code == 0, r.output
    return r.output


def _new_run(name: str, *more: str) -> list[str]:
    return ["--pack-run", "pack-tiny", "--name", name, "--batch-size", "4",
            "--base-channels", "8", *more]  # fmt: skip


def test_a_second_seed_of_a_noisy_refiner_trains_beside_the_first(stack) -> None:
    pack = load_pack("pack-tiny", runs=stack["runs"])
    entry = DatasetEntry.open(stack["cache"], pack.extra["cache"]["entry"])
    noisy = ("--noise", "0.3", "--gan-weight", "0")
    _train(stack, *_new_run("rn-seed0", *noisy, "--steps", "1"))
    out = _train(stack, *_new_run("rn-seed1", *noisy, "--seed", "1", "--steps", "1"))
    assert "made with other settings" not in out, out
    plain = triplet_group_name(pack.pack_id, 0.3)
    seeded = triplet_group_name(pack.pack_id, 0.3, 1)
    groups = entry.group[KIND]
    assert groups[plain].attrs["seed"] == 0 and groups[seeded].attrs["seed"] == 1
    # each run trained on its own seed's noise, and records that group
    lat0, lat1 = groups[plain]["latent"][:], groups[seeded]["latent"][:]
    assert not np.allclose(lat0, lat1)
    for name, group in (("rn-seed0", plain), ("rn-seed1", seeded)):
        ckpt = list_checkpoints(Path(stack["runs"]) / name)[-1]
        assert read_state(ckpt)["extra"]["cache"]["triplets"] == group
    # both resume on their own triplets, and nothing rewrote the first seed's
    _train(stack, "--name", "rn-seed0", "--steps", "2")
    _train(stack, "--name", "rn-seed1", "--steps", "2")
    assert np.array_equal(groups[plain]["latent"][:], lat0)
    for name in ("rn-seed0", "rn-seed1"):
        assert list_checkpoints(Path(stack["runs"]) / name)[-1].name == "step-0000002"


def test_the_gan_turned_on_at_resume_is_refused_before_anything_is_written(stack) -> None:
    run = Path(stack["runs"]) / "rn-nogan"
    _train(stack, *_new_run("rn-nogan", "--gan-weight", "0", "--steps", "1"))
    log, ckpts = (run / "log.txt").read_bytes(), [p.name for p in list_checkpoints(run)]
    r = _invoke(stack, "--name", "rn-nogan", "--steps", "2", "--gan-weight", "0.5",
                "--allow-change", "gan_weight")  # fmt: skip
    out = " ".join(r.output.split())
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), out
    assert "Traceback" not in out and "is missing" not in out, out
    # refused by the settings layer, allowed or not (audit s37 B finding 3; it was by the stage)
    assert "Error: resuming would change refine.gan_weight: 0.0 → 0.5" in out, out
    assert "refine.gan_weight cannot change on resume" in out and "no discriminator" in out, out
    assert "Hint: drop the flag to continue as started" in out, out
    assert (run / "log.txt").read_bytes() == log
    assert [p.name for p in list_checkpoints(run)] == ckpts
    # as it was trained, it resumes
    _train(stack, "--name", "rn-nogan", "--steps", "2")
    assert list_checkpoints(run)[-1].name == "step-0000002"


def test_a_refused_resume_after_the_pack_run_trained_on_says_how_to_resume(tmp_path) -> None:
    """`refine train --name R` after `pack train` went on is refused as another pack model (the
    run's pack run now ends in a newer checkpoint); the hint named the checkpoint it was trained
    on but no command, and `--pack-run <that checkpoint>` alone was refused in turn as a change
    of refine.pack_run. The hint's command now resumes the run."""
    from support.stack import build_stack

    stack = build_stack(tmp_path)  # its own pack run: the shared stack's must not train on
    _train(stack, *_new_run("rn-pack", "--gan-weight", "0", "--steps", "1"))
    pack = ["pack", "train", "--name", "pack-tiny", "--encoder", "patchpix", "--resolution",
            "32", "--num", "16", "--batch-size", "4", "--latent-channels", "4", "--ch", "8",
            "--disc-channels", "8", "--ckpt-every", "2", "--steps", "4", "--cache",
            stack["cache"], "--runs", stack["runs"], "--device", "cpu"]  # fmt: skip
    r = CliRunner().invoke(app, pack)
    assert r.exit_code == 0, r.output
    r = _invoke(stack, "--name", "rn-pack", "--steps", "2")
    out = " ".join(r.output.split())
    assert r.exit_code != 0 and "trained on pack model" in out, out
    trained = str(Path(stack["runs"]) / "pack-tiny" / "checkpoints" / "step-0000002")
    command = f"--pack-run {trained} --allow-change pack_run"
    assert f"`{command}`" in out, out
    _train(stack, "--name", "rn-pack", "--steps", "2", *command.split())
    ckpt = list_checkpoints(Path(stack["runs"]) / "rn-pack")[-1]
    assert ckpt.name == "step-0000002"
    assert "-0000002-" in read_state(ckpt)["extra"]["pack"]["pack_id"]
