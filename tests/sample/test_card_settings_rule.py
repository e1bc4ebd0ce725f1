"""The one rule that ties a samples folder's card to its settings file (``card_differences``).

Only checkpoint, weights, seed, count, sampler and precision were compared: an edited
cfg_scale, guidance interval, steps, shift, labels, refiner or (text-to-image) prompts went
through `sample --out`, `evaluate` and `refine apply`. Each is now compared with what the
settings file records; fields either side does not record (older versions, `refine apply`
folders) are not, and labels are checked against the recorded scheme for any class count.
Pure function: no stack.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from repackctl.sample.folder import card_differences
from repackctl.sample.plan import make_labels

SAMPLER = {"kind": "euler", "steps": 4, "shift": 1.0, "t_last": 0.04}
SETTINGS = {
    "checkpoint_sha256": "a" * 64,
    "weights": "ema",
    "num": 10,
    "labels": "balanced",
    "seed": 0,
    "sampler": SAMPLER,
    "cfg": [2.0, 0.0, 1.0, 0],
    "guide": None,
    "refiner": None,
    "precision": "fp32",
}
CARD = {
    "steps": 4,
    "cfg_scale": 2.0,
    "cfg_interval": [0.0, 1.0],
    "cfg_legacy_channels": 0,
    "shift": 1.0,
    "label_scheme": "balanced",
    "seed": 0,
    "precision": "fp32",
    "checkpoint_sha256": "a" * 64,
    "num_samples": 10,
    "sampler_spec": SAMPLER,
    "weights": "ema",
    "guide": None,
    "refiner": None,
    "labels": make_labels(10, 10, "balanced", 0).tolist(),
}


def _edited(**fields) -> dict:
    card = copy.deepcopy(CARD)
    card.update(fields)
    return card


def test_the_folders_own_card_has_no_differences():
    assert card_differences(CARD, SETTINGS) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"cfg_scale": 4.0},
        {"cfg_interval": [0.1, 1.0]},
        {"cfg_legacy_channels": 3},
        {"steps": 8},
        {"shift": 3.0},
        {"guide": {"run": "g"}},
        {"refiner": {"checkpoint": "r", "sha256": "b" * 64}},
        {"label_scheme": "uniform-random"},
        {"labels": [1, *CARD["labels"][1:]]},
        {"labels": CARD["labels"][:-1]},
    ],
)
def test_each_recorded_setting_is_compared(fields):
    assert card_differences(_edited(**fields), SETTINGS) == list(fields)


@pytest.mark.parametrize("scheme", ["balanced", "random", "3,7", "3, 7"])
@pytest.mark.parametrize(("num", "classes"), [(10, 10), (4, 1000), (50, 3)])
def test_labels_of_the_recorded_scheme_pass_for_any_class_count(scheme, num, classes):
    if "," in scheme:
        classes = max(classes, 8)  # the ids 3 and 7 are classes of the DiT
    settings = {**SETTINGS, "labels": scheme, "num": num, "seed": 5}
    labels = make_labels(num, classes, scheme.replace(" ", ""), 5).tolist()
    card = _edited(labels=labels, num_samples=num, seed=5)
    card.pop("label_scheme")
    assert card_differences(card, settings) == []
    labels[-1] = 9 if labels[-1] != 9 else 2  # another class where the scheme put one
    assert card_differences({**card, "labels": labels}, settings) == ["labels"]


def test_t2i_prompts_are_checked_against_prompts_sha256():
    per_sample = ["a red star", "a red star"]
    sha = hashlib.sha256(json.dumps(per_sample, ensure_ascii=False).encode()).hexdigest()
    settings = {"prompts_sha256": sha, "cfg": [4.0, 0.0, 1.0], "num": 2}
    card = {"prompts": ["a red star"], "prompt_ids": [0, 0], "cfg_legacy_channels": 0}
    assert card_differences(card, settings) == []
    assert card_differences({**card, "prompts": ["a blue circle"]}, settings) == ["prompts"]
    assert card_differences({**card, "prompt_ids": [0, 1]}, settings) == ["prompts"]


def test_fields_one_side_does_not_record_are_not_compared():
    # a `refine apply` folder records its source, refiner and count only
    settings = {"source_sha256": "c" * 64, "refiner": "b" * 64, "num": 10}
    card = _edited(refiner={"checkpoint": "r", "sha256": "b" * 64}, cfg_scale=9.0)
    assert card_differences(card, settings) == []
    # an older t2i card records the refiner's path only
    assert card_differences({"refiner": "runs/ref"}, {"refiner": "b" * 64}) == []


def test_at_scale_one_the_interval_and_channels_are_not_compared():
    # folders that recorded the given interval at --cfg 1 are resumed, and their card then
    # records the default one (``settings_diff``): the same images, never refused
    settings = {**SETTINGS, "cfg": [1.0, 0.0, 0.7, 0]}
    card = _edited(cfg_scale=1.0, cfg_interval=[0.0, 1.0], cfg_legacy_channels=3)
    assert card_differences(card, settings) == []
    assert card_differences({**card, "cfg_scale": 4.0}, settings) == ["cfg_scale"]
