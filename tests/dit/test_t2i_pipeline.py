"""Text-to-image pipeline: `captions` → `train t2i` → `sample --prompt`, on a real toy cache.

The cache comes from the real pipeline at toy size (as in test_dit_train.py): `extract` (the fast
`patchpix` plugin encoder, 32 px) → `pack train` (4 steps, d = 4) → `pack encode`; then
`repackctl captions` encodes the built-in captions with the built-in MiniLM (length 16).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import subprocess_env
from PIL import Image
from support.caches import packed_cache
from typer.testing import CliRunner

from repackctl.cache.store import WRITTEN, DatasetEntry, list_entries
from repackctl.captions_cache import NO_CAPTION, TEXT_KIND
from repackctl.cli.app import app
from repackctl.data.builtin import BuiltinSource
from repackctl.data.captions import builtin_captions, colour_name
from repackctl.evaluate.adherence import coarse_colour, prompt_attributes
from repackctl.train import latest_checkpoint, load_weights, read_state

runner = CliRunner()
N, LEN = 64, 16
CPU = ["--device", "cpu"]
TRAIN = ["train", "t2i", "--steps", "4", "-b", "8", "--ckpt-every", "2", "--log-every", "2", *CPU]


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory) -> Path:
    """extract → pack train → pack encode (no captions yet)."""
    return packed_cache(tmp_path_factory.mktemp("t2i") / "cache", N)


@pytest.fixture(scope="module")
def captioned_cache(latent_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("t2i-captioned") / "w" / "cache"
    shutil.copytree(latent_cache.parent, root.parent)
    res = runner.invoke(app, ["captions", "--max-length", str(LEN), "--cache", str(root), *CPU])
    assert res.exit_code == 0, res.output
    return root


def _use(src: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a cache + runs folder, set as REPACKCTL_CACHE / REPACKCTL_RUNS."""
    shutil.copytree(src.parent, tmp_path / "w")
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "w" / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "w" / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "w" / "samples"))
    return tmp_path / "w"


def _text_group(cache: Path) -> zarr.Group:
    ds = DatasetEntry.open(str(cache), list_entries(str(cache))[0])
    (name,) = ds.complete_groups(TEXT_KIND, ("done",))
    return ds.group[TEXT_KIND][name]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


# --------------------------------------------------------------------------- captions


@pytest.mark.slow
def test_captions_are_cached_once_per_caption(captioned_cache):
    g = _text_group(captioned_cache)
    assert g["tokens"].shape == (N, 5, LEN, 384) and g["tokens"].dtype == np.float16
    assert g["mask"].shape == (N, 5, LEN) and g["pooled"].shape == (N, 5, 384)
    assert (g["done"][:] == WRITTEN).all() and (g["count"][:] == 5).all()
    for i in (0, 17, 63):  # the texts are the built-in captions of the image, in order
        assert str(g["captions"][i]).split("\n") == builtin_captions(i, split="train", seed=0)
    mask = g["mask"][:]
    assert mask[:, :, 0].all() and not mask.all()  # real tokens first, then padding
    assert g["null_mask"][:].sum() == 2  # the empty caption: [CLS] [SEP]
    attrs = dict(g.attrs)
    assert attrs["encoder"]["id"] == "minilm-l6" and attrs["max_length"] == LEN
    # a rerun finds every row done and writes nothing
    res = runner.invoke(
        app, ["captions", "--max-length", str(LEN), "--cache", str(captioned_cache), *CPU]
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"already done\s*│\s*64\b", res.output), res.output


def _wait_for_done(cache: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the subprocess has marked at least one shard done (or exited)."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        try:
            if (_text_group(cache)["done"][:] == WRITTEN).any():
                return
        except Exception:  # noqa: BLE001 - the group is still being created
            pass
        time.sleep(0.2)


@pytest.mark.slow
def test_captions_kill_and_resume_give_the_same_arrays(latent_cache, captioned_cache, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(latent_cache.parent, work)
    cache = work / "cache"
    cmd = [sys.executable, "-m", "repackctl", "captions", "--max-length", str(LEN), *CPU]
    # 1. killed while its group is being created: exit 137, nothing usable left
    env = subprocess_env(
        tmp_path, REPACKCTL_CACHE=str(cache), REPACKCTL_TEST_CRASH_AFTER="captions"
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr
    ds = DatasetEntry.open(str(cache), list_entries(str(cache))[0])
    assert ds.complete_groups(TEXT_KIND, ("done",)) == [] and ds.incomplete_groups()
    # 2. killed after some shards (one 1.5 s pause per shard)
    env = subprocess_env(tmp_path, REPACKCTL_CACHE=str(cache), REPACKCTL_TEST_SHARD_DELAY="1.5")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_done(cache, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = _text_group(cache)["done"][:]
    assert 0 < (partial == WRITTEN).sum() < N, "the kill did not land mid-run"
    # 3. the rerun finishes only what is left, and the arrays equal an uninterrupted run
    res = runner.invoke(app, ["captions", "--max-length", str(LEN), "--cache", str(cache), *CPU])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output or f"{int((partial == WRITTEN).sum())}" in res.output
    got, ref = _text_group(cache), _text_group(captioned_cache)
    for name in ("tokens", "mask", "pooled", "count", "done", "null_tokens"):
        np.testing.assert_allclose(
            np.asarray(got[name][...], np.float32),
            np.asarray(ref[name][...], np.float32),
            atol=2e-3,
            err_msg=name,
        )


def test_folder_captions_skip_and_list_bad_rows(tmp_path, monkeypatch):
    """An image folder + captions.jsonl: empty captions and images without one are listed."""
    data = tmp_path / "imgs"
    (data / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            data / "a" / f"{i}.png"
        )
    rows = [
        {"file": "a/0.png", "caption": "a noisy square"},
        {"file": "a/0.png", "caption": "  "},
        {"file": "a/1.png", "caption": "another noisy picture"},
        {"file": "a/2.png", "caption": ""},
        {"file": "a/9.png", "caption": "a missing image"},
    ]
    (data / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(
        app,
        [
            "extract",
            "--encoder",
            "patchpix",
            "--data",
            f"imagefolder:{data}",
            "--resolution",
            "32",
            *CPU,
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "captions",
            "--entry",
            list_entries(str(tmp_path / "cache"))[0],
            "--max-length",
            "8",
            *CPU,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "empty caption" in res.output and "missing image" in res.output
    g = _text_group(tmp_path / "cache")
    ds = DatasetEntry.open(str(tmp_path / "cache"), list_entries(str(tmp_path / "cache"))[0])
    keys = [str(k) for k in ds.keys[:]]
    count = dict(zip(keys, g["count"][:].tolist(), strict=True))
    done = dict(zip(keys, g["done"][:].tolist(), strict=True))
    assert count["a/0.png"] == 1 and count["a/1.png"] == 1
    assert done["a/2.png"] == NO_CAPTION and done["a/3.png"] == NO_CAPTION
    assert "no caption" in res.output
    # the group is removable on its own (the hint of a spec mismatch names this command)
    name = g.basename
    res = runner.invoke(app, ["cache", "rm", ds.name, "--text", name, "--yes"])
    assert res.exit_code == 0, res.output
    assert DatasetEntry.open(str(tmp_path / "cache"), ds.name).complete_groups(TEXT_KIND) == []
    assert ds.n == 4  # the entry itself is kept


# --------------------------------------------------------------------------- training


def test_train_t2i_without_captions_names_the_command(latent_cache, tmp_path, monkeypatch):
    _use(latent_cache, tmp_path, monkeypatch)
    res = runner.invoke(app, TRAIN)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "no caption features" in res.output and "repackctl captions" in res.output


def test_train_t2i_refuses_a_class_conditional_model(captioned_cache, tmp_path, monkeypatch):
    _use(captioned_cache, tmp_path, monkeypatch)
    res = runner.invoke(app, [*TRAIN, "--model", "tiny"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "not a text-conditioned model" in res.output


def test_train_t2i_depth_width_heads_shape_the_model_or_are_refused(
    captioned_cache, tmp_path, monkeypatch
):
    """`--depth/--width/--heads` make a custom small MMDiT, as for `train dit`; they were
    dropped without a word before (mmdit-s-2 trained at its full 6 × 384 size). A model
    factory that does not take one refuses it."""
    work = _use(captioned_cache, tmp_path, monkeypatch)
    shape = ["--model", "mmdit-s-2", "--depth", "3", "--width", "32", "--heads", "2"]
    res = runner.invoke(app, [*TRAIN, *shape, "--steps", "2", "--name", "small"])
    assert res.exit_code == 0, res.output
    config = read_state(latest_checkpoint(work / "runs" / "small"))["extra"]["model_config"]
    assert (config["depth"], config["hidden_size"], config["num_heads"]) == (3, 32, 2)
    assert config["name"] == "mmdit-s-2-d3w32h2"

    from repackctl.dit.t2i_task import build_mmdit
    from repackctl.errors import ConfigError
    from repackctl.models.mmdit import mmdit_tiny

    def fixed_size(*, in_channels: int = 4, input_size: int = 8, text_dim: int = 32):
        return mmdit_tiny(in_channels=in_channels, input_size=input_size, text_dim=text_dim)

    monkeypatch.setattr("repackctl.dit.t2i_task.registry", lambda group: {"m": fixed_size})
    with pytest.raises(ConfigError, match=r"does not take the option\(s\) depth \(depth=3\)"):
        build_mmdit("m", in_channels=4, input_size=8, text_dim=32, depth=3, width=None)
    assert build_mmdit("m", in_channels=4, input_size=8, text_dim=32, depth=None).config.depth == 2


@pytest.mark.slow
def test_train_t2i_resume_and_sample_prompts(captioned_cache, tmp_path, monkeypatch):
    work = _use(captioned_cache, tmp_path, monkeypatch)
    res = runner.invoke(app, [*TRAIN, "--image-every", "4", "--name", "a"])
    assert res.exit_code == 0, res.output
    run = work / "runs" / "a"
    assert (run / "images" / "step-0000004.png").is_file()
    extra = read_state(latest_checkpoint(run))["extra"]
    assert extra["stage"] == "t2i" and extra["model_id"] == "mmdit-tiny"
    assert extra["text"]["text_dim"] == 384 and extra["text"]["max_length"] == LEN
    assert extra["text"]["encoder"]["id"] == "minilm-l6"
    assert len(extra["null_caption"]["tokens"]) == 2 and extra["repa"]["depth"] == 1
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/repa" in rec for rec in logs)

    # resume to 6 steps == 6 steps straight
    res = runner.invoke(app, [*TRAIN, "--name", "a", "--steps", "6"])
    assert res.exit_code == 0, res.output
    assert "resumed at 4" in res.output
    res = runner.invoke(app, [*TRAIN, "--name", "b", "--steps", "6"])
    assert res.exit_code == 0, res.output
    for name in ("model", "ema"):
        wa = load_weights(latest_checkpoint(run), name)
        wb = load_weights(latest_checkpoint(work / "runs" / "b"), name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}: {k}"

    # sample with prompts: PNGs, prompts.txt, protocol
    prompts = ["a red star on a blue striped background", "a green disc"]
    args = ["sample", "-r", "a", "-n", "3", "--steps", "4", "--cfg", "3", *CPU]
    res = runner.invoke(app, [*args, "--prompt", prompts[0], "--prompt", prompts[1]])
    assert res.exit_code == 0, res.output
    assert "2 distinct; given: 2 --prompt" in " ".join(res.output.split()), res.output  # summary
    (folder,) = (work / "samples").iterdir()
    assert sorted(p.name for p in folder.glob("0*.png")) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    assert (folder / "prompts.txt").read_text().splitlines() == [prompts[0], prompts[1], prompts[0]]
    card = json.loads((folder / "protocol.json").read_text())
    assert card["prompts"] == prompts and card["prompt_ids"] == [0, 1, 0]
    assert card["nfe"] == 8 and card["cfg_scale"] == 3
    grid = np.asarray(Image.open(folder / "grid.png"))  # one labelled row per prompt
    assert grid.shape[0] < 3 * 32 and grid.shape[1] > 2 * 32 + 100
    npz = np.load(folder / "samples.npz")
    assert npz["arr_0"].shape == (3, 32, 32, 3) and npz["arr_1"].tolist() == [0, 1, 0]
    # the same prompt gives the same image for the same index seed → 000000 ≠ 000001 here
    a, b = (np.asarray(Image.open(folder / f"00000{i}.png")) for i in (0, 1))
    assert not np.array_equal(a, b)

    # prompts from a file, then the default (cached captions)
    pfile = tmp_path / "p.txt"
    pfile.write_text("a green disc\n\n")
    res = runner.invoke(app, [*args, "--prompts", str(pfile), "-n", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sample", "-r", "a", "-n", "2", "--steps", "2", *CPU])
    assert res.exit_code == 0, res.output
    default = [f for f in (work / "samples").iterdir() if "--p" not in f.name]
    card = json.loads((default[0] / "protocol.json").read_text())
    assert card["prompt_source"].startswith("first caption of each image of builtin-n64--train")
    assert card["prompts"][0] == builtin_captions(0, split="train", seed=0)[0]

    # prompt adherence: classifiers trained on the real cached images score the samples
    prompted = folder
    res = runner.invoke(app, ["evaluate", "adherence", str(prompted), "--steps", "10", *CPU])
    assert res.exit_code == 0, res.output
    scores = json.loads((prompted / "adherence.json").read_text())
    assert scores["n_shape"] == 3 and scores["n_colour"] == 3  # star/disc, red/green
    said = " ".join(res.output.split())
    left = scores["num_samples"] - 3  # samples whose prompt names no shape: said, not hidden
    assert (f"{left} of {scores['num_samples']} prompts name no shape" in said) == (left > 0)
    assert 0.0 <= scores["shape_accuracy"] <= 1.0 and scores["classifier"]["images"] == N

    # with a captioned val entry, the default prompts are the val captions
    cache = str(work / "cache")
    ext = ["extract", "--encoder", "patchpix", "--resolution", "32", "-n", "4", "--split", "val"]
    assert runner.invoke(app, [*ext, *CPU]).exit_code == 0
    val = next(e for e in list_entries(cache) if "--val--" in e)
    res = runner.invoke(app, ["captions", "--entry", val, "--max-length", str(LEN), *CPU])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sample", "-r", "a", "-n", "2", "--steps", "2", "--seed", "1", *CPU])
    assert res.exit_code == 0, res.output
    (seed1,) = (work / "samples").glob("*seed1")
    card = json.loads((seed1 / "protocol.json").read_text())
    assert card["prompt_source"].endswith(val)
    assert card["prompts"][0] == builtin_captions(0, split="val", seed=0)[0]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    res = runner.invoke(app, [*args, "--prompts", str(empty)])
    assert res.exit_code != 0 and "Traceback" not in res.output and "empty" in res.output


# --------------------------------------------------------------------------- adherence


def test_prompt_attributes_read_every_builtin_phrasing():
    """The parser finds the shape and the object's colour (never the background's)."""
    source = BuiltinSource(split="train", num=40, seed=0)
    for i in range(40):
        scene = source.scene(i)
        want_colour = coarse_colour(colour_name(scene["obj_a"]))
        caps = builtin_captions(i, split="train", seed=0)
        for k, cap in enumerate(caps):
            shape, colour = prompt_attributes(cap)
            assert shape == scene["label"], cap
            if k == 2:  # "a star over a striped background, small, solid fill": no colour
                assert colour is None, cap
            else:
                assert colour == want_colour, cap
    assert prompt_attributes("a red star on a blue striped background") == (4, "red")
    assert prompt_attributes("a checkered background") == (None, None)


def test_the_same_classifier_is_trained_once_per_process():
    """A study scores several folders against the same real images: the classifier trained for
    the first is reused, and only for exactly the same inputs (images, labels, steps, seed)."""
    from repackctl.evaluate.adherence import train_classifier, trained_classifier

    g = np.random.default_rng(0)
    images = g.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    shapes, colours = g.integers(0, 10, 40), g.integers(0, 11, 40)
    cpu = torch.device("cpu")
    net, acc = trained_classifier(images, shapes, colours, 3, 0, cpu)
    assert trained_classifier(images, shapes, colours, 3, 0, cpu)[0] is net
    fresh, fresh_acc = train_classifier(images, shapes, colours, 3, 0, cpu)
    assert fresh_acc == acc
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 net.state_dict().values(), strict=True))  # fmt: skip
    assert trained_classifier(images, shapes, colours, 4, 0, cpu)[0] is not net
    assert trained_classifier(images, shapes, colours, 3, 1, cpu)[0] is not net
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    assert trained_classifier(other, shapes, colours, 3, 0, cpu)[0] is not net
    assert trained_classifier(images, (shapes + 1) % 10, colours, 3, 0, cpu)[0] is not net
