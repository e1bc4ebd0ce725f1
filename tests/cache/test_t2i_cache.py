"""Caption features in the cache: `cache verify` (+ `--repair`) reads `text/` groups, COCO
captions end to end, and two captioning processes write the same arrays as one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from PIL import Image
from support.launch import start_two
from typer.testing import CliRunner

from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries
from repackctl.captions_cache import NO_CAPTION, TEXT_KIND, make_text_encoder
from repackctl.cli.app import app
from repackctl.dit.t2i_task import _read_null
from repackctl.errors import CacheError

runner = CliRunner()
N, LEN = 32, 8
CPU = ["--device", "cpu"]
TEXT = ("tokens", "mask", "pooled", "count", "done", "null_tokens", "null_mask", "null_pooled")


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """`extract` (patchpix, 32 px, N = 32 in two shards of 16), no captions yet."""
    root = tmp_path_factory.mktemp("t2i-cache") / "cache"
    args = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", str(N), "--chunk"]
    args += ["8", "--shard", "16", "--num-workers", "0", "--cache", str(root), *CPU]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def captioned(extracted, tmp_path_factory) -> Path:
    """``extracted`` + `captions` (the built-in captions, MiniLM, length 8), in one process."""
    root = tmp_path_factory.mktemp("t2i-captioned") / "cache"
    shutil.copytree(extracted, root)
    res = runner.invoke(app, ["captions", "--max-length", str(LEN), "--cache", str(root), *CPU])
    assert res.exit_code == 0, res.output
    return root


def _text(cache: Path) -> tuple[str, str, dict[str, np.ndarray]]:
    """(entry name, text id, the text group's arrays)."""
    (name,) = list_entries(str(cache))
    ds = DatasetEntry.open(str(cache), name)
    (tid,) = ds.text_ids()
    g = ds.group[TEXT_KIND][tid]
    return name, tid, {k: np.asarray(g[k][...]) for k in (*TEXT, "captions")}


def _flat(res) -> str:
    return " ".join(res.output.split())


@pytest.mark.slow
def test_verify_reports_damaged_text_chunks_and_repair_then_captions_heals(captioned, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(captioned, cache)
    name, tid, ref = _text(cache)
    group = cache / name / TEXT_KIND / tid
    (shard,) = [p for p in (group / "tokens" / "c" / "1").rglob("*") if p.is_file()]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # one flipped byte in the first inner chunk of shard 1 (rows 16–31)
    shard.write_bytes(bytes(data))
    (null_chunk,) = [p for p in (group / "null_tokens" / "c").rglob("*") if p.is_file()]
    null_chunk.unlink()
    (mask_chunk,) = [p for p in (group / "mask" / "c" / "0").rglob("*") if p.is_file()]
    mask_chunk.write_bytes(mask_chunk.read_bytes()[:20])  # truncated: rows 0–15

    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache)])
    out = _flat(res)
    assert res.exit_code != 0 and "Traceback" not in out
    assert re.search(rf"text/{tid}/tokens: corrupt chunk c/1\S* \(rows 16–31\)", out), out
    assert re.search(rf"text/{tid}/mask: truncated chunk c/0\S* \(rows 0–15\)", out), out
    assert f"text/{tid}/null_tokens: missing chunk" in out and "not sample-indexed" in out
    assert "1 of 1 entries have problems" in out

    res = runner.invoke(app, ["cache", "verify", name, "--repair", "--cache", str(cache)])
    out = _flat(res)
    assert res.exit_code == 0 and "32 rows marked pending" in out, res.output
    assert f"repackctl captions --entry {name} --text-encoder minilm" in out
    assert f"--max-length {LEN}" in out
    ds = DatasetEntry.open(str(cache), name)
    assert (ds.group[TEXT_KIND][tid]["done"][:] == 0).all()  # both shards pending again
    assert ds.done[:].all() and ds.features(ds.feature_ids()[0]).done[:].all()  # images kept
    # until `captions` reruns, the training reader refuses the lost null caption (never zeros)
    with pytest.raises(CacheError, match="null_tokens: missing chunk") as err:
        _read_null(ds.group[TEXT_KIND][tid], "here", "`repackctl captions`")
    assert "repackctl captions" in err.value.hint

    res = runner.invoke(app, ["captions", "--max-length", str(LEN), "--cache", str(cache), *CPU])
    assert res.exit_code == 0, res.output
    assert f"rewrote text/{tid}/null_tokens" in _flat(res)
    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    _, _, got = _text(cache)
    for k in TEXT:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert got["captions"].tolist() == ref["captions"].tolist()


@pytest.mark.slow
def test_null_caption_nan_is_reported(captioned, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(captioned, cache)
    name, tid, _ = _text(cache)
    g = DatasetEntry.open(str(cache), name).group[TEXT_KIND][tid]
    pooled = g["null_pooled"][...]
    pooled[0] = np.nan
    g["null_pooled"][...] = pooled
    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code != 0 and f"text/{tid}: null_pooled: NaN/inf" in _flat(res)


# --------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_captioning_processes_write_the_same_cache_as_one(extracted, captioned, tmp_path):
    cache = tmp_path / "two" / "cache"
    shutil.copytree(extracted, cache)
    main = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")
    # two real workers with torchrun's environment, without the launcher process (support/launch)
    job = start_two(
        [main, "captions", "--max-length", str(LEN), *CPU], subprocess_env(tmp_path / "two")
    )
    code, stdout, stderr = job.wait(timeout=300)
    assert code == 0, stderr[-2000:]
    _, tid, two = _text(cache)
    # rank 0 prints the job's count (both shards of 16), the count the files hold
    written = int((two["done"] == WRITTEN).sum())
    assert written == N and re.search(rf"written now\s*│\s*{written}\b", stdout), stdout
    _, tid1, one = _text(captioned)
    assert tid == tid1
    for k in TEXT:
        np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    assert two["captions"].tolist() == one["captions"].tolist()
    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- COCO


def _fake_coco(root: Path) -> dict[str, list[str]]:
    """train2017/ with 6 JPEGs + annotations/captions_train2017.json; the expected captions."""
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations, want = [], [], {}
    for i in range(1, 7):
        name = f"{i:012d}.jpg"
        pixels = np.full((40, 48, 3), 35 * i, np.uint8)
        pixels[:, : 8 * i] = (200, 40, 10)
        Image.fromarray(pixels).save(root / "train2017" / name)
        images.append({"id": i, "file_name": name})
        want[name] = [f"photo {i}, caption {j}" for j in range(i % 3 + 1)] if i != 6 else []
    for name, caps in want.items():
        for cap in caps:
            annotations.append({"id": 100 + len(annotations), "image_id": int(name[:12]),
                                "caption": f"  {cap}\n"})  # fmt: skip
    annotations.append({"id": 999, "image_id": 2, "caption": "   "})  # empty: dropped, listed
    annotations.append({"id": 998, "image_id": 77, "caption": "no such image"})
    doc = {"images": images, "annotations": annotations}
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(doc))
    return want


@pytest.mark.slow
def test_coco_captions_end_to_end(tmp_path):
    coco, cache = tmp_path / "coco", tmp_path / "cache"
    want = _fake_coco(coco)
    common = ["--cache", str(cache), *CPU]
    args = ["extract", "--data", f"imagefolder:{coco / 'train2017'}", "--encoder", "patchpix"]
    res = runner.invoke(app, [*args, "--resolution", "32", "--num-workers", "0", *common])
    assert res.exit_code == 0, res.output
    # the entry is found without --entry: the newest image-folder entry, for --captions
    res = runner.invoke(
        app, ["captions", "--captions", f"coco:{coco}", "--max-length", str(LEN), *common]
    )
    out = _flat(res)
    assert res.exit_code == 0, res.output
    assert "annotation 999 (image 2): empty caption" in out
    assert "annotation 998 (image 77)" in out and "000000000006.jpg: no caption" in out
    total = sum(len(c) for c in want.values())  # 11: several captions per image
    assert re.search(rf"captions\s*│\s*{total} \(at most 3 per image\)", res.output), res.output

    name, tid, got = _text(cache)
    ds = DatasetEntry.open(str(cache), name)
    keys = [str(k) for k in ds.keys[:]]
    assert sorted(keys) == sorted(want)
    for row, key in enumerate(keys):
        caps = want[key]
        assert int(got["count"][row]) == len(caps), key
        assert int(got["done"][row]) == (WRITTEN if caps else NO_CAPTION), key
        assert (str(got["captions"][row]).split("\n") if caps else []) == caps
        assert not got["mask"][row, len(caps) :].any()  # absent captions are all padding
    # the cached features are the text encoder's features of each caption
    enc = make_text_encoder("minilm", None, LEN)
    row = keys.index("000000000002.jpg")
    with torch.no_grad():
        f = enc.encode(want["000000000002.jpg"])
    np.testing.assert_allclose(got["tokens"][row, :3], f.tokens.numpy(), atol=2e-3)
    np.testing.assert_array_equal(got["mask"][row, :3], f.mask.numpy())
    np.testing.assert_allclose(got["pooled"][row, :3], f.pooled.numpy(), atol=2e-3)
    res = runner.invoke(app, ["cache", "verify", *common[:2]])
    assert res.exit_code == 0, res.output


def test_captions_progress_advances_within_a_shard():
    """The bar advanced once per shard (1024 images: minutes on a CPU with no progress line);
    it now advances after each batch of captions, by the images whose captions are all done,
    and the shard's features do not depend on it."""
    from repackctl.captions_cache import _encode_shard

    enc = make_text_encoder("minilm", None, LEN)
    rows = [[f"a red star {i}", "a blue disc"] for i in range(5)] + [[]] + [["a pink heart"]]
    steps: list[int] = []
    with torch.no_grad():
        got = _encode_shard(enc, rows, 2, 3, steps.append)  # 11 captions, batches of 3
        plain = _encode_shard(enc, rows, 2, 3)
    assert len(steps) >= 4 and sum(steps) == len(rows) and min(steps) > 0
    for key in plain:
        np.testing.assert_array_equal(got[key], plain[key])


def test_cache_info_and_ls_list_the_caption_groups(captioned):
    """`cache rm --text ID` sent the user to `cache info`, which never listed text groups."""
    name, tid, _ = _text(captioned)
    info = _flat(runner.invoke(app, ["cache", "info", name, "--cache", str(captioned)]))
    assert f"text/{tid}" in info and f"{N} written" in info
    res = runner.invoke(app, ["cache", "ls", "--json", "--cache", str(captioned)])
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.output)["entries"]
    assert list(entry["text"]) == [tid] and entry["text"][tid]["written"] == N
    assert tid in _flat(runner.invoke(app, ["cache", "ls", "--cache", str(captioned)]))
