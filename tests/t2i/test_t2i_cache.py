"""Caption features in the cache: `cache verify` (+ `--repair`) reads `text/` groups, COCO
captions end to end, and two captioning processes write the same arrays as one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.captions_cache import TEXT_KIND
from repackctl.cli.app import app
from repackctl.dit.t2i_task import _read_null
from repackctl.errors import CacheError

runner = CliRunner()
N, LEN = 32, 8
CPU = ["--device", "cpu"]
TEXT = ("tokens", "mask", "pooled", "count", "done", "null_tokens", "null_mask", "null_pooled")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    """`extract` (patchpix, 32 px, shards of 16) → `captions` (built-in captions, MiniLM)."""
    root = tmp_path_factory.mktemp("t2i-cache") / "cache"
    args = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", str(N), "--chunk"]
    args += ["8", "--shard", "16", "--num-workers", "0", "--cache", str(root), *CPU]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
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
