"""The summary a command prints under two processes (torchrun's environment) counts the whole
job, not rank 0's share: `extract`, `pack encode`, `sample` and `refine apply` run for real in two
workers (``support.launch.start_two``), and the table rank 0 prints must add up to the files on
disk.
`extract` and `sample` also print the warnings of both workers.

(`captions` under two processes: tests/cache/test_t2i_cache.py, whose two-worker run checks its
printed count against the files.)
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from support.launch import start_two
from support.stack import build_stack, save_refiner_run, shared_stack

from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries

MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
CPU = ["--device", "cpu"]


def _two(args: list[str], env: dict[str, str]) -> str:
    """Run ``repackctl <args>`` in two workers; rank 0's stdout (the summary table)."""
    code, stdout, stderr = start_two([MAIN, *args], env).wait(timeout=180)
    assert code == 0, stderr[-2000:]
    return stdout


def _row(stdout: str, name: str) -> str:
    """The value of one row of the printed table (``name │ value``)."""
    found = re.search(rf"^│ {name} *│ (.+?) *│$", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def _now_and_done(stdout: str) -> tuple[int, int]:
    """(written now, already done) of a ``samples │ N (W now, A already done)`` row."""
    found = re.fullmatch(r"(\d+) \((\d+) now, (\d+) already done\)", _row(stdout, "samples"))
    assert found, stdout
    return int(found.group(2)), int(found.group(3))


def _bomb_jpeg() -> bytes:
    """A grey JPEG of 9500² px: above PIL's decompression-bomb limit (89.5 M px), so opening it
    warns, and below twice the limit and extract's own cap, so it is still decoded (at 1/8
    scale, from the JPEG's DCT)."""
    out = io.BytesIO()
    Image.fromarray(np.full((9500, 9500), 128, np.uint8), "L").save(out, "JPEG", quality=50)
    return out.getvalue()


@pytest.mark.slow
def test_extract_prints_the_jobs_counts_and_the_decode_warnings_of_every_process(
    tmp_path,
) -> None:
    """One image folder of two shards of 8, each with one decompression-bomb JPEG, extracted by
    two workers: the counts rank 0 prints are the job's (the files on disk), and the decode
    warnings of both workers are printed once each, by rank 0. The same command again: every
    shard of both workers is already done. (One job for both promises: each run of two workers
    costs two torch imports.)"""
    folder, bomb, cache = tmp_path / "imgs", _bomb_jpeg(), tmp_path / "cache"
    for cls in ("a", "b"):  # two shards of 8: each worker decodes one (or takes the other's)
        (folder / cls).mkdir(parents=True)
        for i in range(8):
            arr = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / cls / f"{i}.png")
        (folder / cls / "7.png").unlink()
        (folder / cls / "7.jpg").write_bytes(bomb)  # one warning in each shard
    args = ["extract", "--encoder", "patchpix", "--resolution", "32", "--shard", "8"]
    args += ["--chunk", "8", "--num-workers", "0", "--data", f"imagefolder:{folder}"]
    args += ["--cache", str(cache), *CPU]
    code, stdout, stderr = start_two([MAIN, *args], subprocess_env(tmp_path)).wait(timeout=180)
    assert code == 0, stderr[-2000:]
    (name,) = list_entries(str(cache))
    entry = DatasetEntry.open(str(cache), name)
    (features,) = entry.feature_ids()
    on_disk = int((np.asarray(entry.features(features).done[:]) == WRITTEN).sum())
    assert on_disk == 16  # each worker wrote its shard of 8
    assert int(_row(stdout, "written now")) == on_disk, stdout
    assert int(_row(stdout, "already done")) == 0, stdout
    rank0, rank1 = stderr.split("\n[rank 1] ")
    warned = re.findall(r"Warning: ([ab]/7\.jpg): DecompressionBombWarning: Image size", rank0)
    assert sorted(warned) == ["a/7.jpg", "b/7.jpg"], stderr  # both workers' warnings, once
    assert "DecompressionBomb" not in rank1, stderr
    # the same command again: every shard of both workers is already done
    stdout = _two(args, subprocess_env(tmp_path))
    assert int(_row(stdout, "written now")) == 0, stdout
    assert int(_row(stdout, "already done")) == on_disk, stdout


@pytest.mark.slow
def test_pack_encode_prints_the_jobs_counts(tmp_path) -> None:
    stack = build_stack(tmp_path / "stack")  # 16 images in shards of 8, a pack run
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=stack["cache"], REPACKCTL_RUNS=stack["runs"])
    args = ["pack", "encode", "--run", "pack-tiny", *CPU]
    stdout = _two(args, env)
    assert int(_row(stdout, "written now")) == 16, stdout  # each worker encoded its shard of 8
    assert int(_row(stdout, "already done")) == 0, stdout
    stdout = _two(args, env)
    assert int(_row(stdout, "written now")) == 0, stdout
    assert int(_row(stdout, "already done")) == 16, stdout


@pytest.mark.slow
def test_sample_and_refine_apply_print_the_jobs_counts_and_the_warnings_of_every_process(
    tmp_path_factory, tmp_path
) -> None:
    """`sample` in two workers prints the job's count (the PNGs on disk), as does `refine
    apply` of its folder. Then a PNG of rank 1's share of the finished folder, damaged: the
    same `sample` again has rank 1 rewrite it from samples.npz, and the warning that says so is
    printed (by rank 0, for the job). (One first `sample` job for both: each two-worker run
    costs two torch imports.)"""
    stack = shared_stack(tmp_path_factory)
    runs = stack["runs"]
    if not (Path(runs) / "sum-refine32").is_dir():
        save_refiner_run(runs, "sum-refine32", resolution=32)
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=stack["cache"], REPACKCTL_RUNS=runs)
    out = tmp_path / "samples"
    args = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--batch-size", "2"]
    args += ["--seed", "3", "--runs", runs, "--out", str(out), *CPU]
    stdout = _two(args, env)
    pngs = len(list(out.glob("0*.png")))
    assert pngs == 4  # each worker made its 2
    assert _now_and_done(stdout) == (pngs, 0), stdout

    refine = ["refine", "apply", str(out), "--refiner", "sum-refine32", "--runs", runs, *CPU]
    stdout = _two(refine, env)
    (refined,) = tmp_path.glob("samples--*refine*")
    pngs = len(list(refined.glob("0*.png")))
    assert pngs == 4
    assert _now_and_done(stdout) == (pngs, 0), stdout

    png = out / "000003.png"  # rank 1 owns samples 2 and 3
    png.write_bytes(png.read_bytes()[:60])  # cut short: it no longer decodes
    code, stdout, stderr = start_two([MAIN, *args], env).wait(timeout=180)
    assert code == 0, stderr[-2000:]
    rank0 = stderr.split("\n[rank 1] ")[0]
    assert "Warning: 1 PNG of" in rank0 and "000003.png" in rank0, stderr
    assert _now_and_done(stdout) == (0, 4), stdout
