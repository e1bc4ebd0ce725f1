"""`repackctl import official` refuses what would import "fine" and then sample wrong or crash:
a DiT that does not fit stage 1's latents, latent stats with a std <= 0, checkpoints with missing
tensors, an EMA of another architecture, a --num-heads that contradicts the RoPE table. Each one
is a one-line ``Error:`` + ``Hint:`` with the error's exit code, no traceback, and no run left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.official import official_lightningdit, official_stage1
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.convert.official import map_stage1, map_stage2
from repackctl.errors import ConfigError, WeightsError

STAGE1_KW = {"res": 32, "ch_mult": (1, 2, 2, 2)}  # latent 4×4×4 → 32-px images


def _write_release(
    tmp_path: Path,
    dit: dict[str, torch.Tensor] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    std: torch.Tensor | None = None,
    stage1: dict[str, torch.Tensor] | None = None,
) -> dict[str, Path]:
    """An official-layout release in tmp_path; by default one that imports fine."""
    files = {k: tmp_path / n for k, n in (("s1", "s1.ckpt"), ("dit", "dit.pt"), ("stats", "st.pt"))}
    torch.save({"state_dict": stage1 or official_stage1(**STAGE1_KW)}, files["s1"])
    model = dit or official_lightningdit(side=4)
    torch.save({"model": model, "ema": ema or model, "opt": {}, "global_step": 3}, files["dit"])
    std = 2 * torch.ones(1, 4, 1, 1) if std is None else std
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": std}, files["stats"])
    return files


def _import(tmp_path: Path, files: dict[str, Path], *more: str):
    args = ["import", "official", "--stage1", str(files["s1"]), "--dit", str(files["dit"])]
    args += ["--latent-stats", str(files["stats"]), "--image-size", "32", "--out", "off"]
    return CliRunner().invoke(app, [*args, "--runs", str(tmp_path / "runs"), *more])


def _assert_refused(tmp_path: Path, result, code: int, *needles: str) -> None:
    """Exit code, Error + Hint, every needle in the message, no traceback, no run written."""
    assert result.exit_code == code, result.output
    assert "Error:" in result.output and "Hint:" in result.output, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_the_default_release_imports(tmp_path) -> None:
    """The baseline of every refusal below: the same files, unmodified, import."""
    r = _import(tmp_path, _write_release(tmp_path))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "off-dit" / "sampling.json").is_file()


@pytest.mark.parametrize(
    ("dit_kw", "needles"),
    [
        # 8×8 latents would decode to 64-px images from a 32-px release: the hint names 64
        ({"side": 8}, ("4×8×8", "--image-size 64")),
        ({"c": 8}, ("8×4×4",)),
    ],
    ids=["latent-side", "latent-channels"],
)
def test_dit_that_does_not_fit_stage1_is_refused(tmp_path, dit_kw, needles) -> None:
    files = _write_release(tmp_path, dit=official_lightningdit(**{"side": 4, **dit_kw}))
    r = _import(tmp_path, files)
    _assert_refused(tmp_path, r, 5, *needles, "4×4×4", "--image-size 32")


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_latent_std_not_positive_is_refused(tmp_path, bad) -> None:
    std = 2 * torch.ones(1, 4, 1, 1)
    std[0, 2] = bad
    std[0, 3] = bad
    files = _write_release(tmp_path, std=std)
    r = _import(tmp_path, files)
    _assert_refused(tmp_path, r, 5, str(files["stats"]), "channels 2, 3")


@pytest.mark.parametrize(
    "keys",
    [
        ["decoder.conv_in.bias"],
        ["decoder.mid.attn_1.k.weight"],
        ["decoder.up.1.block.1.norm2.bias"],
        ["decoder.up.2.block.0.conv2.weight"],
        ["decoder.norm_out.weight", "decoder.mid.attn_1.norm.bias"],
    ],
)
def test_stage1_with_missing_tensors_names_them(keys) -> None:
    sd = official_stage1(**STAGE1_KW)
    for key in keys:
        del sd[key]
    with pytest.raises(WeightsError) as info:
        map_stage1(sd, image_size=32)
    for key in keys:
        assert key in info.value.message


@pytest.mark.parametrize(
    "keys",
    [
        ["pos_embed"],
        ["y_embedder.embedding_table.weight"],
        ["x_embedder.proj.weight", "blocks.0.adaLN_modulation.1.weight"],
        ["blocks.1.attn.proj.bias"],
    ],
)
def test_dit_with_missing_tensors_names_them(keys) -> None:
    sd = official_lightningdit(side=4)
    for key in keys:
        del sd[key]
    with pytest.raises(WeightsError) as info:
        map_stage2(sd)
    for key in keys:
        assert key in info.value.message


@pytest.mark.parametrize("part", ["stage1", "dit"])
def test_missing_tensors_through_the_cli(tmp_path, part) -> None:
    stage1, dit = official_stage1(**STAGE1_KW), official_lightningdit(side=4)
    key = {"stage1": "decoder.mid.attn_1.k.weight", "dit": "pos_embed"}[part]
    del {"stage1": stage1, "dit": dit}[part][key]
    r = _import(tmp_path, _write_release(tmp_path, dit=dit, stage1=stage1))
    _assert_refused(tmp_path, r, 5, key)


@pytest.mark.parametrize(
    "ema_kw", [{"hidden": 32}, {"depth": 3}, {"side": 8}], ids=["width", "depth", "side"]
)
def test_ema_of_another_architecture_is_refused(tmp_path, ema_kw) -> None:
    ema = official_lightningdit(**{"side": 4, **ema_kw})
    r = _import(tmp_path, _write_release(tmp_path, ema=ema))
    _assert_refused(tmp_path, r, 5, "'ema'", "'model'")


def test_num_heads_against_the_rope_table() -> None:
    sd = official_lightningdit(side=4, hidden=64, heads=2)
    _, config, _ = map_stage2(sd, num_heads=2)  # equal to the table's: fine
    assert config.num_heads == 2
    with pytest.raises(ConfigError) as info:
        map_stage2(sd, num_heads=4)
    assert "4" in info.value.message and "2 heads" in info.value.message


def test_num_heads_contradiction_through_the_cli(tmp_path) -> None:
    r = _import(tmp_path, _write_release(tmp_path), "--num-heads", "8")
    _assert_refused(tmp_path, r, 2, "--num-heads 8", "2 heads")
