"""Text-to-image samples folders and `evaluate adherence` get the trust of class-conditional ones.

- `sample` of a t2i run records the sha256 and size of samples.npz and latents.npy in
  protocol.json (`evaluate fid` refuses a swapped samples.npz); on resume, a per-sample file
  damaged after it was written is made again (``Warning:``), the folder then equal to an
  uninterrupted run's byte for byte.
- `evaluate adherence` scores only the PNGs `sample` recorded (their pixels' digest), only the
  attributes a prompt names in the text its encoder kept (cut words are left out, warned about
  and recorded), and works once the checkpoint that made the samples was rotated away.
- `--prompts FILE` is plain text: a captions index (.jsonl/.json/.csv, or JSON-object lines) is
  refused; a UTF-8 BOM is not part of the first prompt.

A real toy stack (tests/support/caches.py ``t2i_stack``): extract (patchpix, 32 px) → pack
train → pack encode → captions (MiniLM, length 8) → `train t2i` (2 steps) ``tA``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.kill import kill_after_pngs
from support.stack import FD_SCORE

from repackctl.errors import CheckpointError, ConfigError, DataError
from repackctl.evaluate.adherence import encoded_attributes, prompt_attributes

CPU = ["--device", "cpu"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", *CPU]
PROMPTS = ["--prompt", "a red star", "--prompt", "a blue ring"]
SCORE = FD_SCORE
# 8 MiniLM tokens keep "a small striped light pink and": the colour, not the shape noun
CUT_SHAPE = "a small striped light pink and yellow disc with an outline in the center"
# ... "a small two - tone dark": neither the object's colour (dark teal) nor its noun
CUT_BOTH = "a small two-tone dark teal and blue ring with an outline in the center"


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-integrity") / "w")


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def _images(folder: Path) -> np.ndarray:
    return np.load(folder / "samples.npz")["arr_0"]


# --------------------------------------------------------------------------- 1. the folder
@pytest.mark.slow
def test_the_card_records_its_files_and_evaluate_refuses_a_swapped_npz(work, tmp_path):
    good, other = tmp_path / "good", tmp_path / "other"
    cli_ok(*SAMPLE, "-n", "4", *PROMPTS, "--out", str(good))
    cli_ok(*SAMPLE, "-n", "4", *PROMPTS, "--seed", "1", "--out", str(other))
    files = _card(good)["files"]
    for name in ("samples.npz", "latents.npy"):
        data = (good / name).read_bytes()
        assert files[name] == {**files[name], "size": len(data)}
        assert files[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (good / "latents").exists()  # the per-sample files and manifests are gone
    assert not np.array_equal(_images(good), _images(other))

    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    shutil.copy(other / "samples.npz", edited / "samples.npz")  # another seed's images
    out = cli_refused(DataError.exit_code, "evaluate", "fid", str(edited), *SCORE)
    assert f"{edited / 'samples.npz'}" in out and "sha256" in out
    assert not (edited / "metrics.json").exists()
    # the hint's repair: the same `sample` command rebuilds samples.npz from the PNGs
    cli_ok(*SAMPLE, "-n", "4", *PROMPTS, "--out", str(edited))
    assert (edited / "samples.npz").read_bytes() != (other / "samples.npz").read_bytes()
    assert np.array_equal(_images(edited), _images(good))


def _args(out: Path) -> list[str]:
    return ["sample", "-r", "tA", *PROMPTS, "-n", "8", "--steps", "60", "--batch-size", "2",
            "--grid", "0", "--seed", "3", *CPU, "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_resume_makes_damaged_files_again_byte_identical(work, tmp_path):
    """A real kill, then per-sample files damaged from outside: the rerun warns, makes them
    again (whole batches), and ends with the files of an uninterrupted run, byte for byte."""
    cli_ok(*_args(tmp_path / "ref"))
    out = tmp_path / "killed"
    env = subprocess_env(work, REPACKCTL_SAMPLES=str(work / "samples"))
    kill_after_pngs(_args(out), env, out, pngs=3, poll=0.05)
    assert not (out / "samples.npz").exists()
    assert list((out / "latents").glob("written-*.json"))  # manifests while sampling
    png, npy = out / "000000.png", out / "latents" / "000001.npy"
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the image data
    png.write_bytes(bytes(data))
    with open(npy, "r+b") as f:
        f.truncate(100)  # cut inside its header

    cmd = [sys.executable, "-m", "repackctl", *_args(out)]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    text = again.stdout + again.stderr
    assert f"Warning: {png} was damaged" in text and f"Warning: {npy} was damaged" in text, text
    for name in ("latents.npy", "000000.png", "000001.png", "prompts.txt"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert np.array_equal(_images(out), _images(tmp_path / "ref"))
    assert _card(out)["files"]["latents.npy"] == _card(tmp_path / "ref")["files"]["latents.npy"]


# --------------------------------------------------------------------------- 2. adherence
def test_adherence_refuses_pngs_that_are_not_the_recorded_samples(work, tmp_path):
    good = tmp_path / "good"
    cli_ok(*SAMPLE, "-n", "4", *PROMPTS, "--out", str(good))
    swapped = tmp_path / "swapped"
    shutil.copytree(good, swapped)
    shutil.copy(good / "000001.png", swapped / "000000.png")  # a blue ring where a red star was
    out = cli_refused(DataError.exit_code, "evaluate", "adherence", str(swapped), "--steps", "2")
    assert "000000.png" in out and "images_sha256" in out and "--out" in out
    assert not (swapped / "adherence.json").exists()  # nothing written before the refusal

    cli_ok("evaluate", "adherence", str(good), "--steps", "2", *CPU)
    assert json.loads((good / "adherence.json").read_text())["samples_verified"] is True


def test_adherence_scores_only_what_the_encoder_kept(work, tmp_path):
    folder = tmp_path / "cut"
    prompts = ["--prompt", CUT_SHAPE, "--prompt", CUT_BOTH, "--prompt", "a red star"]
    cli_ok(*SAMPLE, "-n", "3", *prompts, "--out", str(folder))
    said = cli_ok("evaluate", "adherence", str(folder), "--steps", "2", *CPU)
    assert "Warning: 2 of 3 prompts were cut at the text encoder's max_length" in said
    assert "the shape of 2 samples, the colour of 1" in said
    scores = json.loads((folder / "adherence.json").read_text())
    assert scores["n_shape"] == 1  # only "a red star" kept its noun
    assert scores["n_colour"] == 2  # "light pink" was seen; "dark teal" lost its hue word
    cut = scores["truncation"]
    assert cut["known"] and cut["left_out"] == {"shape": 2, "colour": 1}
    first, second = cut["prompts_cut"]
    assert first["prompt_id"] == 0 and first["left_out"] == ["shape"]
    assert first["as_encoded"] == "a small striped light pink and"
    assert second["left_out"] == ["shape", "colour"] and second["samples"] == 1
    assert "max_length 8" in cut["why"]


def test_encoded_attributes_follow_the_kept_words():
    full = "a circle in light teal, on the left"
    assert prompt_attributes(full) == (0, "teal")
    assert encoded_attributes(full, None) == ((0, "teal"), [])  # not cut
    assert encoded_attributes(full, "a circle in light") == ((0, None), ["colour"])
    assert encoded_attributes(full, "a circle in light teal,") == ((0, "teal"), [])
    # a text that is not the start of the prompt (unknown tokens): nothing is known to be seen
    assert encoded_attributes("a red star", "a star") == ((None, None), ["shape", "colour"])


def test_adherence_works_after_the_checkpoint_was_rotated_away(work, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, "-n", "2", *PROMPTS, "--out", str(folder))
    ckpt = Path(_card(folder)["checkpoint"])
    train = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2"]
    cli_ok(*train, "--image-every", "0", "--steps", "4", "--keep-last", "1", "--name", "tA", *CPU)
    assert not ckpt.exists()  # rotated away
    cli_ok("evaluate", "adherence", str(folder), "--steps", "2", *CPU)
    scores = json.loads((folder / "adherence.json").read_text())
    assert scores["classifier"]["trained_on"] == "builtin-n32--train--32px"
    assert scores["checkpoint_sha256"] == _card(folder)["checkpoint_sha256"]

    # a card written before cards recorded the training entry: the checkpoint was the record
    card = _card(folder)
    del card["training_entry"]
    (folder / "protocol.json").write_text(json.dumps(card))
    out = cli_refused(CheckpointError.exit_code, "evaluate", "adherence", str(folder))
    assert f"{ckpt}, is gone" in out and "sample run tA again" in out
    assert "pass a complete checkpoint folder" not in out


# --------------------------------------------------------------------------- 3. prompts files
def test_a_captions_index_is_not_a_prompts_file(work, tmp_path):
    index = tmp_path / "captions.jsonl"
    index.write_text('{"file": "im0.png", "caption": "a red star"}\n')
    out = cli_refused(ConfigError.exit_code, *SAMPLE, "-n", "1", "--prompts", str(index))
    assert "captions index" in out and "one prompt per line" in out
    shaped = tmp_path / "prompts.txt"
    shaped.write_text('a blue ring\n{"file": "im0.png", "caption": "a red star"}\n')
    out = cli_refused(ConfigError.exit_code, *SAMPLE, "-n", "1", "--prompts", str(shaped))
    assert f"line 2 of {shaped} is a JSON object" in out
    assert not (work / "samples").exists()  # nothing written before the refusal


def test_a_bom_is_not_part_of_the_first_prompt(work, tmp_path):
    pfile = tmp_path / "p.txt"
    pfile.write_bytes("a red star\n{a red star}\n".encode("utf-8-sig"))
    folder = tmp_path / "bom"
    cli_ok(*SAMPLE, "-n", "3", "--prompts", str(pfile), "--prompt", "a red star",
           "--out", str(folder))  # fmt: skip
    assert _card(folder)["prompts"] == ["a red star", "{a red star}"]
    assert _card(folder)["prompt_ids"] == [0, 0, 1]
