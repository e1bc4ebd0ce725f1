"""`evaluate recon` / `evaluate probe` read the held-out entry's images and tokens through
guarded views: a lost chunk holding rows they score is an Error naming the array and the
repair, never zeros scored as originals. Before, recon read the plain zarr arrays: with the
val entry's image shard gone, it scored the reconstructions against black "originals" and
wrote a report (PSNR, SSIM) of them; probe likewise trained and scored on zero tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import build_val_stack, stack_env

from repackctl.errors import CacheError

VAL = "builtin-n3--val--32px"
CPU = ["--device", "cpu"]


@pytest.fixture
def env(tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """A fresh stack per test: the tests damage its cache."""
    yield from stack_env(build_val_stack(tmp_path / "stack"), tmp_path, monkeypatch)


def _lose_chunks(cache: str, entry: str, array: str) -> list[Path]:
    """Delete every stored chunk (shard) file of ``entry``'s ``array``; returns them."""
    root = Path(cache) / entry / array / "c"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, root
    for p in files:
        p.unlink()
    return files


def _reports(env: dict[str, str], kind: str) -> list[Path]:
    return sorted(Path(env["runs"]).glob(f"pack-tiny/checkpoints/*/{kind}-{VAL}*.json"))


def test_recon_refuses_a_lost_image_chunk_instead_of_scoring_zeros(env):
    cli_ok("evaluate", "recon", "--run", "pack-tiny", "--entry", VAL, *CPU)
    (report,) = _reports(env, "recon")
    before = json.loads(report.read_text())
    _lose_chunks(env["cache"], VAL, "images")

    out = cli_refused(
        CacheError.exit_code, "evaluate", "recon", "--run", "pack-tiny", "--entry", VAL, *CPU
    )
    assert f"{VAL} images" in out and "missing" in out and "cache verify" in out
    assert json.loads(report.read_text()) == before  # the good report is kept


def test_probe_refuses_a_lost_token_chunk_instead_of_scoring_zeros(env):
    features = next(p for p in (Path(env["cache"]) / VAL / "features").iterdir() if p.is_dir())
    _lose_chunks(env["cache"], VAL, f"features/{features.name}/tokens")

    out = cli_refused(
        CacheError.exit_code, "evaluate", "probe", "--run", "pack-tiny", "--entry", VAL,
        "--epochs", "2", *CPU,
    )  # fmt: skip
    assert "tokens" in out and "missing" in out and "cache verify" in out
    assert not _reports(env, "probe")  # nothing written


def test_adherence_real_images_refuse_a_lost_chunk(env):
    """`evaluate adherence` trains its attribute classifiers on the real images of the run's
    entry (``real_attributes``): a lost shard was read as black images under their scenes'
    labels."""
    from repackctl.evaluate.adherence import real_attributes

    images, shapes, _ = real_attributes(env["cache"], VAL)
    assert images.shape[0] == len(shapes) == 3 and images.any()
    _lose_chunks(env["cache"], VAL, "images")
    with pytest.raises(CacheError, match="images: chunk .* is missing"):
        real_attributes(env["cache"], VAL)
