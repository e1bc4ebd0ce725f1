"""Follow-ups of `train dit` / `train t2i` and `sample`:

* `--steps 0` is refused for a run without a checkpoint (before anything is written) and, on a
  run that has one, shows that run as it is: its checkpoint, step and last losses, nothing
  trained, nothing written; no summary says "None";
* text-to-image sample folders are named like class-conditional ones (precision included) and a
  folder of the legacy name is resumed where it is;
* a class list is recorded and named in one spelling: `--labels "3, 7"` and `--labels 3,7` share
  their folder.

Real components: the shared stage stack (extract → pack train → a DiT checkpoint), `pack encode`
and `captions` on a copy of its cache, real (tiny) training runs through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread
from support.caches import use_stack
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _error
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.errors import CheckpointError, ConfigError, TrainingError
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.sample.plan import canonical_labels, label_scheme_name
from repackctl.train.checkpoint import latest_checkpoint, list_checkpoints

runner = CliRunner()
CPU = ["--device", "cpu"]
TRAIN_FLAGS = ["-b", "8", "--log-every", "1", "--image-every", "0", "--ckpt-every", "2", *CPU]
TRAIN = {
    "dit": ["train", "dit", "--size", "tiny", *TRAIN_FLAGS],
    "t2i": ["train", "t2i", *TRAIN_FLAGS],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A copy of the shared stack's cache and runs with packed latents and cached captions."""
    stack = shared_stack(tmp_path_factory)
    root = tmp_path_factory.mktemp("followups")
    shutil.copytree(stack["cache"], root / "cache")
    shutil.copytree(stack["runs"], root / "runs")
    common = ["--cache", str(root / "cache"), *CPU]
    with one_torch_thread():
        _ok("pack", "encode", "--run", "pack-tiny", "--runs", str(root / "runs"), *common)
        _ok("captions", "--max-length", "16", *common)
    return root


@pytest.fixture
def env(work, tmp_path, monkeypatch) -> Path:
    """A private copy of ``work`` as this test's cache, runs and samples roots."""
    return use_stack(work, tmp_path, monkeypatch)


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes, but the training lock (``train.lock`` names the
    last process that opened the run: a shown run was locked while it was read)."""
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != "train.lock")
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


# --------------------------------------------------------------------------- train --steps 0


@pytest.mark.parametrize("stage", ["dit", "t2i"])
def test_steps_0_is_refused_for_a_new_run_and_shows_a_trained_one(stage, env):
    train, run = TRAIN[stage], env / "runs" / "s"
    out = _error(ConfigError.exit_code, *train, "--steps", "0", "--name", "s")
    assert f"{stage}.steps is 0" in out and "has no checkpoint yet" in out
    assert "--steps N with N >= 1" in out
    assert not run.exists()  # nothing written: no config.json, header.json, log.txt, tb/

    _ok(*train, "--steps", "2", "--name", "s")
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step-0000002"
    before = _files(run)
    for steps in ("0", "1"):  # at or below the checkpoint's step: shown, nothing trained
        out = _ok(*train, "--steps", steps, "--name", "s")
        assert "None" not in out
        assert "step-0000002" in out and "│ 2 (nothing trained)" in out
        assert "nothing to train: run s is at step 2" in out and "N > 2" in out
        assert "loss/mse" in out and "speed" not in out  # the run's last losses, no rate
        assert _files(run) == before  # no checkpoint, config, header, log or metrics changed
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]

    out = _ok(*train, "--steps", "4", "--name", "s")  # the run's recorded steps were not cut
    assert "resumed at 2" in out and "speed" in out
    assert latest_checkpoint(run).name == "step-0000004"


def test_refine_steps_0_is_refused_for_a_new_run_before_its_triplets_are_built(env):
    """`refine train --steps 0` on a new run exited 0 with "checkpoint None", listed a run with
    no checkpoint, and `sample --refiner` then refused it."""
    triplets = sorted(p.name for p in (env / "cache").rglob("*") if "triplet" in p.name)
    args = ["refine", "train", "--pack-run", "pack-tiny", "--base-channels", "8", *CPU]
    out = _error(ConfigError.exit_code, *args, "--steps", "0", "--name", "r0")
    assert "refine.steps is 0" in out and "run r0 has no checkpoint yet" in out
    assert "--steps N with N >= 1" in out
    assert not (env / "runs" / "r0").exists()  # nothing written
    assert sorted(p.name for p in (env / "cache").rglob("*") if "triplet" in p.name) == triplets


@pytest.mark.parametrize(
    ("stage", "dropout", "null", "prompt"),
    [
        ("dit", "--class-dropout", "null class", []),
        ("t2i", "--caption-dropout", "empty caption", ["--prompt", "a red star"]),
    ],
)
def test_guidance_of_a_run_that_never_trained_its_null_condition_is_refused(
    stage, dropout, null, prompt, env
):
    """Trained with dropout 0, the null class / empty caption keeps its initial embedding: CFG
    steered every sample by an input the model never saw, and `sample --cfg 4` said nothing."""
    _ok(*TRAIN[stage], "--steps", "2", dropout, "0", "--name", "nd")
    sample = ["sample", "-r", "nd", "-n", "2", "--steps", "2", "--grid", "0", *CPU, *prompt]
    out = _error(ConfigError.exit_code, *sample, "--cfg", "4")
    assert (
        f"--cfg 4 guides against the {null}" in out and f"{dropout[2:].replace('-', '_')} 0" in out
    )
    assert "pass --cfg 1" in out
    assert not (env / "samples").exists() or not any((env / "samples").iterdir())
    _ok(*sample, "--cfg", "1")  # unguided: the model alone, as trained


def test_a_warm_up_longer_than_the_run_is_said(env):
    """`--steps 4 --warmup-steps 1000 --lr 1e-3` trained at 4e-6 without a word."""
    sched = ["--schedule", "warmup", "--warmup-steps", "1000", "--lr", "1e-3"]
    out = _ok(*TRAIN["dit"], "--steps", "4", *sched, "--name", "w")
    assert "Warning: the lr warm-up (1000 steps) is not over by this run's last step (4)" in out
    assert "the lr ends at 4e-06, not 0.001" in out
    out = _ok(*TRAIN["dit"], "--steps", "4", "--schedule", "warmup", "--warmup-steps", "2",
              "--lr", "1e-3", "--name", "w2")  # fmt: skip
    assert "warm-up" not in out


def test_the_progress_line_period_changes_on_resume(env, monkeypatch):
    """REPACKCTL_LOG_EVERY_S=5 on a resume was refused as "breaks exact continuation"."""
    _ok(*TRAIN["dit"], "--steps", "2", "--name", "le")
    monkeypatch.setenv("REPACKCTL_LOG_EVERY_S", "5")
    assert "resumed at 2" in _ok(*TRAIN["dit"], "--steps", "3", "--name", "le")


def test_a_dit_run_records_its_pack_checkpoint_and_decodes_its_grid(env):
    """The latents record their pack checkpoint as attrs["pack_checkpoint"]; the DiT read
    attrs["pack"]["checkpoint"]: every run printed "pack checkpoint not found: latent-space
    grid", drew latent colour blocks, and recorded pack.checkpoint null (sampling then took the
    pack run's newest checkpoint)."""
    flags = [a for a in TRAIN["dit"] if a not in ("--image-every", "0")]
    out = _ok(*flags, "--steps", "2", "--image-every", "2", "--name", "gr")
    assert "latent-space grid" not in out
    state = json.loads((latest_checkpoint(env / "runs" / "gr") / "state.json").read_text())
    ckpt = state["extra"]["pack"]["checkpoint"]
    # where `pack encode` found it (informational: this test works on a copy of that folder)
    assert ckpt and Path(ckpt).parts[-4:] == ("runs", "pack-tiny", "checkpoints", "step-0000002")
    assert (env / "runs" / "gr" / "images" / "step-0000002.png").is_file()


def test_a_run_whose_only_checkpoint_was_being_resaved_is_shown_not_refused(env):
    """Killed between the two renames of a re-save (``train.checkpoint.save_checkpoint``), the
    run's only checkpoint sits in temporaries. The engine puts it back at its start, but the
    stage looked for the newest checkpoint before that: `--steps 0` said the run had none."""
    train, run = TRAIN["dit"], env / "runs" / "re"
    _ok(*train, "--steps", "2", "--name", "re")
    ckpt = latest_checkpoint(run)
    shutil.copytree(ckpt, ckpt.with_name(f".tmp-{ckpt.name}-99"))  # the new folder, complete
    ckpt.rename(ckpt.with_name(f".tmp-old-{ckpt.name}-99"))  # the old one, set aside
    assert latest_checkpoint(run, warn=None) is None

    out = _ok(*train, "--steps", "0", "--name", "re")
    assert "restored checkpoint step-0000002, whose re-save was interrupted" in out
    assert "nothing to train: run re is at step 2" in out
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]


def test_steps_0_on_a_run_whose_checkpoint_does_not_verify_is_refused(env):
    train, run = TRAIN["dit"], env / "runs" / "bad"
    _ok(*train, "--steps", "2", "--name", "bad")
    weights = latest_checkpoint(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # a damaged checkpoint: the engine skips it
    before = _files(run)
    # its only checkpoint does not verify: refused as such (it is no new run of 0 steps)
    out = _error(CheckpointError.exit_code, *train, "--steps", "0", "--name", "bad")
    assert "none of the 1 checkpoint(s)" in out and "model.safetensors is corrupt" in out
    assert _files(run) == before  # nothing written, nothing deleted


def test_a_run_without_any_saved_checkpoint_is_an_error(env):
    """A learning rate of 1e30 makes step 2's loss non-finite: its save point is skipped and
    the run ends without a checkpoint, an Error (it exited 0, so `train … && sample …` went on)
    that says why."""
    out = _error(TrainingError.exit_code, *TRAIN["dit"], "--steps", "2", "--lr", "1e30",
                 "--name", "nan")  # fmt: skip
    assert latest_checkpoint(env / "runs" / "nan") is None
    assert "saved no checkpoint: each save point had non-finite values" in out, out


# --------------------------------------------------------------------------- t2i folder names


def _t2i_sample(*extra: str) -> str:
    args = ["sample", "-r", "t", "-n", "2", "--steps", "2", "--batch-size", "2", "--grid", "0"]
    return _ok(*args, *CPU, "--prompt", "a red star", *extra)


def test_t2i_sample_folders_carry_the_precision_and_resume_a_legacy_one(env):
    _ok(*TRAIN["t2i"], "--steps", "2", "--name", "t")
    samples = env / "samples"
    _t2i_sample()
    (fp32,) = samples.iterdir()
    _t2i_sample("--precision", "bf16")  # before: refused as "other settings (precision)"
    (bf16,) = set(samples.iterdir()) - {fp32}
    assert fp32.name.startswith("t--step-0000002--euler-2--cfg1--seed0--p")
    assert bf16.name == fp32.name.replace("--seed0--p", "--seed0--bf16--p")
    assert json.loads((bf16 / SETTINGS_JSON).read_text())["precision"] == "bf16"
    for flags in ((), ("--precision", "bf16")):  # each resumes its own folder
        assert "0 now, 2 already done" in _t2i_sample(*flags)

    # a bf16 folder made before the name carried the precision (here: --out at the old name)
    shutil.rmtree(bf16)
    shutil.move(str(fp32), str(env / "fp32"))
    legacy = fp32
    _t2i_sample("--precision", "bf16", "--out", str(legacy))
    (legacy / "000001.png").unlink()  # as if killed before the last image
    (legacy / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    assert "1 now, 1 already done" in _t2i_sample("--precision", "bf16")
    assert [p.name for p in samples.iterdir()] == [legacy.name]
    assert json.loads((legacy / PROTOCOL_JSON).read_text())["precision"] == "bf16"


# --------------------------------------------------------------------------- label spelling


def test_canonical_labels_gives_one_spelling_per_scheme():
    for given in ("3, 7", " 3,7,", "03,7", "3 ,7"):
        assert canonical_labels(given) == "3,7"
        assert label_scheme_name(given) == "classes:3,7"
    assert canonical_labels(" Random ") == "random" and canonical_labels("balanced") == "balanced"
    with pytest.raises(ConfigError, match="unknown label scheme"):
        canonical_labels("cats")


def _sample(stack: dict[str, str], samples: Path, *extra: str) -> str:
    args = ["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--batch-size", "2"]
    args += ["--grid", "0", *CPU, "--seed", "5", "--runs", stack["runs"]]
    return _ok(*args, "--samples", str(samples), *extra)


def test_label_lists_in_any_spelling_share_their_folder(tmp_path_factory, tmp_path):
    stack = shared_stack(tmp_path_factory)
    samples = tmp_path / "samples"
    _sample(stack, samples, "--labels", "3, 7")
    (folder,) = samples.iterdir()
    assert folder.name.endswith("--seed5--labels-3-7")
    assert json.loads((folder / SETTINGS_JSON).read_text())["labels"] == "3,7"
    card = json.loads((folder / PROTOCOL_JSON).read_text())
    assert card["label_scheme"] == "classes:3,7" and card["labels"] == [3, 7]
    for spelling in ("3,7", " 3,7,", "03, 7"):  # before: refused as "other settings (labels)"
        assert "0 now, 2 already done" in _sample(stack, samples, "--labels", spelling)
    assert [p.name for p in samples.iterdir()] == [folder.name]

    # a folder that recorded "3, 7" (before schemes were normalised) is resumed, not refused
    settings = json.loads((folder / SETTINGS_JSON).read_text())
    (folder / SETTINGS_JSON).write_text(json.dumps(settings | {"labels": "3, 7"}))
    (folder / "000001.png").unlink()
    (folder / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    assert "1 now, 1 already done" in _sample(stack, samples, "--labels", "3,7")
    assert [p.name for p in samples.iterdir()] == [folder.name]
