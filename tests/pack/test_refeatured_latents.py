"""`pack encode` never keeps latents encoded from features that were replaced.

Features removed with `cache rm --features` and extracted again in another precision keep their
id (the id names the encoder, layer and resolution, not the precision). The latents group of a
pack run stayed: `pack encode` found every row "already done" and kept latents (and channel
stats) encoded from the old features, with exit 0. Now the latents record the precision of the
features they were encoded from, and a rerun over other features is an `Error:` naming both and
the commands that remake them; nothing is written. (Since s28 the pack run records the
precision of its training features and `pack encode` refuses features of another one first.)
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from support.caches import packed_cache
from support.cli import cli_ok, cli_refused

ENTRY = "builtin-n16--train--32px"
FID = "patchpix--final--32px--c1fa138fdb"


def _latents(cache: Path) -> Path:
    (group,) = [p for p in (cache / ENTRY / "latents").iterdir() if p.is_dir()]
    return group


def test_encode_refuses_latents_of_replaced_features(tmp_path: Path) -> None:
    cache = packed_cache(tmp_path / "cache", 16)
    roots = ["--cache", str(cache), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    group = _latents(cache)
    before = json.loads((group / "zarr.json").read_text())["attributes"]["stats"]
    cli_ok("cache", "rm", ENTRY, "--features", FID, "--yes", "--cache", str(cache))
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", "16", "--num-workers", "0"]
    cli_ok(
        "extract",
        *src,
        "--chunk",
        "8",
        "--shard",
        "16",
        "--precision",
        "bf16",
        "--cache",
        str(cache),
    )

    out = cli_refused(6, "pack", "encode", "--run", "pk", *roots)
    assert "computed in fp32" in out and "computed in bf16" in out, out
    assert json.loads((group / "zarr.json").read_text())["attributes"]["stats"] == before

    # the run was trained on fp32 features (its checkpoint records it since s28): bf16 ones are
    # refused whatever latents there are; the hint's commands make the fp32 features again,
    # the same as before, so the latents encoded from them are kept
    rm, extract = out.split("Hint: ", 1)[1].split("`")[1:4:2]
    assert f"--features {FID}" in rm and "--precision fp32" in extract, out
    cli_ok(*shlex.split(rm)[1:], "--cache", str(cache))
    cli_ok(*shlex.split(extract)[1:], "--num-workers", "0", "--cache", str(cache))
    out = cli_ok("pack", "encode", "--run", "pk", *roots)
    assert "already done │ 16" in out, out
    attrs = json.loads((group / "zarr.json").read_text())["attributes"]
    assert attrs["features_precision"] == "fp32" and attrs["stats"] == before
