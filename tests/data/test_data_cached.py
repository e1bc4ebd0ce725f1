"""The one cache-backed dataset (``repackctl.data.cached``) and the extract-command hints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from repackctl.cache.commands import dataset_base, extract_command
from repackctl.cache.integrity import GuardedArray
from repackctl.data.cached import (
    MEMORY_GB,
    CachedRows,
    draw_flips,
    fits_in_memory,
    images_to_float,
    mirror,
    written_rows,
)
from repackctl.errors import CacheError


def _arrays(tmp_path, n: int = 40, chunk: int = 8) -> dict[str, zarr.Array]:
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(tmp_path / "store"), mode="w")
    x = root.create_array("x", shape=(n, 2, 3), chunks=(chunk, 2, 3), dtype="float16")
    x[:] = rng.standard_normal((n, 2, 3)).astype(np.float16)
    img = root.create_array("img", shape=(n, 4, 4, 3), chunks=(chunk, 4, 4, 3), dtype="uint8")
    img[:] = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return {"x": x, "img": img}


def test_chunk_reads_and_memory_give_the_same_rows(tmp_path):
    arrays = _arrays(tmp_path)
    valid = np.array([0, 1, 2, 5, 9, 17, 18, 30, 39])
    block = CachedRows(arrays, valid, 8, in_memory=False, buffer_chunks=2)
    memory = CachedRows(arrays, valid, 8, in_memory=True)
    assert not block.in_memory and memory.in_memory and len(block) == len(memory) == 9
    positions = np.array([8, 0, 3, 3, 5, 1])  # any order, repeats allowed
    for name in ("x", "img"):
        expect = arrays[name][:][valid[positions]]
        np.testing.assert_array_equal(block.take(name, positions), expect)
        np.testing.assert_array_equal(memory.take(name, positions), expect)
    flips = np.array([1, 0, 1, 0, 0, 1])
    got = block.take_flip("x", positions, flips)
    np.testing.assert_array_equal(got, arrays["x"][:][valid[positions], flips])
    assert block.row_shape("img") == (4, 4, 3)
    assert block.nbytes() == 9 * (2 * 3 * 2 + 4 * 4 * 3)


def test_the_one_threshold_decides_when_none_is_given(tmp_path):
    arrays = _arrays(tmp_path)
    valid = np.arange(40)
    assert CachedRows(arrays, valid, 8).in_memory  # a few KiB
    assert not CachedRows(arrays, valid, 8, memory_gb=1e-6).in_memory  # 1 KiB limit
    assert fits_in_memory(int(MEMORY_GB * 2**30)) and not fits_in_memory(int(MEMORY_GB * 2**30) + 1)


def test_one_memory_setting_serves_every_training_command():
    from typer.testing import CliRunner

    from repackctl.cli.app import app
    from repackctl.settings import PackSettings, Settings, resolve_settings

    assert Settings().memory_gb == MEMORY_GB and "memory_gb" not in PackSettings.model_fields
    env = {"REPACKCTL_MEMORY_GB": "0.5"}
    assert resolve_settings(environ=env).settings.memory_gb == 0.5
    assert resolve_settings(flags={"memory_gb": 8}).settings.memory_gb == 8
    for command in (["pack", "train"], ["train", "dit"], ["refine", "train"]):
        res = CliRunner().invoke(app, [*command, "--memory-gb", "2", "--show-config"])
        assert res.exit_code == 0, res.output
        assert any(
            line.startswith("memory_gb") and "2.0" in line for line in res.output.splitlines()
        ), (command, res.output)


def test_a_lost_chunk_of_a_used_row_is_an_error_not_zeros(tmp_path):
    arrays = _arrays(tmp_path)
    used = np.zeros(40, bool)
    used[:16] = True
    guarded = {k: GuardedArray(a, used, f"store {k}", "rerun it") for k, a in arrays.items()}
    (tmp_path / "store" / "x" / "c" / "1" / "0" / "0").unlink()  # rows 8–15 of x
    rows = CachedRows(guarded, np.arange(16), 8, in_memory=False)
    np.testing.assert_array_equal(rows.take("x", np.arange(8)), arrays["x"][:8])
    with pytest.raises(CacheError) as e:
        rows.take("x", np.array([9]))
    assert "store x" in e.value.message and e.value.hint
    with pytest.raises(CacheError):
        CachedRows(guarded, np.arange(16), 8, in_memory=True)


def test_flips_mirror_and_helpers():
    assert draw_flips(None, 3, 2).tolist() == [0, 0, 0]
    a = draw_flips(np.random.default_rng(5), 16, 2)
    assert a.tolist() == draw_flips(np.random.default_rng(5), 16, 2).tolist()  # same seed
    assert 0 < a.sum() < 16
    img = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    out = mirror(img, np.array([0, 1]))
    np.testing.assert_array_equal(out[0], img[0])
    np.testing.assert_array_equal(out[1], img[1][:, ::-1])
    assert written_rows(np.array([1, 1, 2, 0]), np.array([1, 0, 1, 1])).tolist() == [0]
    x = images_to_float(np.full((1, 2, 2, 3), 255, np.uint8))
    assert x.shape == (1, 3, 2, 2) and torch.all(x == 1.0)


def test_one_extract_command_for_every_hint():
    assert extract_command() == "repackctl extract --encoder builtin --data builtin"
    cmd = extract_command("dinov3", "imagenet", "val", 256, 48, "w.pth", 8)
    assert cmd == (
        "repackctl extract --encoder dinov3 --data imagenet --split val --resolution 256 "
        "-n 48 --weights w.pth --layer 8"
    )
    assert dataset_base("builtin-n48") == "builtin" and dataset_base("my-nice") == "my-nice"
