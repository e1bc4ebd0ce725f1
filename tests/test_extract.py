"""`repackctl extract` end to end on a real Zarr store: round trip, bad inputs, specs, resume, 2 processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, subprocess_env
from PIL import Image
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cache.verify import verify_entry
from repackctl.cli.app import app
from repackctl.data.builtin import BuiltinSource
from repackctl.errors import CacheError, WeightsError

runner = CliRunner()
SMALL = ["--encoder", "patchpix", "--num", "40", "--shard", "16", "--chunk", "8"]


def _open(root):
    (name,) = list_entries(root)
    return DatasetEntry.open(root, name)


def test_extract_round_trip(cache_root):
    res = runner.invoke(app, ["extract", *SMALL, "--batch-size", "6"])
    assert res.exit_code == 0, res.output
    entry = _open(cache_root)
    assert entry.name == "builtin-n40--train--64px"
    src = BuiltinSource(num=40)
    np.testing.assert_array_equal(entry.images[5], src.load(5, 64))
    assert entry.labels[:].tolist() == [src.label(i) for i in range(40)]
    assert entry.keys[7] == src.key(7)
    (fid,) = entry.feature_ids()
    feats = entry.features(fid)
    tokens = feats["tokens"][:]
    assert tokens.shape == (40, 2, 64, 64) and tokens.dtype == np.float16
    from repackctl.encoders.load import make_encoder

    enc = make_encoder("patchpix", None, None, 64, 0)
    x = torch.from_numpy(entry.images[0:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    tok, _ = enc(x)
    np.testing.assert_allclose(tokens[0:2, 0], tok.numpy(), atol=2e-3)
    tok_f, _ = enc(x.flip(-1))
    np.testing.assert_allclose(tokens[0:2, 1], tok_f.numpy(), atol=2e-3)
    assert feats.attrs["encoder"]["id"] == "patchpix"
    assert feats.attrs["config"]["values"]["extract"]["encoder"] == "patchpix"
    assert verify_entry(entry) == []
    # a second run finds everything done and writes nothing, not even the attributes
    before = {p: p.stat().st_mtime_ns for p in Path(cache_root).rglob("*") if p.is_file()}
    res = runner.invoke(app, ["extract", *SMALL])
    assert {p: p.stat().st_mtime_ns for p in Path(cache_root).rglob("*") if p.is_file()} == before
    assert res.exit_code == 0 and "already done" in res.output
    assert re.search(r"already done\s+│\s+40\b", res.output)
    assert re.search(r"written now\s+│\s+0\b", res.output)


def test_cache_commands(cache_root):
    assert runner.invoke(app, ["extract", *SMALL]).exit_code == 0
    res = runner.invoke(app, ["cache", "ls"])
    assert res.exit_code == 0 and "40/40" in res.output
    res = runner.invoke(app, ["cache", "info", "builtin-n40--train--64px"])
    assert res.exit_code == 0 and "10" in res.output
    assert runner.invoke(app, ["cache", "verify"]).exit_code == 0
    # corrupt a token and verify must notice
    entry = _open(cache_root)
    fid = entry.feature_ids()[0]
    tok = entry.features(fid)["tokens"]
    block = tok[0:16]
    block[3, 0, 0, 0] = np.nan
    tok[0:16] = block
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code == CacheError.exit_code and "NaN" in res.output
    res = runner.invoke(app, ["cache", "rm", "builtin-n40--train--64px"], input="n\n")
    assert res.exit_code == 1 and list_entries(cache_root)
    res = runner.invoke(app, ["cache", "rm", "builtin-n40--train--64px", "--yes"])
    assert res.exit_code == 0 and list_entries(cache_root) == []


def _messy_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.jpg"
            )
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).convert("P").save(
        root / "a" / "pal.png"
    )
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8)).save(root / "b" / "rgba.png")
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("not an image")
    data = (root / "a" / "0.jpg").read_bytes()
    (root / "b" / "trunc.jpg").write_bytes(data[: len(data) // 3])
    return root


def test_bad_inputs_are_skipped_and_listed(tmp_path, cache_root):
    folder = _messy_folder(tmp_path / "messy")
    args = ["extract", "--encoder", "patchpix", "--data", f"imagefolder:{folder}"]
    args += ["--resolution", "32", "--shard", "8", "--chunk", "4"]
    res = runner.invoke(app, [*args, "--strict"])
    assert res.exit_code != 0 and "--strict" in res.output and "Traceback" not in res.output
    assert list_entries(cache_root) == []  # nothing written
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "skipped a/zero.jpg: empty file" in res.output
    entry = _open(cache_root)
    reasons = {s["key"]: s["reason"] for s in entry.attrs["skipped"]}
    assert reasons == {
        "a/zero.jpg": "empty file",
        "b/notes.txt": "not an image",
        "b/trunc.jpg": "corrupt or truncated",
    }
    assert entry.attrs["written"] == 10 and len(entry.valid_indices()) == 10
    assert verify_entry(entry) == []


def test_num_above_the_folder_size_is_said(tmp_path, cache_root):
    """`--num 100` of a folder of 10 images extracted the 10 without a word."""
    folder = _messy_folder(tmp_path / "messy")
    args = ["extract", "--encoder", "patchpix", "--data", f"imagefolder:{folder}"]
    res = runner.invoke(app, [*args, "--resolution", "32", "-n", "100"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert (
        "Warning: --num 100 asks for more images than" in out
        and "(13 inputs): all of them are extracted" in out
    )
    assert len(_open(cache_root).valid_indices()) == 10


def test_mixing_specs_is_refused(cache_root):
    assert runner.invoke(app, ["extract", *SMALL]).exit_code == 0
    res = runner.invoke(app, ["extract", *SMALL, "--no-flips"])
    assert res.exit_code == CacheError.exit_code
    assert "flips: 2 vs 1" in res.output and "Hint:" in res.output
    res = runner.invoke(app, ["extract", *SMALL, "--seed", "3"])
    assert res.exit_code == CacheError.exit_code and "another source" in res.output


def _save_random_dinov3(path: Path) -> torch.nn.Module:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model("vit_tiny_patch16_dinov3_qkvb", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def test_timm_encoder_loads_user_weights(tmp_path, cache_root, monkeypatch):
    from repackctl.encoders.timm_vit import timm_encoder

    model = _save_random_dinov3(tmp_path / "w.safetensors")
    enc = timm_encoder(
        variant="vit_tiny_patch16_dinov3_qkvb",
        weights=str(tmp_path / "w.safetensors"),
        resolution=32,
    )
    assert enc.spec.grid == 2 and enc.spec.prefix_tokens == 5 and enc.spec.dim == 192
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tok, cls = enc(x)
    ref = model.eval().forward_features(enc.preprocess(x))
    torch.testing.assert_close(tok, ref[:, 5:])
    torch.testing.assert_close(cls, ref[:, 0])
    mid = timm_encoder(
        variant="vit_tiny_patch16_dinov3_qkvb",
        weights=str(tmp_path / "w.safetensors"),
        resolution=32,
        layer=3,
    )
    assert mid(x)[0].shape == (2, 4, 192) and not torch.allclose(mid(x)[0], tok)
    # through the CLI, the same file, recorded by hash
    res = runner.invoke(
        app,
        [
            "extract",
            "--encoder",
            "timm:vit_tiny_patch16_dinov3_qkvb",
            "--weights",
            str(tmp_path / "w.safetensors"),
            "--num",
            "4",
            "--resolution",
            "32",
            "--shard",
            "4",
            "--chunk",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    feats = _open(cache_root).features(enc.spec.entry_id())
    assert feats.attrs["encoder"]["weights_sha256"] == enc.spec.weights_sha256

    # a pickle-bearing .pth is refused, a missing hub download gives a hint
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing"):
        timm_encoder(variant="vit_tiny_patch16_dinov3_qkvb", weights=str(tmp_path / "evil.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        timm_encoder(variant="vit_tiny_patch16_dinov3_qkvb", weights=None, resolution=32)
    assert "--weights" in e.value.hint


def _arrays(root: str) -> dict[str, np.ndarray]:
    entry = _open(root)
    feats = entry.features(entry.feature_ids()[0])
    return {
        "images": entry.images[:],
        "labels": entry.labels[:],
        "keys": entry.keys[:],
        "done": entry.done[:],
        "tokens": feats["tokens"][:],
        "cls": feats["cls"][:],
    }


MAIN = str(Path(__file__).resolve().parents[1] / "repackctl" / "__main__.py")
BIG = [
    "extract",
    "--encoder",
    "patchpix",
    "-n",
    "600",
    "--shard",
    "32",
    "--chunk",
    "16",
    "--batch-size",
    "16",
]


def _assert_same(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_kill_and_resume_gives_identical_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "ref" / "cache"))
    with one_torch_thread():  # the uninterrupted reference in-process, one thread like the others
        ref = runner.invoke(app, BIG)
    assert ref.exit_code == 0, ref.output
    env = subprocess_env(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "repackctl", *BIG],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done_dir = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        hits = list((tmp_path / "run" / "cache").glob("*/features/*/done/c/*"))
        if len(hits) >= 3:
            done_dir = hits[0].parent
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_dir is not None, "extraction finished before it could be killed"
    partial = len(list(done_dir.iterdir()))
    assert partial < 600 // 32  # really interrupted
    out = subprocess.run(
        [sys.executable, "-m", "repackctl", *BIG],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "already done" in out.stdout
    _assert_same(_arrays(str(tmp_path / "ref" / "cache")), _arrays(str(tmp_path / "run" / "cache")))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, monkeypatch):
    args = [a if a != "600" else "100" for a in BIG]  # 4 shards, the last one partial
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "one" / "cache"))
    with one_torch_thread():  # the single process in-process, one thread like the two
        one = runner.invoke(app, args)
    assert one.exit_code == 0, one.output
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        MAIN,
        *args,
    ]
    out = subprocess.run(
        cmd, env=subprocess_env(tmp_path / "two"), capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    _assert_same(_arrays(str(tmp_path / "one" / "cache")), _arrays(str(tmp_path / "two" / "cache")))


def test_cache_root_can_be_an_fsspec_url():
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    root = "memory://repackctl-test-cache"
    flags = {"cache": root, "extract.encoder": "patchpix", "extract.num": 16}
    flags |= {"extract.shard": 8, "extract.chunk": 8, "num_workers": 0}
    result = run_extract(resolve_settings(flags=flags, environ={}).settings)
    assert result.written == 16 and list_entries(root) == [result.entry]
    entry = DatasetEntry.open(root, result.entry)
    assert verify_entry(entry) == [] and entry.images.shape == (16, 64, 64, 3)


def test_prefetch_thread_hands_on_errors_and_stops_when_the_loop_ends():
    """The background loader of ``extract``: items in order, its error raised in the caller,
    and an early exit stops the thread (no thread left reading)."""
    import threading

    from repackctl.extract import _prefetched

    def failing():
        yield from (1, 2)
        raise ValueError("unreadable batch")

    seen = []
    with pytest.raises(ValueError, match="unreadable batch"):
        for item in _prefetched(failing()):
            seen.append(item)
    assert seen == [1, 2]

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    it = _prefetched(endless())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not any(t.name == "extract-prefetch" for t in threading.enumerate())
