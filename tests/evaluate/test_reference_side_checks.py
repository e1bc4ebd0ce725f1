"""The reference side of `evaluate fid` / `evaluate stats`, checked as the generated side is.

Found by a README walk (audit A of session 36), each a silent wrong answer or a hint that led
nowhere: with no ``--ref`` the DiT's training entry was taken by its name after it was removed
and extracted again from other images; a samples folder given as a reference was read without
the ``images_sha256`` check its card allows (an edited PNG was scored); an image folder with
``train/`` and ``val/`` was read as one set of both splits; the hint of ``--samples N`` above
the folder's count printed a `sample` command that lands on the same folder and is refused; a
stored metrics.json of another reference content named the same reference twice; non-square
external samples were scored at their height; ``imagefolder:PATH`` was taken as a relative path.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.caches import random_image_folder, shared_tiny_dit_stack
from support.cli import cli_ok, cli_refused
from support.stack import FD_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]
FD = ["--metrics", "fd", "--fd-method", "cholesky", *CPU, *FD_WEIGHTS]
ENTRY = "builtin-n16--train--32px"
STATS = ["evaluate", "stats", "--extractor", "fd", "--resolution", "32", *CPU, *FD_WEIGHTS]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """cache/ (16 built-in images), runs/pk (pack), runs/dit (tiny DiT), and 4 samples of it."""
    root = shared_tiny_dit_stack(tmp_path_factory, tmp_path_factory.mktemp("refside"))
    from conftest import one_torch_thread

    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        _use(mp, root)
        cli_ok("sample", "-r", "dit", "-n", "4", "--steps", "2", "--grid", "0", *CPU)
    return root


def _use(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("REPACKCTL_CACHE", str(root / "cache"))
    mp.setenv("REPACKCTL_RUNS", str(root / "runs"))
    mp.setenv("REPACKCTL_SAMPLES", str(root / "samples"))


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """A stack of its own (its DiT records this folder's cache as its training root, which the
    test makes again), with 4 samples of the DiT."""
    from support.caches import tiny_dit_stack

    tiny_dit_stack(tmp_path)
    _use(monkeypatch, tmp_path)
    cli_ok("sample", "-r", "dit", "-n", "4", "--steps", "2", "--grid", "0", *CPU)
    return tmp_path


def _samples(env: Path) -> Path:
    (folder,) = [p for p in (env / "samples").iterdir() if p.is_dir()]
    return folder


# ------------------------------------------------------------------ 1: a re-made training entry
def test_a_training_entry_made_again_from_other_images_is_not_the_default_reference(env):
    folder = _samples(env)
    out = cli_ok("evaluate", "fid", str(folder), "--out", str(env / "a.json"), *FD)
    assert f"using cache entry {ENTRY}" in out, out
    # latents of the same id encoded again from other images: other channel stats
    (attrs,) = (env / "cache" / ENTRY / "latents").glob("*/zarr.json")
    doc = json.loads(attrs.read_text())
    doc["attributes"]["stats"]["mean"][0] += 0.5
    attrs.write_text(json.dumps(doc))
    out = cli_refused(4, "evaluate", "fid", str(folder), "--out", str(env / "b.json"), *FD)
    assert "other channel stats" in out and f"--ref-cache {ENTRY}" in out, out
    cli_ok("cache", "rm", ENTRY, "--yes")
    extract = ["extract", "-e", "patchpix", "--resolution", "32", "-n", "16", "--chunk", "8"]
    cli_ok(*extract, "--shard", "16", "--seed", "1", *CPU)  # the same name, other images
    out = cli_refused(4, "evaluate", "fid", str(folder), "--out", str(env / "b.json"), *FD)
    assert "holds no latents" in out and "--ref builtin" in out, out
    # the stored score of the entry before: the same name, other content (finding 8)
    args = ["evaluate", "fid", str(folder), "--ref-cache", ENTRY, *FD]
    out = cli_refused(2, *args, "--out", str(env / "a.json"))
    assert f"reference cache:{ENTRY} of other content, sha256" in out, out
    assert f"cache:{ENTRY} (this run: cache:{ENTRY})" not in out, out
    cli_ok(*args, "--out", str(env / "c"))


@pytest.fixture
def samples(stack, tmp_path) -> Path:
    """A copy of the stack's finished samples folder (4 samples of the DiT, PNGs and npz)."""
    (folder,) = [p for p in (stack / "samples").iterdir() if p.is_dir()]
    return Path(shutil.copytree(folder, tmp_path / folder.name))


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """``split/train/{cat,dog}`` and ``split/val/{cat,dog}``: an image folder with two splits."""
    root = tmp_path / "split"
    random_image_folder(root / "train")
    random_image_folder(root / "val", per=2)
    return root


# ------------------------------------------------------------ 4: a samples folder as reference
def test_a_samples_folder_given_as_reference_is_checked_against_its_card(stack, samples, tmp_path):
    from PIL import Image

    (samples / "samples.npz").unlink()  # the PNGs are the reference's images
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(samples / "000000.png")
    out = cli_refused(4, *STATS, str(samples), "--stats-dir", str(tmp_path / "st"))
    assert "images_sha256" in out and str(samples) in out, out
    gen = str(next(p for p in (stack / "samples").iterdir() if p.is_dir()))
    out = cli_refused(4, "evaluate", "fid", gen, "--ref", str(samples), *FD)
    assert "images_sha256" in out, out


# ------------------------------------------------------------------ 3 and 10: image folders
def test_a_reference_folder_of_split_folders_is_refused_and_one_split_is_read(
    samples, split_folder, tmp_path
):
    st = ["--stats-dir", str(tmp_path / "st")]
    out = cli_refused(4, *STATS, str(split_folder), *st)
    assert "train/, val/" in out and f"{split_folder / 'val'}" in out, out
    out = cli_refused(4, "evaluate", "fid", str(samples), "--ref", str(split_folder), *FD)
    assert f"pass one split's folder instead: {split_folder / 'val'}" in out, out
    out = cli_ok(*STATS, str(split_folder / "val"), *st)
    assert re.search(r"images\W+4\b", out), out  # val only: 2 classes x 2


def test_an_imagefolder_prefix_names_the_folder_as_in_extract(split_folder, tmp_path):
    st = ["--stats-dir", str(tmp_path / "st")]
    out = cli_ok(*STATS, f"imagefolder:{split_folder / 'val'}", *st)  # as `extract --data`
    assert re.search(r"images\W+4\b", out), out  # the val folder's 4 images
    assert [p.name.split("-")[0] for p in (tmp_path / "st").glob("*.npz")] == ["val"], out
    out = cli_refused(4, *STATS, "imagefolder:", *st)
    assert "names no folder" in out, out


# ------------------------------------------------------------------ 6: the --samples N hint
def test_the_hint_of_samples_above_the_count_is_a_command_that_works(samples):
    score = ["--ref", "builtin", *FD]
    out = cli_refused(4, "evaluate", "fid", str(samples), "--samples", "8", *score)
    command = re.search(r"`repackctl (sample [^`]*)`", out)
    assert command and f"--out {samples}-n8" in command.group(1), out
    cli_ok(*shlex.split(command.group(1)), "--steps", "2", "--grid", "0", *CPU)
    out = cli_ok("evaluate", "fid", f"{samples}-n8", "--samples", "8", *score)
    assert "using exactly 8 of the 8 samples" in out, out


# ------------------------------------------------------------------ 9: non-square samples
def test_non_square_generated_samples_are_refused(tmp_path):
    flat = random_image_folder(tmp_path / "flat", classes=("a",), per=3)  # 48x40 PNGs
    out = cli_refused(4, "evaluate", "fid", str(flat / "a"), "--ref", "builtin", *FD)
    assert "48x40" in out and "not square" in out, out
    npz = tmp_path / "wide.npz"
    np.savez(npz, arr_0=np.zeros((3, 40, 48, 3), np.uint8))
    out = cli_refused(4, "evaluate", "fid", str(npz), "--ref", "builtin", *FD)
    assert "48x40" in out and "center-crop" in out, out
