"""Hostile inputs through the CLI: each is a clean `Error:` + `Hint:` or a listed skip, no traceback.

Odd file names, symlink loops, unreadable folders, `--strict` on an existing entry, PIL's
decompression-bomb warning, an absent GPU, a malformed environment variable, FID on one image,
and names that would become paths outside their folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.data.imagefolder import unescape_name
from repackctl.errors import ConfigError, DataError

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--shard", "8", "--chunk", "4"]


def _png(path, seed: int = 0, size: int = 40) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    with open(path, "wb") as f:  # path may be bytes (a non-UTF-8 name)
        Image.fromarray(arr).save(f, format="PNG")


def _folder(root: Path, classes=("cat", "dog"), per_class: int = 2) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            _png(root / cls / f"{i}.png", seed=10 * c + i)
    return root


def _clean_error(res, code: int | None = None) -> str:
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, res.output
    assert "Error:" in res.output and "Hint:" in res.output, res.output
    assert "Traceback" not in res.output
    return res.output


def _only_entry(cache_root: str) -> DatasetEntry:
    (name,) = list_entries(cache_root)
    return DatasetEntry.open(cache_root, name)


# ---------------------------------------------------------------------------- listing


def test_non_utf8_file_name_is_extracted_and_stored_losslessly(tmp_path, cache_root):
    folder = _folder(tmp_path / "imgs", classes=("cat",))
    _png(os.fsencode(folder / "cat") + b"/latin1_\xe9\xff.png", seed=7)
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}"])
    assert res.exit_code == 0, res.output
    entry = _only_entry(cache_root)
    keys = list(entry.keys[:])
    assert "cat/latin1_\\xe9\\xff.png" in keys and entry.attrs["written"] == 3
    assert os.fsencode(unescape_name(keys[-1])) == b"cat/latin1_\xe9\xff.png"


def test_keys_are_checked_before_anything_is_encoded(tmp_path, cache_root, monkeypatch):
    from repackctl.data.imagefolder import ImageFolderSource

    folder = _folder(tmp_path / "imgs")
    monkeypatch.setattr(ImageFolderSource, "key", lambda self, i: "bad_\udce9.png")  # a plugin bug
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}"])
    assert "not valid Unicode" in _clean_error(res, DataError.exit_code)
    assert list_entries(cache_root) == []  # nothing written


def test_symlink_loop_does_not_multiply_images(tmp_path, cache_root):
    folder = _folder(tmp_path / "imgs", classes=("a",), per_class=3)
    (folder / "a" / "up").symlink_to("..")
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}"])
    assert res.exit_code == 0, res.output
    assert _only_entry(cache_root).n == 3


def test_unreadable_sub_folder_is_listed_and_strict_fails(tmp_path, cache_root, monkeypatch):
    folder = _folder(tmp_path / "imgs")
    (folder / "dog" / "locked").mkdir()
    _png(folder / "dog" / "locked" / "x.png")
    real = os.scandir

    def scandir(path="."):  # tests run as root, where chmod 000 still reads: simulate it
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    args = [*EXTRACT, "--data", f"imagefolder:{folder}"]
    res = runner.invoke(app, [*args, "--strict"])
    assert "dog/locked/ (unreadable folder" in _clean_error(res, DataError.exit_code)
    assert list_entries(cache_root) == []
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "skipped dog/locked/: unreadable folder" in res.output
    entry = _only_entry(cache_root)
    assert entry.n == 4 and entry.attrs["source"]["skipped_in_listing"][0]["key"] == "dog/locked/"


def test_flat_folder_split_val_is_an_error_unless_held_out(tmp_path, cache_root):
    folder = _folder(tmp_path / "imgs", per_class=5)
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}", "--split", "val"])
    assert "--val-fraction" in _clean_error(res, DataError.exit_code)
    for split in ("train", "val"):
        args = ["--data", f"imagefolder:{folder}", "--split", split, "--val-fraction", "0.4"]
        res = runner.invoke(app, [*EXTRACT, *args])
        assert res.exit_code == 0, res.output
    names = list_entries(cache_root)
    keys = {n.split("--")[1]: set(DatasetEntry.open(cache_root, n).keys[:]) for n in names}
    assert keys["val"].isdisjoint(keys["train"]) and len(keys["val"] | keys["train"]) == 10
    held = DatasetEntry.open(cache_root, names[1]).attrs["source"]["held_out"]
    assert held["counts"] == {"train": 6, "val": 4} and held["seed"] == 0
    res = runner.invoke(app, [*EXTRACT, "--val-fraction", "1.5"])
    _clean_error(res, ConfigError.exit_code)


def test_recon_hint_for_a_folder_without_splits(tmp_path, cache_root):
    from repackctl.evaluate.pack import held_out_hint

    folder = _folder(tmp_path / "imgs")
    assert runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}"]).exit_code == 0
    run_cache = {"entry": list_entries(cache_root)[0]}
    hint = held_out_hint(cache_root, run_cache, "val", "run `repackctl extract --split val` first")
    assert "--val-fraction" in hint and "no val/ folder" in hint


# ---------------------------------------------------------------------------- --strict, warnings


def test_strict_means_the_same_for_an_existing_entry(tmp_path, cache_root):
    folder = _folder(tmp_path / "imgs")
    (folder / "cat" / "zero.png").write_bytes(b"")
    args = [*EXTRACT, "--data", f"imagefolder:{folder}"]
    assert runner.invoke(app, args).exit_code == 0  # skips and records zero.png
    res = runner.invoke(app, [*args, "--strict"])
    assert "cat/zero.png (empty file)" in _clean_error(res, DataError.exit_code)
    (folder / "cat" / "zero.png").unlink()
    clean = _folder(tmp_path / "clean")
    assert runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{clean}"]).exit_code == 0
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{clean}", "--strict"])
    assert res.exit_code == 0, res.output  # nothing bad recorded or pending


def test_decompression_bomb_warning_is_a_warning_line(tmp_path, cache_root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40×40 = 1600 px: warns, < 2× limit
    folder = _folder(tmp_path / "imgs", classes=("a",), per_class=1)
    res = runner.invoke(app, [*EXTRACT, "--data", f"imagefolder:{folder}"])
    assert res.exit_code == 0, res.output
    assert "Warning: a/0.png: DecompressionBombWarning: Image size (1600 pixels)" in res.output
    assert "PIL/Image.py" not in res.output  # not the raw `warnings` print


# ---------------------------------------------------------------------------- settings, device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_a_clean_error(cache_root):
    res = runner.invoke(app, ["extract", "--num", "4", "--device", "cuda"])
    assert "no CUDA GPU" in _clean_error(res, ConfigError.exit_code)


def test_section_env_variable_with_a_plain_value(monkeypatch):
    monkeypatch.setenv("REPACKCTL_EXTRACT", "foo")
    res = runner.invoke(app, ["extract", "--show-config"])
    assert "REPACKCTL_EXTRACT" in _clean_error(res, ConfigError.exit_code)


def test_fid_on_one_image_has_a_hint(tmp_path):
    (tmp_path / "one").mkdir()
    _png(tmp_path / "one" / "a.png")
    res = runner.invoke(app, ["evaluate", "fid", str(tmp_path / "one"), "--ref", "builtin"])
    assert "at least 2" in _clean_error(res, DataError.exit_code)


# ---------------------------------------------------------------------------- safe names

BAD_NAMES = ["../../x", "/abs/run", ".", "..", "a/b", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_run_names_are_refused(tmp_path, name):
    for cmd in (["train", "dit", "--name", name], ["refine", "train", "--name", name]):
        res = runner.invoke(app, cmd)
        assert "is not a safe name" in _clean_error(res, ConfigError.exit_code), cmd
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


@pytest.mark.parametrize("split", ["../../../escaped", "a/b", ".", "/abs"])
def test_unsafe_splits_are_refused(tmp_path, cache_root, split):
    res = runner.invoke(app, ["extract", "--num", "4", "--split", split])
    assert "is not a safe name" in _clean_error(res, ConfigError.exit_code)
    assert list_entries(cache_root) == [] and not (tmp_path / "escaped").exists()
    assert runner.invoke(app, ["cache", "ls"]).exit_code == 0


def test_unsafe_pack_run_name_is_refused_before_training(tmp_path, cache_root):
    res = runner.invoke(app, [*EXTRACT[:3], "--num", "8", "--resolution", "32"])
    assert res.exit_code == 0, res.output
    runs = tmp_path / "runs"
    for name in ("../outside", "/abs/run", "."):
        res = runner.invoke(app, ["pack", "train", *EXTRACT[1:5], "-n", "8", "--name", name])
        assert "is not a safe name" in _clean_error(res, ConfigError.exit_code)
    assert not (tmp_path / "outside").exists() and not runs.exists()


def test_unsafe_dataset_id_is_refused():
    from repackctl.paths import entry_name, safe_name

    with pytest.raises(ConfigError, match="dataset id"):
        entry_name("../evil", "train", 64)
    assert safe_name("folder-x_1.2", "run name") == "folder-x_1.2"


def test_a_full_disk_during_extract_is_an_error_naming_the_path(monkeypatch):
    """ENOSPC while a shard is written: one Error line with the path and a Hint, no traceback."""
    import errno

    from repackctl import extract as extract_mod

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/x/images/c/0")

    monkeypatch.setattr(extract_mod._ShardWriter, "_write", full)
    res = runner.invoke(app, ["extract", "-n", "8", "--resolution", "32", "--device", "cpu"])
    assert res.exit_code != 0, res.output
    assert "No space left on device" in res.output and "/cache/x/images/c/0" in res.output
    assert "Hint:" in res.output and "Traceback" not in res.output


def test_long_commands_print_the_run_header():
    res = runner.invoke(app, ["extract", "-n", "8", "--resolution", "32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "world 1 · cpu · fp32 (default) · seed 0 · repackctl" in res.output


def test_a_missing_entry_hint_names_its_split_and_resolution(cache_root):
    """The hint said "run `repackctl extract`", which makes the default train entry at 64 px,
    not the val entry that was asked for."""
    assert runner.invoke(app, ["extract", "-n", "8", "--resolution", "32"]).exit_code == 0
    res = runner.invoke(app, ["evaluate", "stats", "--ref-cache", "builtin--val--64px"])
    out = " ".join(res.output.split())
    assert res.exit_code != 0 and "Traceback" not in out
    assert "cache entry 'builtin--val--64px' not found" in out
    assert "Hint: run `repackctl extract --split val --resolution 64` for it" in out


def test_a_protocol_json_of_another_shape_is_refused_not_scored_as_external(tmp_path):
    """Valid JSON that is not an object (``[1, 2]``) read as "no protocol": the folder was
    scored as external samples and metrics.json written into it."""
    from repackctl.errors import DataError
    from repackctl.evaluate.generative import read_protocol

    (tmp_path / "protocol.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="is not a protocol card"):
        read_protocol(tmp_path)
    (tmp_path / "protocol.json").write_text('{"protocol": "x"}')
    with pytest.raises(DataError, match="is not a protocol card"):
        read_protocol(tmp_path)


def test_sampling_json_defaults_of_another_shape_are_an_error_not_a_traceback(tmp_path):
    from repackctl.errors import CheckpointError
    from repackctl.sample.plan import read_sampling_defaults

    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "sampling.json").write_text('{"defaults": 5}')  # was a TypeError
    with pytest.raises(CheckpointError, match="'defaults' is not a JSON object"):
        read_sampling_defaults(ckpt)
