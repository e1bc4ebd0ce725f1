"""The text encoder's identity covers everything that changes its features, and a caption length
the model cannot take is refused.

- ``describe()`` records ``files_sha256`` (config and tokenizer files) beside ``weights_sha256``;
  both are hashed from the bytes on disk when the encoder is loaded;
- `sample`, a resumed `train t2i` and a resumed `captions` refuse text-encoder files other than
  the ones the captions were encoded with (a tokenizer that no longer lowercases), naming them;
- a damaged extracted copy of the built-in weights (the tool's own cache) is extracted again
  with a warning, and sampling gives the same latents as before the damage;
- groups and runs written before ``files_sha256`` was recorded keep working;
- ``--max-length`` above the model's position embeddings is an Error + Hint before anything is
  written (it was a RuntimeError traceback and a half-made group).

Real components: the installed MiniLM wheel, a tiny CLIP folder saved with ``transformers``, and
the toy text-to-image stack (`extract` → `pack train` → `pack encode` → `captions` → `train
t2i`) through the CLI on real Zarr caches in temporary folders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok as _ok
from support.cli import cli_refused as _refused

from repackctl.cache.store import DatasetEntry
from repackctl.captions_cache import TEXT_KIND
from repackctl.encoders.text import identity_differences
from repackctl.encoders.text_minilm import extracted_folder, minilm
from repackctl.errors import CacheError, CheckpointError, ConfigError, WeightsError
from repackctl.train import latest_checkpoint, read_state

N, LEN = 32, 8
CPU = ["--device", "cpu"]
TRAIN = "builtin-n32--train--32px"
T2I = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2", "--image-every", "0"]
SAMPLE = ["-n", "2", "--steps", "2", "--cfg", "4", "--grid", "0", *CPU]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """extract (train 32 + val 8) → pack train → pack encode → captions (MiniLM, length 8) of
    both → a 2-step t2i run ``tA``; returns the folder holding cache/ and runs/."""
    return shared_t2i_stack(
        tmp_path_factory, tmp_path_factory.mktemp("text-identity") / "w", N, LEN
    )


def _train(work: Path) -> DatasetEntry:
    return DatasetEntry.open(str(work / "cache"), TRAIN)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_lowercase(folder: Path) -> None:
    """Edit a MiniLM folder's tokenizer so that it no longer lowercases (capitals become
    [UNK]): the weights are untouched, the token ids of 'A RED STAR' change."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["do_lower_case"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def _weights_run(work: Path, tmp_path: Path) -> tuple[Path, str]:
    """Captions of the training entry encoded with ``--text-weights DIR`` (a copy of the
    built-in MiniLM folder) and a 2-step t2i run ``tW`` on them; returns (DIR, group id)."""
    folder = tmp_path / "minilm-copy"
    shutil.copytree(extracted_folder(), folder)
    (tid,) = _train(work).text_ids()
    _ok("cache", "rm", TRAIN, "--text", tid, "--yes")
    weights = ["--text-weights", str(folder), "--max-length", str(LEN)]
    _ok("captions", "--entry", TRAIN, *weights, *CPU)
    assert _train(work).text_ids() == [tid]  # same weights: the same group id as before
    _ok(*T2I, "--steps", "2", "--name", "tW", "--text-features", tid, *CPU)
    return folder, tid


# --------------------------------------------------------------------------- recorded identity
def test_the_identity_covers_the_tokenizer_and_is_recorded_with_group_and_run(
    stack, tmp_path, monkeypatch
):
    work = use_stack(stack, tmp_path, monkeypatch)
    enc = minilm(max_length=LEN)
    folder = extracted_folder()
    files = enc.describe()["files_sha256"]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files["tokenizer.json"] == _sha(folder / "tokenizer.json")
    assert enc.weights_sha256 == _sha(folder / "model.safetensors")
    (tid,) = _train(work).text_ids()
    recorded = _train(work).group[TEXT_KIND][tid].attrs["encoder"]
    assert recorded["files_sha256"] == files
    extra = read_state(latest_checkpoint(work / "runs" / "tA"))["extra"]
    assert extra["text"]["encoder"]["files_sha256"] == files


def test_identity_differences_name_each_changed_file():
    old = {"weights_sha256": "a" * 64, "files_sha256": {"tokenizer.json": "b" * 64, "x": "c"}}
    new = {"weights_sha256": "d" * 64, "files_sha256": {"tokenizer.json": "e" * 64, "y": "c"}}
    said = " | ".join(identity_differences(old, new))
    for part in ("model.safetensors", "tokenizer.json", "x (present then, missing now)", "y "):
        assert part in said
    assert identity_differences(old, old) == []
    # a record from before files_sha256 was recorded is compared on its weights only
    assert identity_differences({"weights_sha256": "a" * 64}, old) == []


# --------------------------------------------------------------------------- a changed tokenizer
def test_sampling_captions_and_training_refuse_a_changed_tokenizer(stack, tmp_path, monkeypatch):
    """One weights run, its folder's tokenizer then changed: `sample` refuses it before writing
    (naming the tokenizer files, not the weights), a resumed `captions` refuses it (naming the
    group and how to remove it, its tokens untouched), and a resumed `train t2i` refuses the
    group encoded again with it under the same id (its checkpoint untouched). Each refusal
    writes nothing, so the three share the one (costly) run."""
    work = use_stack(stack, tmp_path, monkeypatch)
    folder, tid = _weights_run(work, tmp_path)
    before = np.asarray(_train(work).group[TEXT_KIND][tid]["tokens"][:])
    _ok("sample", "-r", "tW", "--prompt", "A RED STAR", *SAMPLE, "--out", str(tmp_path / "ok"))
    _no_lowercase(folder)
    # sampling
    out = tmp_path / "changed"
    msg = _refused(
        WeightsError.exit_code, "sample", "-r", "tW", "--prompt", "A RED STAR", *SAMPLE,
        "--out", str(out),
    )  # fmt: skip
    assert "tokenizer.json" in msg and "tokenizer_config.json" in msg
    assert "model.safetensors" not in msg  # the weights are the same: not blamed
    assert not out.exists()  # refused before anything is written
    # resuming captions
    weights = ["--text-weights", str(folder), "--max-length", str(LEN)]
    msg = _refused(CacheError.exit_code, "captions", "--entry", TRAIN, *weights, *CPU)
    assert f"text/{tid}" in msg and "tokenizer.json" in msg
    assert "encoded with other text-encoder files" in msg  # the tokenizer check, not another
    assert f"repackctl cache rm {TRAIN} --text {tid}" in msg
    after = np.asarray(_train(work).group[TEXT_KIND][tid]["tokens"][:])
    assert np.array_equal(after, before)
    # resuming training on the group encoded again (same id) with the changed tokenizer
    _ok("cache", "rm", TRAIN, "--text", tid, "--yes")
    _ok("captions", "--entry", TRAIN, *weights, *CPU)
    run = work / "runs" / "tW"
    msg = _refused(
        CheckpointError.exit_code, *T2I, "--steps", "4", "--name", "tW", "--text-features", tid,
        *CPU,
    )  # fmt: skip
    assert f"text/{tid}" in msg and "tokenizer.json" in msg
    assert "encoded with other text-encoder files" in msg
    assert read_state(latest_checkpoint(run))["step"] == 2


# --------------------------------------------------------------------------- damaged weights
def test_a_damaged_extracted_copy_is_extracted_again_with_a_warning(tmp_path, capsys):
    folder = extracted_folder(tmp_path)
    good = {p.name: _sha(p) for p in folder.iterdir()}
    with open(folder / "model.safetensors", "r+b") as f:  # same size, other bytes
        f.seek(80_000_000)
        f.write(b"\x3f" * 400_000)
    (folder / "tokenizer.json").write_text("{}")
    enc = minilm(cache_dir=tmp_path, max_length=LEN)
    err = capsys.readouterr().err
    assert "Warning:" in err and "model.safetensors" in err and "extracting them again" in err
    assert {p.name: _sha(p) for p in folder.iterdir()} == good
    assert enc.weights_sha256 == good["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_the_weights_hash_is_read_from_disk_not_from_the_extraction_record(tmp_path):
    folder = extracted_folder(tmp_path)
    record = json.loads((folder / "repackctl-extracted.json").read_text())
    record["weights_sha256"] = "0" * 64  # a record that says otherwise is not believed
    (folder / "repackctl-extracted.json").write_text(json.dumps(record))
    assert minilm(cache_dir=tmp_path).weights_sha256 == _sha(folder / "model.safetensors")


def test_sampling_with_a_damaged_builtin_copy_repairs_it_and_gives_the_same_latents(
    stack, tmp_path, monkeypatch
):
    use_stack(stack, tmp_path, monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = ["sample", "-r", "tA", "--prompt", "a red star", *SAMPLE]
    _ok(*base, "--out", str(tmp_path / "ok"))
    (weights,) = (tmp_path / "xdg").glob("repackctl-weights/*/model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(80_000_000)
        f.write(b"\x3f" * 400_000)
    said = _ok(*base, "--out", str(tmp_path / "damaged"))
    assert "Warning:" in said and "extracting them again" in said
    ok, again = (np.load(tmp_path / d / "latents.npy") for d in ("ok", "damaged"))
    assert np.array_equal(ok, again)


# --------------------------------------------------------------------------- a moved folder
def test_a_moved_weights_folder_is_named_then_sampled_from_where_it_is_now(
    stack, tmp_path, monkeypatch
):
    work = use_stack(stack, tmp_path, monkeypatch)
    folder, _ = _weights_run(work, tmp_path)
    base = ["sample", "-r", "tW", "--prompt", "a red star", *SAMPLE]
    _ok(*base, "--out", str(tmp_path / "before"))
    moved = tmp_path / "elsewhere" / "minilm"  # the run copied to another machine, say
    moved.parent.mkdir()
    folder.rename(moved)
    msg = _refused(WeightsError.exit_code, *base, "--out", str(tmp_path / "gone"))
    assert str(folder) in msg and "--text-weights DIR" in msg
    assert not (tmp_path / "gone").exists()
    _ok(*base, "--text-weights", str(moved), "--out", str(tmp_path / "after"))
    before, after = (np.load(tmp_path / d / "latents.npy") for d in ("before", "after"))
    assert np.array_equal(before, after)
    _no_lowercase(moved)  # the folder given is checked as the recorded one is
    out = tmp_path / "changed"
    msg = _refused(WeightsError.exit_code, *base, "--text-weights", str(moved), "--out", str(out))
    assert "tokenizer.json" in msg and str(moved) in msg and not out.exists()


# --------------------------------------------------------------------------- older records
def test_groups_and_runs_without_files_sha256_keep_working(stack, tmp_path, monkeypatch):
    work = use_stack(stack, tmp_path, monkeypatch)
    (tid,) = _train(work).text_ids()
    path = Path(str(_train(work).group.store.root)) / _train(work).group[TEXT_KIND][tid].path
    grp = zarr.open_group(str(path), mode="r+")
    encoder = dict(grp.attrs["encoder"])
    del encoder["files_sha256"]  # as written before it was recorded
    grp.attrs["encoder"] = encoder
    out = _ok("captions", "--entry", TRAIN, "--max-length", str(LEN), *CPU)
    assert f"already done │ {N}" in out  # reopened, nothing encoded again
    assert "files_sha256" not in _train(work).group[TEXT_KIND][tid].attrs["encoder"]
    _ok(*T2I, "--steps", "4", "--name", "tA", *CPU)  # resumes on it
    extra = read_state(latest_checkpoint(work / "runs" / "tA"))["extra"]
    assert "files_sha256" not in extra["text"]["encoder"]  # the group's record, as it is
    _ok("sample", "-r", "tA", "--prompt", "a red star", *SAMPLE, "--out", str(tmp_path / "s"))


# --------------------------------------------------------------------------- --max-length
def test_a_length_beyond_the_models_positions_is_refused_before_writing(
    stack, tmp_path, monkeypatch
):
    work = use_stack(stack, tmp_path, monkeypatch)
    before = _train(work).text_ids()
    msg = _refused(ConfigError.exit_code, "captions", "--entry", TRAIN, "--max-length", "600", *CPU)
    assert "--max-length" in msg and "600" in msg and "512" in msg
    assert "max_position_embeddings" in msg
    assert _train(work).text_ids() == before
    assert sorted(p.name for p in (work / "cache" / TRAIN / TEXT_KIND).iterdir()) == sorted(
        [*before, "zarr.json"]
    )  # no half-made group either
    assert minilm(max_length=512).max_length == 512  # the limit itself is fine
    with pytest.raises(ConfigError, match="513 exceeds the 512 token positions"):
        minilm(max_length=513)


# --------------------------------------------------------------------------- CLIP
def _save_tiny_clip(folder: Path, tokenizer_folder: Path) -> None:
    """A 1-layer random CLIP text tower and a lowercasing word-level tokenizer, saved as a
    diffusers pipeline keeps them (``text_encoder/`` and ``tokenizer/``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from repackctl.encoders.text import quiet_transformers

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, "a": 4, "red": 5, "star": 6}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", **special)
    tok.save_pretrained(str(tokenizer_folder))
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=12,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    with quiet_transformers():
        CLIPTextModel(cfg).save_pretrained(str(folder))


def test_clip_records_its_tokenizer_files_including_a_pipelines_tokenizer_folder(tmp_path):
    from repackctl.encoders.text_clip import clip_text

    _save_tiny_clip(tmp_path / "text_encoder", tmp_path / "tokenizer")
    enc = clip_text(weights=str(tmp_path))
    first = enc.describe()
    assert "config.json" in first["files_sha256"]
    assert "tokenizer/tokenizer.json" in first["files_sha256"]
    upper = enc.encode(["A RED STAR"]).tokens
    path = tmp_path / "tokenizer" / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = None  # no lowercasing: capitals become <unk>
    path.write_text(json.dumps(tok))
    enc = clip_text(weights=str(tmp_path))
    assert not np.allclose(enc.encode(["A RED STAR"]).tokens.numpy(), upper.numpy())
    second = enc.describe()
    assert second["weights_sha256"] == first["weights_sha256"]
    differ = identity_differences(first, second)
    assert len(differ) == 1 and differ[0].startswith("tokenizer/tokenizer.json")


def test_clip_length_beyond_positions_names_the_setting(tmp_path):
    from repackctl.encoders.text_clip import clip_text

    _save_tiny_clip(tmp_path / "text_encoder", tmp_path / "tokenizer")
    with pytest.raises(WeightsError) as e:
        clip_text(weights=str(tmp_path), max_length=13)
    assert "--max-length" in e.value.message and "12" in e.value.message
