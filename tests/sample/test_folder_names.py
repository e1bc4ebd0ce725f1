"""Sample folder names carry every recorded setting that changes the images (shift, labels,
precision) when it is not at its default: changing only it gives another folder instead of a
refusal, default names are unchanged, each folder resumes, and folders made before the name
carried a setting are resumed where they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.sample.folder import legacy_sample_folder_name, sample_folder_name
from repackctl.sample.plan import GenerationPlan
from repackctl.transport.samplers import SamplerSpec

DEFAULT = "dit-tiny--step-0000005--euler-2--cfg1--seed5"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _plan(shift: float = 1.0, cfg: float = 1.0) -> GenerationPlan:
    return GenerationPlan(SamplerSpec("euler", 50, shift), cfg, 0.0, 1.0, 0)


def test_default_name_is_unchanged_and_each_setting_adds_a_suffix() -> None:
    args = ("dit", "step-0000010", _plan(), 0, "ema", None)
    assert sample_folder_name(*args) == "dit--step-0000010--euler-50--cfg1--seed0"
    assert sample_folder_name(*args) == legacy_sample_folder_name(*args)
    assert sample_folder_name("dit", "step-0000010", _plan(shift=3.0), 0, "ema", None) == (
        "dit--step-0000010--euler-50-shift3--cfg1--seed0"
    )
    shifted = ("dit", "step-0000010", _plan(shift=1 / 0.3, cfg=4.0), 0, "ema", "runs/refine-x")
    assert sample_folder_name(*shifted, labels="3,7", precision="bf16") == (
        "dit--step-0000010--euler-50-shift3.33333--cfg4--seed0--labels-3-7--bf16--refine-x"
    )
    assert (
        legacy_sample_folder_name(*shifted) == "dit--step-0000010--euler-50--cfg4--seed0--refine-x"
    )
    assert sample_folder_name(*args, labels="random").endswith("--seed0--labels-random")
    assert sample_folder_name(*args, precision="fp16").endswith("--seed0--fp16")


def test_a_long_class_list_is_named_by_its_hash() -> None:
    args = ("dit", "step-0000010", _plan(), 0, "ema", None)
    many = ",".join(str(c) for c in range(100))
    name = sample_folder_name(*args, labels=many)
    assert name.endswith("--labels-100cls-" + name[-8:]) and len(name) < 80
    other = sample_folder_name(*args, labels=",".join(str(c) for c in range(1, 101)))
    assert other != name
    with pytest.raises(ConfigError, match="unknown label scheme"):
        sample_folder_name(*args, labels="cats")


def _sample(stack: dict[str, str], samples: Path, *extra: str):
    args = ["sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--batch-size", "2"]
    args += ["--grid", "0", "--device", "cpu", "--seed", "5", "--runs", stack["runs"]]
    return CliRunner().invoke(app, [*args, "--samples", str(samples), *extra])


def _card(folder: Path) -> dict:
    return json.loads((folder / PROTOCOL_JSON).read_text())


def test_shift_and_labels_get_their_own_folders_and_resume(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    variants = {
        DEFAULT: (),
        f"{DEFAULT.replace('euler-2', 'euler-2-shift3')}": ("--shift", "3"),
        f"{DEFAULT}--labels-random": ("--labels", "random"),
        f"{DEFAULT}--labels-3-7": ("--labels", "3,7"),
    }
    for flags in variants.values():  # before, every run after the first was refused
        r = _sample(stack, samples, *flags)
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in samples.iterdir()) == sorted(variants)
    cards = {name: _card(samples / name) for name in variants}
    assert [cards[n]["shift"] for n in variants] == [1.0, 3.0, 1.0, 1.0]
    assert [cards[n]["label_scheme"] for n in variants] == [
        "balanced", "balanced", "uniform-random", "classes:3,7"
    ]  # fmt: skip
    assert cards[f"{DEFAULT}--labels-3-7"]["labels"] == [3, 7]
    assert cards[DEFAULT]["labels"] == [0, 5]  # balanced: N/classes each, in class order
    for name, flags in variants.items():  # each resumes: nothing left to write
        r = _sample(stack, samples, *flags)
        assert r.exit_code == 0, r.output
        assert "0 now, 2 already done" in r.output
        assert json.loads((samples / name / SETTINGS_JSON).read_text())["labels"] == (
            dict(zip(flags[::2], flags[1::2], strict=True)).get("--labels", "balanced")
        )
    assert sorted(p.name for p in samples.iterdir()) == sorted(variants)


def test_a_folder_with_the_legacy_name_is_resumed_where_it_is(stack, tmp_path) -> None:
    """A shift-3 folder made before the name carried the shift (here: written with --out under
    the old name) is finished in place, not started again under the new name."""
    samples = tmp_path / "samples"
    legacy = samples / DEFAULT
    r = _sample(stack, tmp_path / "unused", "--shift", "3", "--out", str(legacy))
    assert r.exit_code == 0, r.output
    (legacy / "000001.png").unlink()  # as if killed before the last image
    (legacy / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    r = _sample(stack, samples, "--shift", "3")
    assert r.exit_code == 0 and "1 now, 1 already done" in r.output, r.output
    assert [p.name for p in samples.iterdir()] == [DEFAULT] and _card(legacy)["shift"] == 3.0
    # other settings than the legacy folder's: the new name, the legacy folder untouched
    r = _sample(stack, samples, "--shift", "2")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in samples.iterdir()) == sorted(
        [DEFAULT, DEFAULT.replace("euler-2", "euler-2-shift2")]
    )
    assert _card(legacy)["shift"] == 3.0


def test_another_num_is_refused_with_the_num_to_pass(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    assert _sample(stack, samples).exit_code == 0
    r = _sample(stack, samples, "-n", "3")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "Error:" in r.output and "other settings (num: " in r.output
    assert "pass --num 2" in " ".join(r.output.split())
    assert sorted(p.name for p in (samples / DEFAULT).glob("0*.png")) == [
        "000000.png",
        "000001.png",
    ]
