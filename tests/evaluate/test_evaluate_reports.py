"""What `evaluate recon`, `evaluate adherence` and `evaluate fid` reports say about what they
scored, on real stacks through the command line.

1. `evaluate recon` left exact reconstructions (PSNR = inf) out of its PSNR mean without a word:
   the report counts them (``psnr_exact``), names the reduction, and the table and a note say it.
2. `evaluate adherence` on the demo's samples folder replaced the demo's ``adherence.json`` with
   a poorer one (the classifiers' val and recon-val scores were lost): the scores of the same
   classifiers that it does not compute are kept, and listed.
3. A t2i folder sampled without guidance (``--cfg 1``, the default) or unconditionally
   (``--cfg 0``) was scored for adherence without a word: ``adherence.json`` records the
   guidance (``guidance``) and a note says what it means.
4. `evaluate fid` of t2i samples made from the default prompts (the val entry's captions)
   compared them with the run's training entry: the default reference is now the entry whose
   captions were the prompts, and the output says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok
from support.stack import FD_WEIGHTS

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]


# --------------------------------------------------------------------------- 1. recon PSNR
def _white_and_noise(folder: Path) -> None:
    """8 PNGs of 32 px: 4 plain white, 4 of random pixels (one class folder)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "a").mkdir(parents=True)
    for i in range(8):
        white = np.full((32, 32, 3), 255, np.uint8)
        img = white if i % 2 == 0 else rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / "a" / f"{i}.png")


def _white_decoder(run_dir: Path) -> None:
    """A newer checkpoint of the pack run whose decoder draws every pixel white (its output
    conv: zero weights, bias far above 1, clamped to 255): the white images come back exact."""
    from repackctl.train.checkpoint import (
        latest_checkpoint,
        load_model_weights,
        read_state,
        save_checkpoint,
    )

    ckpt = latest_checkpoint(run_dir)
    state, weights = read_state(ckpt), load_model_weights(ckpt, "ema")
    weights["decoder.conv_out.weight"] = torch.zeros_like(weights["decoder.conv_out.weight"])
    weights["decoder.conv_out.bias"] = torch.full_like(weights["decoder.conv_out.bias"], 10.0)
    sd = {"model": weights, "ema": weights}
    save_checkpoint(run_dir, int(state["step"]) + 1, sd, {}, {"extra": state["extra"]})


def test_recon_counts_exact_reconstructions_instead_of_dropping_them(tmp_path):
    _white_and_noise(tmp_path / "imgs")
    data = ["--encoder", "patchpix", "--resolution", "32"]
    cli_ok("extract", *data, "--data", f"imagefolder:{tmp_path / 'imgs'}", "--num-workers", "0")
    (entry,) = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("folder-")]
    pack = ["pack", "train", *data, "--entry", entry, "--steps", "2", "--batch-size", "4"]
    cli_ok(*pack, "-c", "4", "--ch", "8", "--disc-channels", "8", "--name", "pk", *CPU)
    _white_decoder(tmp_path / "runs" / "pk")

    out = cli_ok("evaluate", "recon", "--run", "pk", "--entry", entry, *CPU)
    (report,) = (tmp_path / "runs" / "pk" / "checkpoints").glob("step-0000003/recon-*.json")
    doc = json.loads(report.read_text())
    assert doc["n"] == 8 and doc["psnr_exact"] == 4  # the 4 white images
    assert "exact" in doc["psnr_reduction"] and "psnr_exact" in doc["psnr_reduction"]
    assert doc["psnr"] < 20  # the mean of the 4 noise images, as the report now says
    said = "4 of 8 reconstructions are exact (PSNR = inf): the PSNR is the mean over the other 4"
    assert said in out and any(said in n for n in doc["notes"])
    assert "(mean of 4; 4 exact, PSNR = inf)" in out, out


# --------------------------------------------------------------------------- 2. the demo's file
@pytest.mark.slow
def test_adherence_keeps_the_demo_scores_it_does_not_compute(tmp_path):
    out = tmp_path / "demo-t2i"
    cli_ok("demo", "--t2i", "--quick", "--out", str(out))
    (path,) = (out / "samples").glob("*/adherence.json")
    demo = json.loads(path.read_text())
    richer = ("classifier_real_val_accuracy", "classifier_recon_val_accuracy")
    assert all(k in demo for k in richer)
    steps, seed = demo["classifier"]["steps"], demo["classifier"]["seed"]

    said = cli_ok(
        "evaluate", "adherence", str(path.parent), "--steps", str(steps), "--seed", str(seed),
        "--cache", str(out / "cache"), *CPU,
    )  # fmt: skip
    doc = json.loads(path.read_text())
    for k in richer:
        assert doc[k] == demo[k], k  # the demo's scores of these classifiers, kept
    assert doc["kept_from_before"]["fields"] == list(richer)
    assert "classifier_recon_val_accuracy" in said and "same classifiers" in said, said
    assert doc["shape_accuracy"] == demo["shape_accuracy"]  # the same result recomputed
    cli_ok("demo", "--t2i", "--quick", "--out", str(out))  # the demo reuses the file as it is
    assert json.loads(path.read_text()) == doc


# --------------------------------------------------------------------------- 3, 4. t2i folders
@pytest.fixture(scope="module")
def t2i_base(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s29-t2i") / "w")


def _sample(folder: Path, *flags: str) -> None:
    sample = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "8", *CPU]
    cli_ok(*sample, *flags, "--out", str(folder))


@pytest.mark.parametrize(
    ("cfg", "kind", "said"),
    [
        ("1", "none", "sampled without guidance (--cfg 1"),
        ("0", "unconditional", "sampled at --cfg 0 (unconditional)"),
        ("4", "classifier-free", None),
    ],
)
def test_adherence_says_how_the_samples_were_guided(
    t2i_base, tmp_path, monkeypatch, cfg, kind, said
):
    use_stack(t2i_base, tmp_path, monkeypatch)
    folder = tmp_path / "s"
    _sample(folder, "--cfg", cfg, "--prompt", "a red star")
    out = cli_ok("evaluate", "adherence", str(folder), "--steps", "2", *CPU)
    guidance = json.loads((folder / "adherence.json").read_text())["guidance"]
    assert guidance["cfg_scale"] == float(cfg) and guidance["kind"] == kind
    if said is None:
        assert guidance["note"] is None and "note:" not in out
    else:
        assert said in guidance["note"] and f"note: {said}" in out, out


def test_fid_of_default_prompts_compares_with_the_prompts_entry(t2i_base, tmp_path, monkeypatch):
    use_stack(t2i_base, tmp_path, monkeypatch)
    folder = tmp_path / "s"
    _sample(folder)  # default prompts: the first captions of the val entry
    card = json.loads((folder / "protocol.json").read_text())
    val, train = "builtin-n8--val--32px", "builtin-n32--train--32px"
    assert card["prompt_source"] == f"first caption of each image of {val}"
    score = ["evaluate", "fid", str(folder), "--metrics", "fd", "--fd-method", "cholesky", *CPU]
    out = cli_ok(*score, *FD_WEIGHTS)
    doc = json.loads((folder / "metrics.json").read_text())
    assert doc["protocol"]["reference_file"] == f"cache:{val}", doc["protocol"]
    assert f"prompts are the first captions of {val}" in out and f"--ref-cache {train}" in out
    # given prompts: the run's training entry, as for class samples
    given = tmp_path / "g"
    _sample(given, "--prompt", "a red star")
    cli_ok(*score[:2], str(given), *score[3:], *FD_WEIGHTS)
    doc = json.loads((given / "metrics.json").read_text())
    assert doc["protocol"]["reference_file"] == f"cache:{train}", doc["protocol"]
