"""The `paper` presets' output cadence equals the official code's, counted in our updates.

Official sources (guanfangdong/RePack-then-Refine): ``stage2/configs/lightningdit_xl_repack_
f16d32_dinov3.yaml`` (``ckpt_every: 20000``, ``log_every: 5``, counted by ``stage2/train.py`` in
optimizer updates, as ours); ``stage1/train_stage1.py`` (``--save-every-n-steps 20000``,
``--image-log-every-n-steps 1000``, ``--image-log-max-images 4``) and ``stage3/configs/
refiner_offline.yaml`` (``every_n_train_steps: 5000``, ``log_every_n_steps: 50``). Stages 1 and 3
are Lightning modules with manual optimisation and two optimizers; Lightning's ``global_step``,
which the checkpoint and image callbacks count, advances once per optimizer step, so twice per
batch (Lightning issue 17958; the README already counts the discriminator's first update so).
Their log lines count batches (``_batches_that_stepped``). Each value below was another one
before; the settings layer is exercised for real (flags, ``--show-config``, the engine config).
"""

from __future__ import annotations

import pytest
from support.cli import cli_ok

from repackctl.settings import resolve_settings

#: Lightning optimizer steps per batch in the official stages 1 and 3 (generator + discriminator)
LIGHTNING_STEPS_PER_UPDATE = 2

# (section, setting, official value in our updates, what the official code says)
OFFICIAL = [
    ("dit", "ckpt_every", 20_000, "stage 2 config ckpt_every 20000 (updates)"),
    ("dit", "log_every", 5, "stage 2 config log_every 5 (updates)"),
    ("pack", "ckpt_every", 20_000 // LIGHTNING_STEPS_PER_UPDATE, "save_every_n_steps 20000"),
    ("pack", "image_every", 1000 // LIGHTNING_STEPS_PER_UPDATE, "image_log_every_n_steps 1000"),
    ("pack", "grid_images", 4, "image_log_max_images 4"),
    ("pack", "log_every", 50, "Lightning log_every_n_steps 50 (batches)"),
    ("refine", "ckpt_every", 5000 // LIGHTNING_STEPS_PER_UPDATE, "every_n_train_steps 5000"),
    ("refine", "log_every", 50, "log_every_n_steps 50 (batches)"),
]
# the values a paper preset filled in before (each is the official value misread)
BEFORE = {("dit", "ckpt_every"): 10_000, ("dit", "log_every"): 100}
BEFORE |= {("pack", "ckpt_every"): 500, ("pack", "grid_images"): 8}
BEFORE |= {("refine", "ckpt_every"): 5000}


def _paper(section: str):
    extra = {"pack.encoder": "dinov3"} if section == "pack" else {}
    return resolve_settings(None, {f"{section}.preset": "paper", **extra}, environ={})


@pytest.mark.parametrize(("section", "key", "value", "source"), OFFICIAL)
def test_the_paper_preset_has_the_official_cadence(section, key, value, source):
    resolved = _paper(section)
    got = getattr(getattr(resolved.settings, section), key)
    assert got == value, f"{section}.{key} = {got}, official {value} ({source})"
    if (section, key) in BEFORE:
        assert BEFORE[(section, key)] != value  # the old value was another one
        assert resolved.sources[f"{section}.{key}"] == "preset paper"


@pytest.mark.parametrize(
    ("command", "section", "expected"),
    [
        (("train", "dit"), "dit", ("ckpt_every = 20000", "log_every = 5")),
        (
            ("pack", "train", "--encoder", "dinov3"),
            "pack",
            ("ckpt_every = 10000", "grid_images = 4"),
        ),
        (("refine", "train"), "refine", ("ckpt_every = 2500",)),
    ],
)
def test_show_config_marks_the_values_as_the_paper_presets(command, section, expected):
    shown = cli_ok(*command, "--preset", "paper", "--show-config")
    for text in expected:
        assert f"{section}.{text} # preset paper" in shown, (text, shown)


def test_the_dit_engine_config_takes_the_paper_cadence_and_a_flag_still_wins():
    from repackctl.train.config import TrainConfig

    resolved = resolve_settings(None, {"dit.preset": "paper"}, environ={})
    config = TrainConfig.from_settings(
        resolved.settings, resolved.settings.dit, "unused", resolved.sources
    )
    assert (config.ckpt_every, config.log_every) == (20_000, 5)
    flags = {"dit.preset": "paper", "dit.ckpt_every": 7, "dit.log_every": 3}
    given = resolve_settings(None, flags, environ={})
    assert (given.settings.dit.ckpt_every, given.settings.dit.log_every) == (7, 3)
    assert given.sources["dit.ckpt_every"] == "flag"
    small = resolve_settings(None, {}, environ={}).settings.dit  # small keeps its own cadence
    assert (small.ckpt_every, small.log_every) == (500, 25)
