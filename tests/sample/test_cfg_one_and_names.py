"""Guidance at scale 1 is no guidance: its interval and channels change neither the images, the
folder name, the recorded settings nor the card; folders that recorded them (written before they
were reset at scale 1) still resume. And the two folder-name functions share one ``FolderKey``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from support.stack import _settings, guide_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.sample.folder import FolderKey, legacy_sample_folder_name, sample_folder_name
from repackctl.sample.plan import GenerationPlan, resolve_plan
from repackctl.sample.refine import _generation_diff
from repackctl.transport.samplers import SamplerSpec

CFG1 = "dit-tiny--step-0000005--euler-2--cfg1--seed5"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def _sample(stack: dict[str, str], samples: Path, *extra: str, num: int = 4):
    args = ["sample", "-r", "dit-tiny", "-n", str(num), "--steps", "2", "--batch-size", "2"]
    args += ["--grid", "0", "--device", "cpu", "--seed", "5", "--runs", stack["runs"]]
    r = CliRunner().invoke(app, [*args, "--samples", str(samples), *extra])
    assert "Traceback" not in r.output, r.output
    return r


def _arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "samples.npz", allow_pickle=False) as z:
        images = z["arr_0"]
    return images, np.load(folder / "latents.npy")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _record_old_interval(folder: Path, lo: float, hi: float) -> None:
    """Rewrite ``folder``'s settings and card as repackctl wrote them before the interval was
    reset at scale 1 (it recorded the interval that was given)."""
    settings = _json(folder / SETTINGS_JSON)
    settings["cfg"] = [settings["cfg"][0], lo, hi, 0]
    (folder / SETTINGS_JSON).write_text(json.dumps(settings))
    card = _json(folder / PROTOCOL_JSON)
    card["cfg_interval"] = [lo, hi]
    (folder / PROTOCOL_JSON).write_text(json.dumps(card))


def test_at_cfg_one_the_interval_shares_the_folder_and_the_images(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    r = _sample(stack, samples, "--cfg", "1", "--cfg-t-hi", "0.7", "--cfg-channels", "3")
    assert r.exit_code == 0, r.output
    assert [p.name for p in samples.iterdir()] == [CFG1]  # no -t / -ch suffix
    folder = samples / CFG1
    for png in ("000002.png", "000003.png"):
        (folder / png).unlink()  # as if killed before the second batch
    (folder / "samples.npz").unlink()  # else the PNGs are restored from it, not sampled
    # before: refused ("holds samples made with other settings (cfg)")
    r = _sample(stack, samples, "--cfg", "1")
    assert r.exit_code == 0 and "2 now, 2 already done" in r.output, r.output
    r = _sample(stack, samples, "--cfg", "1", "--cfg-t-lo", "0.3")
    assert r.exit_code == 0 and "0 now, 4 already done" in r.output, r.output
    assert [p.name for p in samples.iterdir()] == [CFG1]
    assert _json(folder / SETTINGS_JSON)["cfg"] == [1.0, 0.0, 1.0, 0]
    card = _json(folder / PROTOCOL_JSON)
    assert card["cfg_interval"] == [0.0, 1.0] and card["cfg_legacy_channels"] == 0
    assert card["setting_sources"]["cfg_t_lo"] == "not applicable at cfg 1 (setting 0.3 ignored)"
    assert card["setting_sources"]["cfg_t_hi"] == "not applicable at cfg 1"
    # the run header says where the precision came from (it said "settings" whatever gave it)
    assert card["run_header"]["precision_source"] == "default"
    # bit-identical to an uninterrupted run with the default interval
    r = _sample(stack, tmp_path / "unused", "--cfg", "1", "--out", str(tmp_path / "plain"))
    assert r.exit_code == 0, r.output
    for mixed, plain in zip(_arrays(folder), _arrays(tmp_path / "plain"), strict=True):
        assert mixed.dtype == plain.dtype and np.array_equal(mixed, plain)


def test_a_guided_interval_still_gets_its_own_folder(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    for flags in (("--cfg", "4"), ("--cfg", "4", "--cfg-t-hi", "0.7")):
        assert _sample(stack, samples, *flags, num=2).exit_code == 0
    cfg4 = CFG1.replace("cfg1", "cfg4")
    names = sorted(p.name for p in samples.iterdir())
    assert names == [cfg4, cfg4.replace("cfg4", "cfg4-t0-0.7")]
    all_steps, interval = (_arrays(samples / n)[1] for n in names)
    assert not np.array_equal(all_steps, interval)
    assert _json(samples / names[1] / PROTOCOL_JSON)["cfg_interval"] == [0.0, 0.7]
    # a guided folder of another interval is still refused (--out bypasses the name)
    r = _sample(stack, samples, "--cfg", "4", "--out", str(samples / names[1]), num=2)
    assert (
        r.exit_code != 0
        and "Error:" in r.output
        and "other settings (cfg: [4.0, 0.0, 0.7, 0] there, [4.0, 0.0, 1.0, 0] now)" in r.output
    )
    assert "pass another --out" in r.output  # the hint fits a command that passed --out already


def test_a_folder_that_recorded_the_interval_at_cfg_one_still_resumes(stack, tmp_path) -> None:
    samples = tmp_path / "samples"
    assert _sample(stack, samples, "--cfg", "1", "--cfg-t-hi", "0.7").exit_code == 0
    folder = samples / CFG1
    reference = _arrays(folder)
    _record_old_interval(folder, 0.0, 0.7)
    recorded = (folder / SETTINGS_JSON).read_text()
    (folder / "000003.png").unlink()
    (folder / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    r = _sample(stack, samples, "--cfg", "1", "--cfg-t-hi", "0.7")  # the same flags
    assert r.exit_code == 0 and "1 now, 3 already done" in r.output, r.output
    r = _sample(stack, samples, "--cfg", "1")  # the default interval: the same images
    assert r.exit_code == 0 and "0 now, 4 already done" in r.output, r.output
    assert (folder / SETTINGS_JSON).read_text() == recorded  # kept as it was written
    for now, before in zip(_arrays(folder), reference, strict=True):
        assert np.array_equal(now, before)
    assert [p.name for p in samples.iterdir()] == [CFG1]


def test_an_old_legacy_named_folder_at_cfg_one_resumes_in_place(stack, tmp_path) -> None:
    """Shift 3 before the name carried it, with the interval it recorded at scale 1."""
    samples = tmp_path / "samples"
    legacy = samples / CFG1
    flags = ("--shift", "3", "--cfg", "1", "--cfg-t-hi", "0.7")
    r = _sample(stack, tmp_path / "unused", *flags, "--out", str(legacy), num=2)
    assert r.exit_code == 0, r.output
    _record_old_interval(legacy, 0.0, 0.7)
    (legacy / "000001.png").unlink()
    (legacy / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    r = _sample(stack, samples, *flags, num=2)
    assert r.exit_code == 0 and "1 now, 1 already done" in r.output, r.output
    assert [p.name for p in samples.iterdir()] == [CFG1]


def test_the_plan_resets_guidance_only_settings_at_scale_one(stack) -> None:
    one = _settings(stack, run="dit-tiny", cfg=1.0, cfg_t_hi=0.7, cfg_channels=3).sample
    plan = resolve_plan(one, {})
    assert (plan.t_lo, plan.t_hi, plan.legacy_channels) == (0.0, 1.0, 0)
    assert plan.sources["cfg_channels"] == "not applicable at cfg 1 (setting 3 ignored)"
    official = resolve_plan(_settings(stack, run="dit-tiny", cfg=1.0).sample, {"cfg_t_hi": 0.89})
    assert official.sources["cfg_t_hi"] == "not applicable at cfg 1 (sampling.json 0.89 ignored)"
    four = resolve_plan(_settings(stack, run="dit-tiny", cfg=4.0, cfg_t_hi=0.7).sample, {})
    assert (four.t_hi, four.sources["cfg_t_hi"]) == (0.7, "setting")


def test_refined_cards_compare_no_interval_at_scale_one() -> None:
    card = {"cfg_scale": 1.0, "cfg_interval": [0.0, 1.0], "cfg_legacy_channels": 0, "seed": 5}
    old = dict(card, cfg_interval=[0.0, 0.7], cfg_legacy_channels=3)
    assert _generation_diff(old, card) == []
    guided = dict(card, cfg_scale=4.0)
    assert _generation_diff(dict(old, cfg_scale=4.0), guided) == [
        "cfg_interval",
        "cfg_legacy_channels",
    ]
    assert _generation_diff(dict(old, seed=6), card) == ["seed"]


def _plan(shift: float = 1.0, cfg: float = 4.0) -> GenerationPlan:
    return GenerationPlan(SamplerSpec("euler", 50, shift), cfg, 0.0, 0.8, 3)


@pytest.mark.parametrize(
    "options",
    [{}, {"labels": "random"}, {"precision": "bf16"}, {"labels": "3,7", "precision": "fp16"}],
)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_one_key_names_both_folders(options: dict, shift: float) -> None:
    which = ("dit", "step-0000010", _plan(shift), 0, "raw", "runs/refine-x", "g-step-1")
    key = FolderKey(*which, **options)
    assert sample_folder_name(*which, **options) == key.name()
    assert legacy_sample_folder_name(*which) == key.legacy_name()
    assert key.legacy_name() == (
        "dit--step-0000010-raw--euler-50--cfg4-t0-0.8-ch3--seed0--guide-g-step-1--refine-x"
    )
    defaults = shift == 1.0 and not options
    assert (key.name() == key.legacy_name()) == defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.seed = 1  # type: ignore[misc]


def test_autoguidance_at_scale_one_is_refused(stack, tmp_path) -> None:
    """Autoguidance at scale 1 returns the main model's velocity without calling its guide
    (``AutoGuidance``): `--guide` at `--cfg 1` sampled the plain model under a `--guide-…`
    folder, its card counting two calls a step. Now refused; at scale 4 the card counts both."""
    from repackctl.errors import ConfigError
    from repackctl.sample.run import run_sample

    flags = {"guide": guide_run(stack), "guide_checkpoint": "step-0000005"}
    flags["out"] = str(tmp_path / "g")
    settings = _settings(stack, run="dit-tiny", num=2, steps=2, cfg=1.0, **flags)
    with pytest.raises(ConfigError, match="--cfg 1") as e:
        run_sample(settings.model_copy(update={"seed": 13}))
    assert "--cfg 2" in e.value.hint and not (tmp_path / "g").exists()
    settings = _settings(stack, run="dit-tiny", num=2, steps=2, cfg=4.0, **flags)
    out = run_sample(settings.model_copy(update={"seed": 13})).out_dir
    assert _json(out / PROTOCOL_JSON)["nfe"] == 4  # main + guide on both steps
