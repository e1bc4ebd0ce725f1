"""Text-to-image follow-ups: results that could be wrong are refused or stated, never silent.

1. The built-in caption generator has a version (``CAPTIONS_VERSION``): it is recorded with the
   caption features and is part of their group id from version 2 on; features of another
   version are refused by `captions` and never picked by `train t2i` on its own, while the
   groups made before the version was recorded keep their id and are reused.
2. `sample`'s default prompts come from the val entry of the run's data, paired with the
   training entry by what the entries record (source attributes, resolution), not by name.
3. A t2i samples folder's ``protocol.json`` lists exactly the prompts used (``-n`` below the
   number of prompts given), and a folder written before still resumes.

Real components: `extract` (patchpix, 32 px), `pack train`, `pack encode`, `captions` (MiniLM,
length 8), `train t2i` (2 steps) and `sample` through the CLI, on real Zarr caches in temporary
folders. Versions other than today's are made the way such a version writes its group: its
attributes (and, from version 2 on, its group name), never by patching the code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.captions_cache import TEXT_KIND, find_text_group, make_text_encoder, text_id
from repackctl.data.captions import CAPTIONS_VERSION, builtin_captions
from repackctl.errors import CacheError, ConfigError
from repackctl.sample.t2i import cached_prompts
from repackctl.train import latest_checkpoint, read_state

N, LEN = 32, 8
CPU = ["--device", "cpu"]
EXTRACT = ["extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "8"]
EXTRACT += ["--num-workers", "0", *CPU]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", *CPU]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """extract (train 32 + val 8) → pack train → pack encode → captions of both → a 2-step
    t2i run ``tA``; returns the folder holding cache/ and runs/."""
    return shared_t2i_stack(
        tmp_path_factory, tmp_path_factory.mktemp("t2i-followups") / "w", N, LEN
    )


def _use(stack: Path, tmp_path: Path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


TRAIN = "builtin-n32--train--32px"


def _train(work: Path) -> DatasetEntry:
    return DatasetEntry.open(str(work / "cache"), TRAIN)


def _group_dir(ds: DatasetEntry, tid: str) -> Path:
    return Path(str(ds.group.store.root)) / ds.group[TEXT_KIND][tid].path


# --------------------------------------------------------------------------- 1. generator version


def test_todays_caption_ids_are_unchanged_and_record_the_version(stack):
    encoder = make_text_encoder("minilm", None, LEN)
    today = f"minilm-l6--len{LEN}--{encoder.weights_sha256[:8]}"  # as before versions existed
    assert text_id(encoder) == text_id(encoder, 1) == today
    assert text_id(encoder, 2) == f"{today}--captions-v2"
    ds = _train(stack)
    assert ds.text_ids() == [today]
    assert ds.group[TEXT_KIND][today].attrs["builtin_captions_version"] == CAPTIONS_VERSION == 1


def test_a_group_from_before_the_version_was_recorded_is_reused(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    (tid,) = _train(work).text_ids()
    del _train(work).group[TEXT_KIND][tid].attrs["builtin_captions_version"]  # as written before
    out = _ok("captions", "--entry", TRAIN, "--max-length", str(LEN), *CPU)
    assert f"text/{tid}" in out and f"already done │ {N}" in out  # found, nothing re-encoded
    assert _train(work).text_ids() == [tid]
    assert _train(work).group[TEXT_KIND][tid].attrs["builtin_captions_version"] == 1


def test_captions_of_another_generator_version_are_refused(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    (tid,) = _train(work).text_ids()
    grp = _train(work).group[TEXT_KIND][tid]
    grp.attrs["builtin_captions_version"] = CAPTIONS_VERSION + 1
    before = np.asarray(grp["tokens"][:])
    out = _refused(CacheError.exit_code, "captions", "--entry", TRAIN, "--max-length", "8", *CPU)
    assert f"caption generator version {CAPTIONS_VERSION + 1}" in out
    assert f"this repackctl's is version {CAPTIONS_VERSION}" in out
    assert f"repackctl cache rm {TRAIN} --text {tid}" in out
    assert np.array_equal(np.asarray(_train(work).group[TEXT_KIND][tid]["tokens"][:]), before)


def test_a_newer_versions_group_is_kept_apart(stack, tmp_path, monkeypatch):
    """Version 2 writes ``<id>--captions-v2``: today's code neither reuses it for its own
    captions nor picks it for a new run; it is used only when named."""
    work = _use(stack, tmp_path, monkeypatch)
    (tid,) = _train(work).text_ids()
    newer = f"{tid}--captions-v2"
    shutil.copytree(_group_dir(_train(work), tid), _group_dir(_train(work), tid).parent / newer)
    zarr.open_group(str(_group_dir(_train(work), newer)), mode="r+").attrs.update(
        {"builtin_captions_version": 2}
    )
    ds = _train(work)
    assert sorted(ds.text_ids()) == sorted([tid, newer])
    assert find_text_group(ds, "minilm") == tid  # today's; no "several groups" refusal
    out = _ok("captions", "--entry", TRAIN, "--max-length", str(LEN), *CPU)
    assert f"text/{tid} " in out and f"already done │ {N}" in out
    assert ds.group[TEXT_KIND][newer].attrs["builtin_captions_version"] == 2  # left as it was

    _ok("cache", "rm", TRAIN, "--text", tid, "--yes")
    ds = _train(work)
    with pytest.raises(CacheError, match="another caption generator version") as e:
        find_text_group(ds, "minilm")
    assert f"--text-features {newer}" in e.value.hint
    assert find_text_group(ds, newer) == newer  # named: used as it is


# --------------------------------------------------------------------------- 2. val pairing


def _folder(root: Path, name: str) -> Path:
    """``root/name/{train,val}/a/`` with 4 PNGs each and a captions.jsonl naming the folder."""
    rng = np.random.default_rng(len(name))
    rows = []
    for split in ("train", "val"):
        (root / name / split / "a").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / split / "a" / f"{i}.png")
            rows.append({"file": f"{split}/a/{i}.png", "caption": f"{name} {split} {i}"})
    (root / name / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / name


def _extract_and_caption(cache: Path, data: Path, split: str, *more: str) -> str:
    before = set(list_entries(str(cache)))
    args = ["--data", f"imagefolder:{data}", "--split", split, "--shard", "8", *more]
    _ok(*EXTRACT, *args, "--cache", str(cache))
    (entry,) = set(list_entries(str(cache))) - before
    captions = ["--captions", str(data / "captions.jsonl"), "--max-length", str(LEN)]
    _ok("captions", "--entry", entry, *captions, "--cache", str(cache), *CPU)
    return entry


def _run_extra(cache: Path, train: str) -> dict:
    """The part of a `train t2i` checkpoint's extra that `sample` reads prompts by."""
    (tid,) = DatasetEntry.open(str(cache), train).text_ids()
    return {"cache": {"root": str(cache), "entry": train}, "text": {"features": tid}}


def test_val_prompts_come_from_the_same_data_not_a_name_alike(tmp_path):
    cache = tmp_path / "cache"
    nightly, nature = _folder(tmp_path, "my-nightly"), _folder(tmp_path, "my-nature")
    train = _extract_and_caption(cache, nightly, "train")
    val = _extract_and_caption(cache, nightly, "val")
    other = _extract_and_caption(cache, nature, "val")
    # the names share the part before their last "-n": name parsing paired the wrong one first
    assert other.split("--")[0].rsplit("-n", 1)[0] == train.split("--")[0].rsplit("-n", 1)[0]
    assert sorted([other, val])[0] == other
    prompts, entry = cached_prompts(_run_extra(cache, train), 4, None)
    assert entry == val
    assert prompts == [f"my-nightly val {i}" for i in range(4)]

    # no val entry of the run's data: the training entry's captions (never the other data's)
    _ok("cache", "rm", val, "--yes", "--cache", str(cache))
    prompts, entry = cached_prompts(_run_extra(cache, train), 2, None)
    assert entry == train and prompts == ["my-nightly train 0", "my-nightly train 1"]


def test_val_entries_of_the_same_data_that_disagree_are_refused(tmp_path):
    cache = tmp_path / "cache"
    data = _folder(tmp_path, "shapes")
    train = _extract_and_caption(cache, data, "train")
    _extract_and_caption(cache, data, "val")
    # a seeded subset of the same val images (1 dropped: 0, 2, 3): other first captions
    subset = _extract_and_caption(cache, data, "val", "-n", "3", "--seed", "2")
    with pytest.raises(ConfigError, match="val entries of the run's data") as e:
        cached_prompts(_run_extra(cache, train), 4, None)
    assert subset in str(e.value) and "--prompts FILE" in e.value.hint


def test_nested_builtin_val_entries_give_the_longer_list(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    _ok(*EXTRACT, "--shard", "16", "-n", "4", "--split", "val")  # the first 4 of the same split
    _ok("captions", "--entry", "builtin-n4--val--32px", "--max-length", str(LEN), *CPU)
    extra = read_state(latest_checkpoint(work / "runs" / "tA"))["extra"]
    cache = str(work / "cache")  # where n4 was made (the checkpoint records the stack's)
    assert {"builtin-n4--val--32px", "builtin-n8--val--32px"} <= set(list_entries(cache))
    prompts, entry = cached_prompts(extra, 6, cache)
    assert entry == "builtin-n8--val--32px"
    assert prompts == [builtin_captions(i, split="val", seed=0)[0] for i in range(6)]
    # 4 prompts: both lists hold them; the larger entry stays the folder's FD reference (the
    # first name in sorted order, n4, was taken: captioning a smaller entry switched it)
    prompts, entry = cached_prompts(extra, 4, cache)
    assert entry == "builtin-n8--val--32px" and len(prompts) == 4


# --------------------------------------------------------------------------- 3. protocol prompts


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def test_protocol_lists_only_the_prompts_used(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    given = ["a red star", "a green disc", "a red star", "a blue ring", "a pink heart"]
    args = [a for p in given for a in ("--prompt", p)]
    _ok(*SAMPLE, "-n", "3", *args)
    (folder,) = (work / "samples").iterdir()
    # the folder name still hashes the prompts as given (folders written before are found)
    digest = hashlib.sha256("\n".join(given).encode()).hexdigest()[:8]
    assert folder.name.endswith(f"--p{digest}")
    card = _card(folder)
    assert card["prompts"] == ["a red star", "a green disc"]
    assert card["prompt_ids"] == [0, 1, 0]
    assert np.load(folder / "samples.npz")["arr_1"].tolist() == [0, 1, 0]
    lines = (folder / "prompts.txt").read_text().splitlines()
    assert lines == ["a red star", "a green disc", "a red star"]


def test_an_unused_long_prompt_is_not_warned_about(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    long = "a red star on a blue striped background with small dots in the evening"
    args = [*SAMPLE, "--prompt", "a star", "--prompt", long]
    out = _ok(*args, "-n", "1", "--out", str(work / "one"))
    assert "were cut" not in out
    assert _card(work / "one")["prompts"] == ["a star"]
    out = _ok(*args, "-n", "2", "--out", str(work / "two"))
    assert "Warning: 1 of 2 prompts were cut" in out


def test_a_folder_written_before_still_resumes(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    given = ["a red star", "a green disc", "a blue ring", "a pink heart"]
    args = [*SAMPLE, "-n", "2", *[a for p in given for a in ("--prompt", p)]]
    out = work / "old"
    _ok(*args, "--out", str(out))
    card = _card(out)
    card["prompts"] = given  # as written before: every prompt given, the ids indexing it
    (out / "protocol.json").write_text(json.dumps(card))
    (out / "000001.png").unlink()
    (out / "samples.npz").unlink()  # else the PNG is restored from it, not sampled
    text = _ok(*args, "--out", str(out))
    assert "2 (1 now, 1 already done)" in text
    assert _card(out)["prompts"] == given[:2] and _card(out)["prompt_ids"] == [0, 1]
