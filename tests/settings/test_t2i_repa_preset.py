"""`train t2i --preset repa`: REPA's text-to-image recipe, value for value.

`train t2i` had no presets: a REPA user passed REPA's recipe flag by flag, and its model (depth
24, width 768, 24 heads, c = emb(t)) was no registered id. The preset fills the values of
sihyun-yu/REPA at commit 67f714503e3892f993844aab088ffc5791c92613 (``OFFICIAL`` below names the
file:line of each), marks them ``# preset repa`` in ``--show-config``, and a resumed run keeps
them; its run gets REPA's text-to-image sampling settings as ``sampling.json``. Without
``--preset`` nothing changes.

Real components: the settings layer, the command line through Typer's CliRunner, a toy t2i
stack (extract → pack → captions) in tmp folders and a real 1-step run of a shrunk model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok

from repackctl.dit.run import repa_t2i_sampling_defaults
from repackctl.models.mmdit import MMDIT_FACTORIES, mmdit_repa_2, mmdit_repa_depth
from repackctl.registry import registry
from repackctl.settings import Settings, resolve_settings
from repackctl.settings.t2i import T2iSettings

# REPA's text-to-image recipe; paths are of sihyun-yu/REPA at the commit above
OFFICIAL = {
    # models/mmdit.py:519 depth 24, :556 hidden 32·depth, :557 heads = depth, :517 patch 2,
    # :520 mlp ratio 4, :535 qkv bias, :522 no pooled text (c = emb(t)): mmdit-repa-2
    "model": "mmdit-repa-2",
    "qk_norm": False,  # train_t2i.py:390 --qk-norm False; models/mmdit.py:534 qk_norm None
    "text_encoder": "clip",  # models/mmdit.py:570 768-wide context (U-ViT's CLIP ViT-L/14)
    "caption_dropout": 0.1,  # dataset.py:172 p_uncond=0.1, :167 per sample, :178 empty_context
    "latent_sampling": "sample",  # train_t2i.py:281 sample_posterior every step
    "flip": False,  # dataset.py:145-153 reads each latent as stored (no flip)
    "time_dist": "uniform",  # loss.py:57 torch.rand (train_t2i.py:425 --weighting uniform)
    "time_shift": 1.0,  # loss.py:57 t used as drawn
    "cos_weight": 0.0,  # loss.py:78 plain MSE on v (loss.py:74, train_t2i.py:421)
    "repa_weight": 0.5,  # train_t2i.py:424 --proj-coeff 0.5
    "repa_depth": 8,  # train_t2i.py:388 --encoder-depth 8
    "repa_hidden": 2048,  # models/mmdit.py:540 projector_dim=2048
    "tf32": True,  # README.md:104 launch command --allow-tf32 (train_t2i.py:398)
    "steps": 400_000,  # train_t2i.py:403 --max-train-steps 400000
    "global_batch": 256,  # train_t2i.py:395 --batch-size 256
    "lr": 1e-4,  # train_t2i.py:406 --learning-rate 1e-4
    "beta1": 0.9,  # train_t2i.py:407
    "beta2": 0.999,  # train_t2i.py:408
    "weight_decay": 0.0,  # train_t2i.py:409
    "schedule": "constant",  # train_t2i.py:199-205 AdamW, no scheduler
    "ema_decay": 0.9999,  # train_t2i.py:81 update_ema decay=0.9999, :309 every step
    "ema_warmup": False,  # train_t2i.py:222 EMA = model at start, then :309 (no warm-up)
    "clip_grad": 1.0,  # train_t2i.py:411 --max-grad-norm 1.0, :304
    "ckpt_every": 50_000,  # train_t2i.py:404 --checkpointing-steps 50000
    "keep_last": 0,  # train_t2i.py:315-326 saves every checkpoint, deletes none
    "image_every": 10_000,  # train_t2i.py:384 --sampling-steps 10000
    "image_steps": 50,  # train_t2i.py:338 euler_sampler num_steps=50
}
# generate_t2i.py:227 --mode ode, :231 --num-steps 50, :232 --no-heun, :228 --cfg-scale 1.5,
# :233-234 guidance 0..1; samplers_t2i.py:60 linspace(1, 0, num_steps + 1) = our shift 1
OFFICIAL_SAMPLING = {
    "sampler": "euler",
    "steps": 50,
    "shift": 1.0,
    "cfg": 1.5,
    "cfg_t_lo": 0.0,
    "cfg_t_hi": 1.0,
    "cfg_channels": 0,
}
# REPA's MMDiT(input_size=32) at that commit less its projector: 512,415,504 − 7,344,896
REPA_MODEL_PARAMS = 505_070_608

# the t2i defaults of the keys the preset sets, as before it existed
DEFAULTS_BEFORE = {
    "model": "mmdit-tiny", "qk_norm": False, "text_encoder": "minilm", "caption_dropout": 0.1,
    "latent_sampling": "mean", "flip": False, "time_dist": "logit_normal", "time_shift": 1.0,
    "cos_weight": 1.0, "repa_weight": 0.5, "repa_depth": None, "repa_hidden": None, "tf32": True,
    "steps": 2000, "global_batch": 64, "lr": 2e-4, "beta1": 0.9, "beta2": 0.95,
    "weight_decay": 0.0, "schedule": "constant", "ema_decay": 0.9999, "ema_warmup": True,
    "clip_grad": None, "ckpt_every": 500, "keep_last": 3, "image_every": 500, "image_steps": 16,
}  # fmt: skip

CPU = ["--device", "cpu"]
# the preset's recipe on a model shrunk by flags (the toy stack's captions are MiniLM's)
SHRUNK = ["--depth", "2", "--width", "64", "--heads", "2", "--repa-depth", "1"]
TINY_RUN = ["-b", "8", "--ckpt-every", "1", "--image-every", "0", "--text-encoder", "minilm"]


def test_the_repa_preset_equals_repas_code():
    assert T2iSettings.PRESETS["repa"] == OFFICIAL
    got = Settings(t2i={"preset": "repa"}).t2i
    assert got.preset == "repa"
    for key, value in OFFICIAL.items():
        assert getattr(got, key) == value, key


def test_mmdit_repa_2_is_repas_model():
    with torch.device("meta"):  # as train t2i builds it: the empty caption's 77 tokens fixed
        model = mmdit_repa_2(null_caption="fixed", null_length=77)
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (24, 768, 24, 2)
    assert (cfg.mlp_ratio, cfg.qkv_bias, cfg.qk_norm, cfg.rope) == (4.0, True, False, False)
    assert (cfg.in_channels, cfg.input_size, cfg.text_dim) == (4, 32, 768)
    assert cfg.pooled_condition is False
    assert sum(p.numel() for p in model.parameters()) == REPA_MODEL_PARAMS
    assert mmdit_repa_depth(cfg.depth) == OFFICIAL["repa_depth"]
    assert MMDIT_FACTORIES["mmdit-repa-2"] is mmdit_repa_2
    assert registry("models").get("mmdit-repa-2").__name__ == "mmdit_repa_2"


def _shown(*flags: str) -> dict[str, tuple[str, str]]:
    """``t2i.KEY → (value, source)`` of ``train t2i … --show-config`` (whitespace folded)."""
    out = cli_ok("train", "t2i", *flags, "--show-config")
    found = re.findall(r"(t2i\.\w+) = (.+?) # (flag|default|preset repa)(?= t2i\.| \w+ =|$)", out)
    return {key: (value, source) for key, value, source in found}


def test_show_config_marks_the_preset_values():
    shown = _shown("--preset", "repa")
    assert shown["t2i.preset"] == ("'repa'", "flag")
    for key, value in OFFICIAL.items():
        assert shown[f"t2i.{key}"] == (repr(value), "preset repa"), key
    assert _shown("--preset", "repa", "--lr", "0.001")["t2i.lr"] == ("0.001", "flag")
    default = _shown()
    assert default["t2i.preset"] == ("'small'", "default")
    assert not [k for k, (_, source) in default.items() if source.startswith("preset")]


def test_without_a_preset_the_t2i_defaults_are_unchanged():
    resolved = resolve_settings(None, {}, environ={})
    t2i = resolved.settings.t2i
    assert t2i.preset == "small"
    assert {key: getattr(t2i, key) for key in DEFAULTS_BEFORE} == DEFAULTS_BEFORE
    filled = {k: v for k, v in resolved.sources.items() if v.startswith("preset")}
    assert not [k for k in filled if k.startswith("t2i.")], filled


def test_the_repa_t2i_sampling_settings_are_repas():
    assert repa_t2i_sampling_defaults() == OFFICIAL_SAMPLING


def test_the_readme_rows_equal_the_preset():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in readme.splitlines()
        if line.startswith("| t2i repa |")
    ]
    assert len(rows) >= 5, "README's Presets table has no `t2i repa` rows"
    for _, keys, values, _ in rows:
        keys, values = [k.strip("`") for k in keys.split()], values.split()
        assert len(keys) == len(values), (keys, values)
        for key, text in zip(keys, values, strict=True):
            assert str(OFFICIAL[key]) == text, f"t2i repa {key}: README {text}, {OFFICIAL[key]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s31-t2i-repa") / "w")


def _record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["extra"]["settings"]


@pytest.mark.usefixtures("one_thread")
def test_a_repa_run_trains_and_resumes_with_the_presets_values(stack, tmp_path, monkeypatch):
    work = use_stack(stack, tmp_path, monkeypatch)
    run = work / "runs" / "rp"
    cli_ok("train", "t2i", "--preset", "repa", *SHRUNK, *TINY_RUN, "--steps", "1", "--name", "rp", *CPU)  # fmt: skip
    started = _record(run)
    given = ("text_encoder", "repa_depth", "steps", "global_batch", "ckpt_every", "image_every")
    kept = {k: v for k, v in OFFICIAL.items() if k not in given}
    assert len(kept) >= 20 and all(started["sources"][f"t2i.{k}"] == "flag" for k in given)
    for key, value in kept.items():
        assert started["values"]["t2i"][key] == value, key
        assert started["sources"][f"t2i.{key}"] == "preset repa", key
    sampling = json.loads((run / "sampling.json").read_text())
    assert sampling["defaults"] == OFFICIAL_SAMPLING
    assert "train t2i --preset repa" in sampling["source"]
    # resumed with nothing but more steps: the preset's values stay, though the preset now
    # resolved is the default (small)
    out = cli_ok("train", "t2i", "--name", "rp", "--steps", "2", *CPU)
    assert "t2i.steps: 1 → 2" in out, out
    assert (run / "checkpoints" / "step-0000002").is_dir()
    resumed = _record(run)
    assert resumed["values"]["t2i"]["preset"] == "repa"
    for key, value in kept.items():
        assert resumed["values"]["t2i"][key] == value, key
    model = json.loads((run / "config.json").read_text())["extra"]["train"]["model"]
    assert model == "mmdit-repa-2"
