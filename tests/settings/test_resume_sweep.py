"""A resume never resets a setting the run started with (README: a resumed run keeps the values it
started with unless ``--allow-change`` says otherwise).

For each training command, ONE tiny real run is started with a non-default value of every
setting its command line takes that changes training (output-only ones — ckpt_every, keep_last,
log_every, image_every, … — and paths left out), then resumed WITHOUT those flags (``--steps``
+1): ``--show-config`` before the resume and the resumed run's ``config.json`` must hold every
value the run started with. The reverse: a resume that gives another value of a training
setting without ``--allow-change`` is refused, naming it, and writes nothing.

Also: a resume naming a value the run resolved when it started (the entry of -e/-n, the REPA
features) is no change; a run started before a setting existed is refused naming it.

Left out (cannot differ in a tiny CPU run, or no other valid value here):
  common  device (only the CPU), memory_gb/num_workers (how data is loaded); pack keeps seed 0
          (patchpix's features are drawn from it: another seed names features not extracted)
  pack    weights/layer (patchpix has neither), data (only the built-in data), split (the
          stack's val entry holds other features), method pca (it refuses the repack options
          given here), whiten (pca_samples, which needs it, is given), preset (paper is the GPU
          recipe; small is what auto resolves to), epochs (a length, as steps),
          perceptual_weight / watson_weight (refused without their weights files),
          lpips_weights / watson_weights / inception_weights (paths), eval_* / probe_epochs /
          encode_batch_size / grid_images (evaluation, output)
  dit     preset (paper/repa are GPU recipes), model (a name for arch/size/depth/... given
          here), compile (minutes on the CPU), parallel/prefetch (no effect on one CPU
          process), time_mu/time_sigma (refused with time_dist uniform: in the t2i run),
          drop_step/drop_lr (schedule step: in the t2i run), latents/entry/features (resolved
          from --pack-run: see SAME)
  t2i     text_encoder (minilm is the only one offline), text_features/entry/latents (the
          stack's only caption group / entry), arch/size/patch/no_shift/class_dropout (not
          t2i settings), time_dist/warmup_steps/min_lr (in the dit run), in_memory/
          buffer_blocks (in the dit run)
  refine  preset (paper is the GPU recipe), epochs (a length), lpips_weights (a path),
          refiner (an output of refine apply), triplet_batch (continuable: triplet building)
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.caches import shared_t2i_stack
from support.ckpt_state import started_before
from support.cli import cli_ok
from typer.testing import CliRunner

from repackctl.cli.app import app

runner = CliRunner()

# setting → (its flags at start, the value the run must keep); all differ from what the command
# resolves without them (the preset's or the default)
PACK: dict[str, tuple[list[str], Any]] = {
    "encoder": (["-e", "patchpix"], "patchpix"),
    "resolution": (["--resolution", "32"], 32),
    "num": (["-n", "32"], 32),
    "latent_channels": (["-c", "4"], 4),
    "projection_form": (["--projection-form", "official"], "official"),
    "ch": (["--ch", "8"], 8),
    "ch_mult": (["--ch-mult", "1", "--ch-mult", "2", "--ch-mult", "2"], [1, 2, 2]),
    "num_res_blocks": (["--num-res-blocks", "2"], 2),
    "attn_resolutions": (["--attn-resolutions", "8"], [8]),
    "pixel_shuffle": (["--pixel-shuffle", "2"], 2),
    "norm_groups": (["--norm-groups", "2"], 2),
    "disc_channels": (["--disc-channels", "8"], 8),
    "disc_layers": (["--disc-layers", "2"], 2),
    "disc_norm": (["--disc-norm", "batch"], "batch"),
    "batch_size": (["--batch-size", "4"], 4),
    "lr": (["--lr", "0.001"], 0.001),
    "disc_lr": (["--disc-lr", "0.0005"], 0.0005),
    "betas": (["--betas", "0.4", "0.95"], [0.4, 0.95]),
    "ema_decay": (["--ema-decay", "0.9"], 0.9),
    "clip_grad": (["--clip-grad", "1.0"], 1.0),
    "l1_weight": (["--l1-weight", "0.5"], 0.5),
    "ffl_weight": (["--ffl-weight", "0.5"], 0.5),
    "feature_weight": (["--feature-weight", "0.5"], 0.5),
    "scale_equivariance_weight": (["--scale-equivariance-weight", "0.5"], 0.5),
    "kl_weight": (["--kl-weight", "1e-05"], 1e-05),
    "gan_weight": (["--gan-weight", "0.25"], 0.25),
    "gan_start": (["--gan-start", "0"], 0),
    "disc_lead": (["--disc-lead", "1"], 1),
    "adaptive_gan": (["--adaptive-gan", "official"], "official"),
    "pca_samples": (["--pca-samples", "64"], 64),
    "in_memory": (["--no-in-memory"], False),
    "buffer_blocks": (["--buffer-blocks", "2"], 2),
}
DIT: dict[str, tuple[list[str], Any]] = {
    "pack_run": (["--pack-run", "pack-tiny"], "pack-tiny"),
    "latent_sampling": (["--latent-sampling", "sample"], "sample"),
    "flip": (["--no-flip"], False),
    "arch": (["--arch", "sit"], "sit"),
    "size": (["--size", "s"], "s"),
    "patch": (["--patch", "2"], 2),
    "depth": (["--depth", "2"], 2),
    "width": (["--width", "32"], 32),
    "heads": (["--heads", "2"], 2),
    "qk_norm": (["--qk-norm"], True),
    "no_shift": (["--no-shift"], True),
    "class_dropout": (["--class-dropout", "0.2"], 0.2),
    "grad_checkpointing": (["--grad-checkpointing"], True),
    "time_dist": (["--time-dist", "uniform"], "uniform"),
    "time_shift": (["--time-shift", "2.0"], 2.0),
    "cos_weight": (["--cos-weight", "0.5"], 0.5),
    "cos_norm_floor": (["--cos-norm-floor", "0.02"], 0.02),
    "repa_weight": (["--repa-weight", "0.25"], 0.25),
    "repa_depth": (["--repa-depth", "1"], 1),
    "repa_stop_step": (["--repa-stop-step", "50"], 50),
    "repa_hidden": (["--repa-hidden", "16"], 16),
    "global_batch": (["--global-batch", "8"], 8),
    "grad_accum": (["--grad-accum", "2"], 2),
    "lr": (["--lr", "0.0003"], 0.0003),
    "beta1": (["--beta1", "0.8"], 0.8),
    "beta2": (["--beta2", "0.9"], 0.9),
    "weight_decay": (["--weight-decay", "0.01"], 0.01),
    "schedule": (["--schedule", "cosine"], "cosine"),
    "warmup_steps": (["--warmup-steps", "1"], 1),
    "min_lr": (["--min-lr", "1e-05"], 1e-05),
    "ema_decay": (["--ema-decay", "0.99"], 0.99),
    "ema_warmup": (["--no-ema-warmup"], False),
    "clip_grad": (["--clip-grad", "1.0"], 1.0),
    "kernels": (["--kernels", "eager"], "eager"),
    "tf32": (["--no-tf32"], False),
    # continuable, but they order the samples: a resume that reset them would be refused
    "in_memory": (["--no-in-memory"], False),
    "buffer_blocks": (["--buffer-blocks", "2"], 2),
}
T2I: dict[str, tuple[list[str], Any]] = {
    **{k: DIT[k] for k in ("latent_sampling", "depth", "width", "heads", "qk_norm")},
    **{k: DIT[k] for k in ("grad_checkpointing",)},
    "time_mu": (["--time-mu", "0.5"], 0.5),
    "time_sigma": (["--time-sigma", "0.8"], 0.8),
    **{k: DIT[k] for k in ("time_shift", "cos_weight", "cos_norm_floor", "global_batch")},
    **{k: DIT[k] for k in ("grad_accum", "lr", "beta1", "beta2", "weight_decay", "ema_decay")},
    **{k: DIT[k] for k in ("ema_warmup", "clip_grad", "kernels", "tf32")},
    **{k: DIT[k] for k in ("repa_weight", "repa_depth", "repa_stop_step", "repa_hidden")},
    "pack_run": (["--pack-run", "pack-tiny"], "pack-tiny"),
    "flip": (["--flip"], True),
    "schedule": (["--schedule", "step"], "step"),
    "drop_step": (["--drop-step", "1"], 1),
    "drop_lr": (["--drop-lr", "5e-05"], 5e-05),
    "caption_dropout": (["--caption-dropout", "0.2"], 0.2),
}
REFINE: dict[str, tuple[list[str], Any]] = {
    "pack_run": (["--pack-run", "pack-tiny"], "pack-tiny"),
    "noise": (["--noise", "0.1"], 0.1),
    "flip": (["--no-flip"], False),
    "batch_size": (["--batch-size", "4"], 4),
    "lr": (["--lr", "0.0002"], 0.0002),
    "base_channels": (["--base-channels", "16"], 16),
    "output": (["--output", "residual"], "residual"),
    "l1_weight": (["--l1-weight", "0.5"], 0.5),
    "gan_weight": (["--gan-weight", "0.25"], 0.25),
    "feature_weight": (["--feature-weight", "0.1"], 0.1),
    "norm_groups": (["--norm-groups", "2"], 2),
    "disc_channels": (["--disc-channels", "8"], 8),
    "disc_norm": (["--disc-norm", "batch"], "batch"),
    "disc_init": (["--disc-init", "pytorch"], "pytorch"),
    "ema_decay": (["--ema-decay", "0.9"], 0.9),
}
COMMON: dict[str, tuple[list[str], Any]] = {
    "seed": (["--seed", "7"], 7),
    "precision": (["--precision", "bf16"], "bf16"),
}


def _common(section: str) -> dict[str, tuple[list[str], Any]]:
    """The common settings a section's run starts with: the pack run keeps seed 0 (patchpix's
    features are drawn from the seed: another one names features the stack does not hold)."""
    return {k: v for k, v in COMMON.items() if k != "seed"} if section == "pack" else COMMON


# section → (command, run name, steps at start, more flags of a resume, settings)
CASES: dict[str, tuple[list[str], str, int, list[str], dict]] = {
    "pack": (["pack", "train"], "pS", 1, [], PACK),
    # cosine spans the steps: more steps change the lr of the done ones (allowed here)
    "dit": (["train", "dit"], "dS", 1, ["--allow-change", "steps"], DIT),
    "t2i": (["train", "t2i"], "tS", 1, [], T2I),
    "refine": (["refine", "train"], "rS", 1, [], REFINE),
}
OUTPUT = {
    "pack": ["--image-every", "0", "--log-every", "1", "--ckpt-every", "1"],
    "dit": ["--image-every", "0", "--log-every", "1", "--ckpt-every", "1"],
    "t2i": ["--image-every", "0", "--log-every", "1", "--ckpt-every", "1"],
    "refine": ["--log-every", "1", "--ckpt-every", "1"],
}


def _flags(settings: dict[str, tuple[list[str], Any]]) -> list[str]:
    return [flag for flags, _ in settings.values() for flag in flags]


def _invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


def _shown(output: str, section: str) -> dict[str, Any]:
    """``--show-config`` lines (``key = value # source``) → setting → value."""
    out = {}
    for line in output.splitlines():
        key, sep, rest = line.partition(" = ")
        if sep and not line.startswith("#"):
            value = rest.rsplit(" # ", 1)[0].strip()
            out[key.strip().removeprefix(f"{section}.")] = ast.literal_eval(value)
    return out


def _recorded(runs: Path, name: str) -> dict[str, Any]:
    config = json.loads((runs / name / "config.json").read_text())
    return config["extra"]["settings"]["values"]


def _use(work: Path, mp: pytest.MonkeyPatch) -> None:
    """``work``'s cache, runs and samples as REPACKCTL_*, on the CPU, without loader workers."""
    env = {"CACHE": work / "cache", "RUNS": work / "runs", "SAMPLES": work / "samples"}
    for key, value in {**env, "NUM_WORKERS": "0", "DEVICE": "cpu"}.items():
        mp.setenv(f"REPACKCTL_{key}", str(value))


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Path:
    """A copy of the shared t2i stack, each command's run started there with every value above
    (1 step); returns the copy."""
    from conftest import one_torch_thread

    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("k8") / "w")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        _use(work, mp)
        for section, (command, name, steps, _, settings) in CASES.items():
            argv = [*command, "--name", name, "--steps", str(steps), *OUTPUT[section]]
            cli_ok(*argv, *_flags(settings), *_flags(_common(section)))
    return work


@pytest.fixture
def runs(started, monkeypatch) -> Iterator[Path]:
    """The started runs' folder, set (with their cache) as this test's roots."""
    from conftest import one_torch_thread

    _use(started, monkeypatch)
    with one_torch_thread():
        yield started / "runs"


def _kept(section: str, argv: list[str], runs: Path) -> dict[str, tuple[Any, Any, Any]]:
    """Each setting of ``section``'s run that ``--show-config`` of a resume ``argv`` shows, or its
    record holds, with another value than the run started with: → (started, shown, recorded)."""
    command, name, _, _, settings = CASES[section]
    res = runner.invoke(app, [*command, "--name", name, *argv, "--show-config"])
    assert res.exit_code == 0, res.output
    shown, recorded = _shown(res.output, section), _recorded(runs, name)
    wrong = {}
    for key, (_, value) in {**settings, **_common(section)}.items():
        now = recorded.get(key) if key in COMMON else recorded[section].get(key)
        if now != value or shown.get(key) != value:
            wrong[key] = (value, shown.get(key), now)
    return wrong


@pytest.mark.parametrize("section", list(CASES))
def test_a_resume_without_the_flags_keeps_every_value_the_run_started_with(runs, section):
    command, name, steps, extra, _ = CASES[section]
    resume = ["--steps", str(steps + 1), *extra]
    assert _kept(section, resume, runs) == {}, "started with → shown / recorded"
    out = cli_ok(*command, "--name", name, *resume)  # a resume as started is not refused
    assert "resumed from" in out and f"(step {steps})" in out, out
    # the resumed run's record, and what a second resume would take from it
    again = ["--steps", str(steps + 2), *extra]
    assert _kept(section, again, runs) == {}, "started with → shown / recorded"


# (section, setting, another value's flags): a sample of breaking changes given on resume
CHANGES = [
    ("pack", "lr", ["--lr", "0.003"]),
    ("pack", "pca_samples", ["--pca-samples", "100"]),
    ("pack", "buffer_blocks", ["--buffer-blocks", "3"]),
    ("dit", "precision", ["--precision", "fp32"]),
    ("dit", "repa_depth", ["--repa-depth", "2"]),
    ("t2i", "seed", ["--seed", "8"]),
    ("refine", "output", ["--output", "image"]),
    ("pack", "disc_lead", ["--disc-lead", "0"]),
    ("pack", "ch_mult", ["--ch-mult", "1", "--ch-mult", "1", "--ch-mult", "2"]),
    ("dit", "time_shift", ["--time-shift", "1.0"]),
    ("dit", "latent_sampling", ["--latent-sampling", "mean"]),
    ("t2i", "caption_dropout", ["--caption-dropout", "0.3"]),
    ("t2i", "drop_lr", ["--drop-lr", "1e-05"]),
    ("refine", "noise", ["--noise", "0.0"]),
    ("refine", "disc_init", ["--disc-init", "dcgan"]),
]


@pytest.mark.parametrize(("section", "key", "flags"), CHANGES)
def test_a_resume_given_another_training_value_is_refused_naming_it(runs, section, key, flags):
    command, name, steps, extra, _ = CASES[section]
    before = (runs / name / "config.json").read_bytes()
    code, out = _invoke(*command, "--name", name, "--steps", "9", *extra, *flags)
    assert code != 0 and "Error:" in out and "Hint:" in out and "Traceback" not in out, out
    assert key in out, out
    assert (runs / name / "config.json").read_bytes() == before


# (section, a value the run resolved when it started, given now as it was)
SAME = [
    ("pack", ["--entry", "builtin-n32--train--32px"]),
    ("pack", ["--features", "patchpix--final--32px--c1fa138fdb"]),
    ("dit", ["--features", "patchpix--final--32px--c1fa138fdb"]),
    ("t2i", ["--features", "patchpix--final--32px--c1fa138fdb"]),
    ("t2i", ["--entry", "builtin-n32--train--32px"]),
    ("refine", ["--entry", "builtin-n32--train--32px"]),
]


@pytest.mark.parametrize(("section", "flags"), SAME)
def test_a_resume_naming_what_the_run_resolved_at_start_is_no_change(runs, section, flags):
    """Refused before as a change ``None → 'E'`` (what the run trained on, as its checkpoint
    records it)."""
    command, name, _, extra, _ = CASES[section]
    out = cli_ok(*command, "--name", name, "--steps", "9", *extra, *flags, "--show-config")
    assert f"{section}.{flags[0][2:]} = {flags[1]!r}" in out, out


# a run started before these settings existed, with the small preset (which now gives them
# another value): section → (its start, the settings, their checkpoint records, the flag the
# refusal names to resume as the run trained)
BEFORE = {
    "pack": (
        ["pack", "train", "-e", "patchpix", "--resolution", "32", "-n", "32", "-c", "4"],
        ["feature_weight", "scale_equivariance_weight"],
        ["plan.loss.feature", "plan.loss.scale_equivariance"],
        "--feature-weight 0.0",
    ),
    "refine": (
        ["refine", "train", "--pack-run", "pack-tiny"],
        ["norm_groups"],
        ["refiner_config.max_groups"],
        "--norm-groups 32",
    ),
}


@pytest.mark.parametrize("section", list(BEFORE))
def test_a_run_started_before_a_setting_existed_is_refused_naming_it(runs, section):
    """The preset's value of a setting the run did not have is refused, with the flag that
    resumes it as it trained; the refiner's refusal said only "another network config"."""
    start, names, recorded, flag = BEFORE[section]
    name = f"{section}-old"
    cli_ok(*start, "--name", name, "--batch-size", "4", "--log-every", "1", "--steps", "1")
    started_before(runs / name, section, names, recorded)
    before = sorted(p.name for p in (runs / name / "checkpoints").iterdir())
    code, out = _invoke(start[0], start[1], "--name", name, "--steps", "2")
    assert code != 0 and "Error:" in out and "Traceback" not in out, out
    assert flag in out and names[0].split("_")[0] in out, out
    assert sorted(p.name for p in (runs / name / "checkpoints").iterdir()) == before


def test_an_allowed_change_of_the_refiner_network_is_refused_naming_the_setting(runs):
    """``--allow-change`` let the settings layer pass it, and the network check's refusal said
    only "another network config": the settings layer refuses it, as without the allowance."""
    command, name, _, _, _ = CASES["refine"]
    before = (runs / name / "config.json").read_bytes()
    code, out = _invoke(*command, "--name", name, "--steps", "9", "--base-channels", "8",
                        "--allow-change", "base_channels")  # fmt: skip
    assert code != 0 and "Error:" in out and "Traceback" not in out, out
    assert "base_channels: 16 → 8" in out, out
    assert "refine.base_channels cannot change on resume" in out, out
    assert (runs / name / "config.json").read_bytes() == before
