"""Text-to-image results that could be wrong are refused or stated, never silent.

- a lost (or emptied) ``captions`` chunk is an error, never empty prompts recorded as captions;
- resuming a samples folder with the same prompts in another order is refused (no relabelling);
- prompts cut at the text encoder's ``max_length`` are warned about and recorded;
- ``--precision bf16`` is honoured on the CPU (t2i and class-conditional sampling), refused where
  torch cannot autocast;
- the caption group and the latents a run trains on are recorded at start and kept on resume;
- `sample` and `evaluate adherence` read the resolved cache (else the recorded one, the same
  entry); adherence.json carries the sha256 of the samples and of the checkpoint.

A real toy stack (as tests/dit/test_t2i_pipeline.py): `extract` (patchpix, 32 px) → `pack
train` → `pack encode` → `captions` (MiniLM, length 8) → `train t2i` (2 steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from support.caches import t2i_stack, use_stack
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _error
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.captions_cache import TEXT_KIND
from repackctl.cli.app import app
from repackctl.dit.t2i_load import training_cache_root
from repackctl.errors import CacheError, ConfigError, ResumeConflict
from repackctl.evaluate.generative import folder_sha256
from repackctl.sample.folder import png_path
from repackctl.train import latest_checkpoint, read_state

runner = CliRunner()
N, LEN = 32, 8
CPU = ["--device", "cpu"]
TRAIN = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2", "--image-every", "0"]
SAMPLE = ["sample", "-r", "tA", "-n", "2", "--steps", "2", *CPU]
LONG = [  # the same first six words (8 MiniLM tokens with [CLS] and [SEP]), then different
    "a red star on a blue striped background with small dots",
    "a red star on a blue striped background in the evening light",
    "a star",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """extract (train 32 + val 8) → pack train (pack-tiny) → pack encode → captions of both →
    a 2-step t2i run ``tA``; returns the folder holding cache/ and runs/."""
    # its own build, not a copy of `shared_t2i_stack`: tests here check the root the run records
    return t2i_stack(tmp_path_factory.mktemp("t2i-trust") / "w", N, LEN)


def _use(stack: Path, tmp_path: Path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _entry(work: Path, split: str) -> DatasetEntry:
    cache = str(work / "cache")
    (name,) = [n for n in list_entries(cache) if f"--{split}--" in n]
    return DatasetEntry.open(cache, name)


def _text_group(ds: DatasetEntry) -> zarr.Group:
    (name,) = ds.complete_groups(TEXT_KIND, ("done",))
    return ds.group[TEXT_KIND][name]


def _captions_dir(ds: DatasetEntry) -> Path:
    return Path(str(ds.group.store.root)) / _text_group(ds)["captions"].path


# --------------------------------------------------------------------------- 1. lost captions
def test_a_lost_captions_chunk_is_an_error_not_empty_prompts(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    val = _entry(work, "val")
    chunks = [p for p in (_captions_dir(val) / "c").rglob("*") if p.is_file()]
    assert chunks, "the val captions have no stored chunk to lose"
    for p in chunks:
        p.unlink()
    out = _error(CacheError.exit_code, *SAMPLE)
    assert f"{val.name} text/" in out and "captions" in out and "missing" in out
    assert "cache verify" in out  # the hint names the repair
    assert not (work / "samples").exists() or not any((work / "samples").iterdir())


def test_an_empty_caption_of_a_captioned_image_is_refused(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    caps = _text_group(_entry(work, "val"))["captions"]
    caps[0:1] = np.array([""], dtype=str)  # a row marked written, its text gone
    out = _error(CacheError.exit_code, *SAMPLE)
    assert "image 0 is marked as captioned but its caption text is empty" in out


def test_training_captions_are_read_through_the_guard(stack, tmp_path, monkeypatch):
    from repackctl.dit.t2i_task import build_t2i_task
    from repackctl.settings import resolve_settings

    work = _use(stack, tmp_path, monkeypatch)
    settings = resolve_settings(None, {"device": "cpu", "t2i.name": "x"}).settings
    first = build_t2i_task(settings)[0].data.captions(np.arange(2))
    assert len(first) == 2 and all(c and c[0] for c in first)  # texts, not ""
    task, _ = build_t2i_task(settings)
    for p in (_captions_dir(_entry(work, "train")) / "c").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.raises(CacheError) as e:
        task.data.captions(np.arange(2))
    assert "captions" in e.value.message and "missing" in e.value.message


# --------------------------------------------------------------------------- 2. prompt order
def test_resuming_a_folder_with_another_prompt_list_is_refused(stack, tmp_path, monkeypatch):
    _use(stack, tmp_path, monkeypatch)
    out = str(tmp_path / "out")
    a, b = "a red star", "a green disc"
    _ok(*SAMPLE, "--out", out, "--prompt", a, "--prompt", b)
    labels = (Path(out) / "prompts.txt").read_text().splitlines()
    assert labels == [a, b]
    # the same distinct prompts in another order would relabel 000000 and 000001
    msg = _error(ConfigError.exit_code, *SAMPLE, "--out", out, "--prompt", b, "--prompt", a)
    assert "other settings" in msg and "prompts_sha256" in msg
    assert (Path(out) / "prompts.txt").read_text().splitlines() == labels  # untouched
    # the same list resumes (nothing left to do)
    said = " ".join(_ok(*SAMPLE, "--out", out, "--prompt", a, "--prompt", b).split())
    assert "0 now, 2 already done" in said


# --------------------------------------------------------------------------- 3. truncation
def test_prompts_cut_at_max_length_are_warned_about_and_recorded(stack, tmp_path, monkeypatch):
    _use(stack, tmp_path, monkeypatch)
    out = tmp_path / "long"
    args = [*SAMPLE, "-n", "3", "--out", str(out)]
    res = runner.invoke(app, [*args, *(x for p in LONG for x in ("--prompt", p))])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "Warning: 2 of 3 prompts were cut at the text encoder's max_length 8" in said
    card = json.loads((out / "protocol.json").read_text())
    cut = card["prompt_truncation"]
    assert cut["max_length"] == LEN and cut["cut"] == 2
    first, second, short = cut["as_encoded"]
    assert short is None  # "a star" fits
    assert first == second and first.startswith("a red star")  # what the model saw, the same
    assert len(first.split()) < len(LONG[0].split())
    assert card["prompts"] == LONG  # the prompts as given stay recorded beside


# --------------------------------------------------------------------------- 4. precision
def test_t2i_bf16_is_honoured_on_cpu_and_recorded(stack, tmp_path, monkeypatch):
    _use(stack, tmp_path, monkeypatch)
    runs = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / p
        _ok(*SAMPLE, "--prompt", "a red star", "--precision", p, "--out", str(out))
        runs[p] = np.load(out / "latents.npy")
        assert json.loads((out / "protocol.json").read_text())["precision"] == p
    assert np.isfinite(runs["bf16"]).all()
    assert not np.array_equal(runs["fp32"], runs["bf16"])  # bf16 really ran


def test_a_precision_the_device_cannot_autocast_is_refused_before_writing(
    stack, tmp_path, monkeypatch
):
    work = _use(stack, tmp_path, monkeypatch)
    out = tmp_path / "never"
    msg = _error(
        ConfigError.exit_code,
        *SAMPLE[:-2],
        "--device",
        "meta",
        "--precision",
        "bf16",
        "--out",
        str(out),
        "--prompt",
        "a red star",
    )
    assert "--precision bf16 is not supported on meta" in msg and "the samples" in msg
    assert not out.exists() and not (work / "samples").exists()


def test_class_conditional_bf16_is_honoured_on_cpu(stack, tmp_path, monkeypatch):
    from support.stack import make_dit_run

    work = _use(stack, tmp_path, monkeypatch)
    make_dit_run(str(work / "runs"), "dit-c", seed=0)
    lat = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / f"c-{p}"
        _ok("sample", "-r", "dit-c", "-n", "2", "--steps", "2", "--precision", p, "--out", str(out))
        lat[p] = np.load(out / "latents.npy")
    assert not np.array_equal(lat["fp32"], lat["bf16"])
    msg = _error(ConfigError.exit_code, "sample", "-r", "dit-c", "-n", "2", "--device", "meta",
                 "--precision", "fp16", "--out", str(tmp_path / "never"))  # fmt: skip
    assert "--precision fp16 is not supported on meta" in msg
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- 5. text group
def test_the_caption_group_is_recorded_at_start_and_kept_on_resume(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    run = work / "runs" / "tA"
    first = read_state(latest_checkpoint(run))["extra"]["text"]["features"]
    record = json.loads((run / "config.json").read_text())["extra"]["settings"]
    assert record["values"]["t2i"]["text_features"] == first  # not None: resolved and kept
    assert record["sources"]["t2i.text_features"].startswith("stored")
    # another (newer, longer) caption group of the same encoder on the training entry
    train = _entry(work, "train").name
    _ok("captions", "--entry", train, "--max-length", "12", *CPU)
    assert len(_entry(work, "train").complete_groups(TEXT_KIND, ("done",))) == 2
    said = _ok(*TRAIN, "--steps", "4", "--name", "tA", *CPU)
    assert "resumed at 2" in said
    assert read_state(latest_checkpoint(run))["extra"]["text"]["features"] == first
    # naming the other group is refused before any weights are read (no size mismatch), by the
    # settings layer even when allowed (audit s37 B finding 3)
    (other,) = [g for g in _entry(work, "train").text_ids() if g != first]
    msg = _error(
        ResumeConflict.exit_code,
        *TRAIN, "--steps", "6", "--name", "tA", "--text-features", other,
        "--allow-change", "text_features", *CPU,
    )  # fmt: skip
    assert f"t2i.text_features: '{first}' → '{other}'" in msg, msg
    assert "t2i.text_features cannot change on resume" in msg, msg
    assert "size mismatch" not in msg
    assert read_state(latest_checkpoint(run))["step"] == 4


def test_a_run_that_did_not_record_its_group_resumes_on_its_checkpoints(
    stack, tmp_path, monkeypatch
):
    work = _use(stack, tmp_path, monkeypatch)
    run = work / "runs" / "tA"
    config = json.loads((run / "config.json").read_text())
    config["extra"]["settings"]["values"]["t2i"]["text_features"] = None  # as older versions
    config["extra"]["settings"]["sources"]["t2i.text_features"] = "default"
    config.pop("config_sha256")  # as older versions wrote it, without its own sha256
    (run / "config.json").write_text(json.dumps(config))
    first = read_state(latest_checkpoint(run))["extra"]["text"]["features"]
    _ok("captions", "--entry", _entry(work, "train").name, "--max-length", "12", *CPU)
    _ok(*TRAIN, "--steps", "4", "--name", "tA", *CPU)
    assert read_state(latest_checkpoint(run))["extra"]["text"]["features"] == first


@pytest.mark.parametrize("started", ["recorded", "before-recording"])
def test_a_resume_after_a_newer_pack_encode_trains_on_its_own_latents(
    stack, tmp_path, monkeypatch, started
):
    """As `train dit` (tests/dit/test_dit_resume_latents.py): a run records the latents it
    resolved at its start, and one that recorded none resumes on its checkpoint's; it took the
    newest latents and was refused as "trained on latents …" after another `pack encode`."""
    work = _use(stack, tmp_path, monkeypatch)
    run = work / "runs" / "tA"
    own = read_state(latest_checkpoint(run))["extra"]["cache"]["latents"]
    record = json.loads((run / "config.json").read_text())["extra"]["settings"]
    if started == "recorded":
        assert record["values"]["t2i"]["latents"] == own
    else:
        config = json.loads((run / "config.json").read_text())
        for key in ("latents", "entry"):
            config["extra"]["settings"]["values"]["t2i"][key] = None
            config["extra"]["settings"]["sources"].pop(f"t2i.{key}", None)
        config.pop("config_sha256")
        (run / "config.json").write_text(json.dumps(config))
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", str(N)]
    pack = ["pack", "train", *src, "--steps", "2", "--batch-size", "8", "--ch", "8", "-c", "4"]
    _ok(*pack, "--name", "pk2", "--image-every", "0", *CPU)
    _ok("pack", "encode", "--run", "pk2", *CPU)
    assert any("--pk2-" in i for i in _entry(work, "train").latent_ids())
    said = _ok(*TRAIN, "--steps", "4", "--name", "tA", *CPU)
    assert "resumed at 2" in said and "trained on latents" not in said
    state = read_state(latest_checkpoint(run))
    assert state["step"] == 4 and state["extra"]["cache"]["latents"] == own


# --------------------------------------------------------------------------- 6 + 7. the cache
def test_sample_and_adherence_read_the_resolved_cache(stack, tmp_path, monkeypatch):
    work = _use(stack, tmp_path, monkeypatch)
    # the copy's cache (REPACKCTL_CACHE) has no captioned val entry; the recorded one has
    val = _entry(work, "val").name
    _ok("cache", "rm", val, "--yes")
    _ok(*SAMPLE, "--out", str(tmp_path / "s"))
    card = json.loads((tmp_path / "s" / "protocol.json").read_text())
    assert card["prompt_source"].endswith(_entry(work, "train").name)  # read here, not there
    _ok("evaluate", "adherence", str(tmp_path / "s"), "--steps", "2", *CPU)
    scores = json.loads((tmp_path / "s" / "adherence.json").read_text())
    assert scores["cache"]["root"] == str(work / "cache")
    pngs = [png_path(tmp_path / "s", i) for i in range(2)]
    assert scores["samples_sha256"] == folder_sha256(pngs, tmp_path / "s")
    assert scores["checkpoint_sha256"] == card["checkpoint_sha256"] and card["checkpoint_sha256"]


def test_without_the_entry_in_the_resolved_cache_the_recorded_root_is_used(
    stack, tmp_path, monkeypatch
):
    _use(stack, tmp_path, monkeypatch)
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "empty"))
    _ok(*SAMPLE, "--out", str(tmp_path / "s"))
    card = json.loads((tmp_path / "s" / "protocol.json").read_text())
    assert "--val--" in card["prompt_source"]  # the recorded cache's val captions
    _ok("evaluate", "adherence", str(tmp_path / "s"), "--steps", "2", *CPU)
    scores = json.loads((tmp_path / "s" / "adherence.json").read_text())
    assert scores["cache"]["root"] == str(stack / "cache")


def test_an_entry_of_the_same_name_that_is_not_the_runs_is_refused(stack, tmp_path):
    extra = read_state(latest_checkpoint(stack / "runs" / "tA"))["extra"]
    other = tmp_path / "other"  # the same images, extracted again: no latents of the run
    _ok("extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "8", "--shard", "16",
        "--num-workers", "0", "-n", str(N), "--cache", str(other), *CPU)  # fmt: skip
    gone = dict(extra, cache=dict(extra["cache"], root=str(tmp_path / "gone")))
    with pytest.raises(CacheError) as e:
        training_cache_root(str(other), gone, "pass prompts")
    assert "holds no latents" in e.value.message and str(other) in e.value.message
    assert "--cache" in e.value.hint
    assert training_cache_root(str(other), extra, "x") == str(stack / "cache")  # falls back
