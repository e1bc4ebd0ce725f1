"""Cached caption features can be trusted: an edited caption source is refused (not resumed
over), captions cut to the text encoder's length are counted and reported, a run never guesses
between several caption-feature groups, and `captions` without --entry encodes the training
entry (then its val entries).

Real components: `extract` (patchpix, 32 px), `pack encode`, `captions` (built-in MiniLM) and
`train t2i` through the CLI on real Zarr caches in temporary folders.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from PIL import Image
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _refused
from support.stack import shared_stack
from typer.testing import CliRunner

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry, list_entries
from repackctl.captions_cache import (
    TEXT_KIND,
    captions_sha256,
    default_entries,
    find_text_group,
    make_text_encoder,
)
from repackctl.cli.app import app
from repackctl.data.captions import builtin_captions
from repackctl.errors import CacheError, ConfigError
from repackctl.train import latest_checkpoint, read_state

runner = CliRunner()
CPU = ["--device", "cpu"]
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--num-workers", "0", *CPU]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _group(cache: Path, entry: str, tid: str):
    return DatasetEntry.open(str(cache), entry).group[TEXT_KIND][tid]


# --------------------------------------------------------------------------- edited sources


def _folder(root: Path, captions: dict[str, list[str]]) -> None:
    """An image folder of 4 PNGs (one class, ``a/``) and its captions.jsonl (``file → captions``)."""
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "a" / f"{i}.png")
    rows = [{"file": f, "caption": c} for f, caps in captions.items() for c in caps]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


CAPTIONS = {f"a/{i}.png": [f"picture {i}", f"noise number {i}"] for i in range(4)}


def test_an_edited_caption_file_is_refused_then_encoded_after_removal(tmp_path):
    data, cache = tmp_path / "imgs", tmp_path / "cache"
    _folder(data, CAPTIONS)
    common = ["--cache", str(cache), *CPU]
    _ok(*EXTRACT, "--data", f"imagefolder:{data}", "--chunk", "2", "--shard", "2", *common[:2])
    (entry,) = list_entries(str(cache))
    args = ["captions", "--captions", str(data / "captions.jsonl"), "--max-length", "8", *common]
    _ok(*args)
    ds = DatasetEntry.open(str(cache), entry)
    keys = [str(k) for k in ds.keys[:]]
    (tid,) = ds.text_ids()
    g = _group(cache, entry, tid)
    assert g.attrs["captions_sha256"] == captions_sha256([CAPTIONS[k] for k in keys])
    tokens = np.asarray(g["tokens"][...])
    assert re.search(r"already done\s*│\s*4\b", runner.invoke(app, args).output)  # unchanged

    edited = {k: list(v) for k, v in CAPTIONS.items()}
    edited[keys[1]][1] = "an edited caption"
    _folder(data, edited)
    out = _refused(6, *args)
    assert f"the captions of 1 images of {entry}" in out
    assert "'noise number 1'" in out and "'an edited caption'" in out
    assert f"repackctl cache rm {entry} --text {tid}" in out
    np.testing.assert_array_equal(np.asarray(g["tokens"][...]), tokens)  # nothing overwritten

    # a group written before the sha256 was recorded: the stored texts still tell
    del g.attrs["captions_sha256"]
    assert f"repackctl cache rm {entry} --text {tid}" in _refused(6, *args)

    # the hint's command works; then the edited captions are encoded
    _ok("cache", "rm", entry, "--text", tid, "--yes", *common[:2])
    _ok(*args)
    g = _group(cache, entry, tid)
    assert str(g["captions"][1]).split("\n") == edited[keys[1]]
    assert g.attrs["captions_sha256"] == captions_sha256([edited[k] for k in keys])


def test_an_edit_of_rows_still_pending_is_encoded_not_refused(tmp_path):
    data, cache = tmp_path / "imgs", tmp_path / "cache"
    _folder(data, CAPTIONS)
    common = ["--cache", str(cache), *CPU]
    _ok(*EXTRACT, "--data", f"imagefolder:{data}", "--chunk", "2", "--shard", "2", *common[:2])
    (entry,) = list_entries(str(cache))
    args = ["captions", "--max-length", "8", "--captions", str(data / "captions.jsonl"), *common]
    _ok(*args)
    ds = DatasetEntry.open(str(cache), entry)
    keys = [str(k) for k in ds.keys[:]]
    (tid,) = ds.text_ids()
    g = _group(cache, entry, tid)
    g["done"][2:4] = PENDING  # as a run killed before its second shard leaves it
    edited = {k: list(v) for k, v in CAPTIONS.items()}
    edited[keys[3]] = ["a caption added later", "and a second one"]
    _folder(data, edited)
    out = _ok(*args)
    assert re.search(r"written now │ 2 .*already done │ 2", out), out
    assert str(g["captions"][3]).split("\n") == edited[keys[3]]
    assert (g["done"][:] == WRITTEN).all()
    attrs = _group(cache, entry, tid).attrs  # reopened: the run updated the attributes
    assert attrs["captions_sha256"] == captions_sha256([edited[k] for k in keys])


# --------------------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory) -> Path:
    """A built-in train entry (16 images) and val entry (8 images), 32 px, no captions yet."""
    cache = tmp_path_factory.mktemp("trust") / "cache"
    with one_torch_thread():
        _ok(*EXTRACT, "-n", "16", "--cache", str(cache))
        _ok(*EXTRACT, "-n", "8", "--split", "val", "--cache", str(cache))
    return cache


def test_captions_cut_to_the_length_are_counted_and_warned(builtin_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(builtin_cache, cache)
    train = "builtin-n16--train--32px"
    common = ["--entry", train, "--cache", str(cache), *CPU]
    out = _ok("captions", "--max-length", "8", *common)
    # the number of real tokens each caption has at a length none reaches, by the encoder itself
    caps = [c for i in range(16) for c in builtin_captions(i, split="train", seed=0)]
    with torch.no_grad():
        real = make_text_encoder("minilm", None, 64).encode(caps).mask.sum(1).numpy()
    assert real.max() < 64
    cut = int((real > 8).sum())
    assert 0 < cut < len(caps)
    assert f"Warning: {cut} of {len(caps)} captions are longer than 8 tokens" in out
    assert f"the longest has {int(real.max())}" in out
    assert f"--max-length {int(real.max())} to keep them whole" in out
    assert re.search(rf"cut to length │ {cut}\b", out), out
    (tid,) = DatasetEntry.open(str(cache), train).text_ids()
    assert _group(cache, train, tid).attrs["truncated_captions"] == cut
    # a rerun still says so (the stored features are cut)
    assert f"Warning: {cut} of {len(caps)} captions" in _ok(
        "captions", "--max-length", "8", *common
    )

    out = _ok("captions", "--max-length", str(int(real.max())), *common)
    assert "are longer than" not in out and re.search(r"cut to length │ 0\b", out)


# --------------------------------------------------------------------------- entry choice


def test_captions_without_entry_encodes_the_train_entry_then_val(builtin_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(builtin_cache, cache)
    assert default_entries(str(cache)) == ["builtin-n16--train--32px", "builtin-n8--val--32px"]
    out = _ok("captions", "--max-length", "8", "--cache", str(cache), *CPU)
    assert out.index("builtin-n16--train--32px") < out.index("builtin-n8--val--32px")
    for name, n in (("builtin-n16--train--32px", 16), ("builtin-n8--val--32px", 8)):
        ds = DatasetEntry.open(str(cache), name)
        (tid,) = ds.text_ids()
        assert (_group(cache, name, tid)["done"][:] == WRITTEN).sum() == n
    assert re.search(r"already done │ 16\b.*already done │ 8\b", _ok(
        "captions", "--max-length", "8", "--cache", str(cache), *CPU
    ))  # fmt: skip

    # a second train entry, neither with packed latents: refused, never guessed
    _ok(*EXTRACT, "-n", "12", "--cache", str(cache))
    out = _refused(2, "captions", "--max-length", "8", "--cache", str(cache), *CPU)
    assert "builtin-n12--train--32px" in out and "builtin-n16--train--32px" in out
    assert "--entry" in out
    with pytest.raises(ConfigError, match="several train-split entries"):
        default_entries(str(cache))


def test_captions_without_entry_encodes_only_the_val_entries_sample_pairs(builtin_cache, tmp_path):
    """A built-in val entry of another data seed was encoded (same split and resolution) though
    `sample` never takes prompts from it: the val entries are those of the same data."""
    cache = tmp_path / "cache"
    shutil.copytree(builtin_cache, cache)
    _ok(*EXTRACT, "-n", "4", "--split", "val", "--seed", "1", "--cache", str(cache))
    assert "builtin-n4--val--32px" in [p.name for p in cache.iterdir()]
    assert default_entries(str(cache)) == ["builtin-n16--train--32px", "builtin-n8--val--32px"]


def test_captions_without_any_train_entry_names_the_fix(tmp_path):
    cache = tmp_path / "cache"
    _ok(*EXTRACT, "-n", "8", "--split", "val", "--cache", str(cache))
    out = _refused(6, "captions", "--max-length", "8", "--cache", str(cache), *CPU)
    assert "no train-split built-in cache entry" in out and "builtin-n8--val--32px" in out
    with pytest.raises(CacheError, match="pass --entry NAME"):
        default_entries(str(cache))


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """The shared stack's cache and runs + `pack encode`: a train entry with packed latents."""
    stack = shared_stack(tmp_path_factory)
    root = tmp_path_factory.mktemp("trust-packed")
    shutil.copytree(stack["cache"], root / "cache")
    shutil.copytree(stack["runs"], root / "runs")
    with one_torch_thread():
        _ok("pack", "encode", "--run", "pack-tiny", "--runs", str(root / "runs"),
            "--cache", str(root / "cache"), *CPU)  # fmt: skip
    return root


def _work(packed: Path, tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "w"
    shutil.copytree(packed, root)
    for name in ("cache", "runs", "samples"):
        monkeypatch.setenv(f"REPACKCTL_{name.upper()}", str(root / name))
    return root


@pytest.mark.slow
def test_without_entry_the_train_entry_with_latents_is_chosen(packed, tmp_path, monkeypatch):
    root = _work(packed, tmp_path, monkeypatch)
    (latent_entry,) = list_entries(str(root / "cache"))
    _ok(*EXTRACT, "-n", "8")  # a newer train entry without packed latents
    _ok(*EXTRACT, "-n", "4", "--split", "val")
    other = next(e for e in list_entries(str(root / "cache")) if e.startswith("builtin-n8--train"))
    out = _ok("captions", "--max-length", "8", *CPU)
    assert latent_entry in out and "builtin-n4--val--32px" in out and other not in out
    assert DatasetEntry.open(str(root / "cache"), other).text_ids() == []
    assert DatasetEntry.open(str(root / "cache"), latent_entry).text_ids()


# --------------------------------------------------------------------------- several groups


@pytest.mark.slow
def test_several_caption_groups_are_refused_unless_named(packed, tmp_path, monkeypatch):
    root = _work(packed, tmp_path, monkeypatch)
    (entry,) = list_entries(str(root / "cache"))
    _ok("captions", "--max-length", "8", *CPU)
    ds = DatasetEntry.open(str(root / "cache"), entry)
    (only,) = ds.text_ids()
    assert find_text_group(ds, "minilm") == only  # exactly one: used as before
    _ok("captions", "--max-length", "12", *CPU)
    ids = sorted(DatasetEntry.open(str(root / "cache"), entry).text_ids())
    assert len(ids) == 2 and any("--len12--" in t for t in ids)
    with pytest.raises(ConfigError, match="2 caption-feature groups") as err:
        find_text_group(ds, "minilm")
    assert "--text-features" in err.value.hint
    assert find_text_group(ds, ids[0]) == ids[0]

    train = ["train", "t2i", "--steps", "2", "-b", "4", "--ckpt-every", "2", "--image-every", "0"]
    out = _refused(2, *train, "--name", "a", *CPU)
    assert all(t in out for t in ids) and "--text-features" in out
    assert not (root / "runs" / "a").exists()
    len12 = next(t for t in ids if "--len12--" in t)
    out = _ok(*train, "--name", "a", "--text-features", len12, *CPU)
    extra = read_state(latest_checkpoint(root / "runs" / "a"))["extra"]
    assert extra["text"]["features"] == len12


def test_captions_has_no_precision_option_to_ignore():
    """The text encoder runs in fp32: `captions` offered --precision and ignored it (a bf16
    rerun resumed the fp32 group without a word)."""
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    res = CliRunner().invoke(app, ["captions", "--precision", "bf16"])
    assert res.exit_code == 2 and "No such option: --precision" in res.output
