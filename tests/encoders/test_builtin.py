"""The embedded default: the built-in procedural dataset and the built-in encoder with its weights."""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from torch.nn import functional as F

from repackctl.data.base import ImageSource
from repackctl.data.builtin import CLASS_NAMES, GENERATOR_VERSION, BuiltinSource
from repackctl.encoders.base import FrozenEncoder
from repackctl.encoders.builtin import (
    SHIPPED_WEIGHTS,
    WIDTH,
    builtin_encoder,
    save_weights,
)
from repackctl.errors import ConfigError, RepackError, WeightsError
from repackctl.files import sha256_file

# ----------------------------------------------------------------------------------- dataset


def _as_batch(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # (B, 3, R, R)
    return x / 127.5 - 1.0


def _render_in_subprocess(args: tuple[int, str, int]) -> bytes:
    seed, split, index = args
    return BuiltinSource(split=split, seed=seed).load(index, 64).tobytes()


def test_source_follows_the_protocol() -> None:
    src = BuiltinSource()
    assert isinstance(src, ImageSource)
    assert src.name == "builtin" and src.split == "train"
    assert len(src) == 2000 and len(BuiltinSource(split="val")) == 500
    assert src.class_names == CLASS_NAMES and len(set(CLASS_NAMES)) == 10
    assert src.key(7) == "builtin:0:train:7"
    assert BuiltinSource(split="val", seed=3).key(4) == "builtin:3:val:4"
    d = src.describe()
    assert d["seed"] == 0 and d["num"] == 2000 and d["version"] == GENERATOR_VERSION
    json.dumps(d)  # JSON-safe: the cache stores it


def test_same_item_same_bytes_regardless_of_order_or_process() -> None:
    a = BuiltinSource(num=50)
    forward = [a.load(i, 64).tobytes() for i in range(6)]
    b = BuiltinSource(num=10)  # another object, another num, reverse order
    backward = [b.load(i, 64).tobytes() for i in reversed(range(6))][::-1]
    assert forward == backward
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no shared state
    with ctx.Pool(1) as pool:
        other = pool.map(_render_in_subprocess, [(0, "train", 2), (0, "train", 5)])
    assert other == [forward[2], forward[5]]


def test_different_seed_or_split_gives_different_images() -> None:
    base = BuiltinSource().load(3, 64)
    assert not np.array_equal(base, BuiltinSource(seed=1).load(3, 64))
    assert not np.array_equal(base, BuiltinSource(split="val").load(3, 64))
    assert not np.array_equal(base, BuiltinSource().load(13, 64))  # same class, other item


@pytest.mark.parametrize("resolution", [32, 40, 64, 96, 128, 256])
def test_any_resolution_has_the_right_shape_and_dtype(resolution: int) -> None:
    img = BuiltinSource().load(11, resolution)
    assert img.shape == (resolution, resolution, 3) and img.dtype == np.uint8
    assert img.std() > 10  # something is drawn


def test_same_scene_at_different_resolutions_looks_the_same() -> None:
    src = BuiltinSource(split="val")
    for i in range(5):
        big = src.load(i, 128).astype(np.float64).reshape(32, 4, 32, 4, 3).mean((1, 3))
        small = src.load(i, 32).astype(np.float64)
        assert np.abs(big - small).mean() < 3.0  # out of 255: analytic anti-aliasing


@pytest.mark.parametrize("resolution", [0, 16, 24, 60, 63, 260, 264, 512, 64.0, "64", True])
def test_bad_resolution_is_a_config_error_with_a_hint(resolution: object) -> None:
    with pytest.raises(ConfigError) as err:
        BuiltinSource().load(0, resolution)  # type: ignore[arg-type]
    assert err.value.hint and "multiple of 8" in err.value.hint


def test_bad_constructor_arguments_are_config_errors() -> None:
    for kwargs in ({"path": "/data"}, {"num": 0}, {"seed": -1}, {"split": "Train/x"}):
        with pytest.raises(ConfigError) as err:
            BuiltinSource(**kwargs)
        assert err.value.hint
    with pytest.raises(IndexError):
        BuiltinSource(num=4).load(4, 32)


def test_labels_are_balanced() -> None:
    src = BuiltinSource(num=200)
    counts = np.bincount([src.label(i) for i in range(len(src))], minlength=10)
    assert counts.tolist() == [20] * 10


def test_source_pickles() -> None:
    src = BuiltinSource(split="val", num=30, seed=5)
    clone = pickle.loads(pickle.dumps(src))
    assert (clone.split, len(clone), clone.key(2)) == ("val", 30, src.key(2))
    assert np.array_equal(clone.load(2, 48), src.load(2, 48))


def test_images_have_high_frequency_content_that_a_reconstruction_loses() -> None:
    src = BuiltinSource(split="val")
    x = _as_batch([src.load(i, 64) for i in range(40)]) * 127.5  # (B, 3, 64, 64), 255 range
    g = x.mean(1)  # (B, 64, 64)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    assert lap.pow(2).mean((1, 2)).median() > 200.0  # sharp edges and textures; flat gives 0
    # A 2x down/up-sampling keeps shape and colour but loses the fine detail: PSNR stays low.
    rec = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    psnr = 10 * torch.log10(255.0**2 / (rec - x).pow(2).mean((1, 2, 3)))  # (B,)
    assert psnr.median() < 32.0


# ----------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_encoder_shapes_and_spec(resolution: int) -> None:
    enc = builtin_encoder(resolution=resolution)
    assert isinstance(enc, FrozenEncoder)
    x = _as_batch([BuiltinSource().load(i, resolution) for i in range(3)])
    tokens, cls = enc(x)
    grid = resolution // 8
    assert tokens.shape == (3, grid * grid, WIDTH) and cls.shape == (3, WIDTH)
    assert torch.isfinite(tokens).all()
    spec = enc.spec
    assert (spec.id, spec.patch_size, spec.input_size, spec.grid) == (
        "builtin",
        8,
        resolution,
        grid,
    )
    assert spec.dim == WIDTH and spec.prefix_tokens == 1 and spec.layer is None
    assert torch.allclose(enc.preprocess(x), x)  # mean = std = 0.5 and no resize
    assert not any(p.requires_grad for p in enc.parameters())


def test_shipped_weights_load_and_are_recorded() -> None:
    enc = builtin_encoder()
    assert enc.spec.weights == "builtin"
    assert enc.spec.weights_sha256 == sha256_file(SHIPPED_WEIGHTS)
    assert SHIPPED_WEIGHTS.stat().st_size < 2_000_000
    meta = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    assert meta["sha256"] == enc.spec.weights_sha256  # the json describes this very file
    assert meta["scores"]["probe_mean_tokens_val_top1"] >= 0.9  # issue #13: a probe >= 90 %
    assert enc.spec.entry_id() != builtin_encoder(weights="random").spec.entry_id()


def _ssl_script():  # noqa: ANN202
    path = Path(__file__).resolve().parents[2] / "scripts" / "ssl_builtin_encoder.py"
    spec = importlib.util.spec_from_file_location("ssl_builtin_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_self_supervised_trainer_reads_no_label(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _ssl_script()

    label = BuiltinSource.label

    def label_for_rendering_only(self: BuiltinSource, index: int) -> int:
        caller = Path(sys._getframe(1).f_code.co_filename)  # the renderer draws the class shape
        if caller != Path(label.__code__.co_filename):
            raise AssertionError(f"{caller.name} read the label of image {index}")
        return label(self, index)

    monkeypatch.setattr(BuiltinSource, "label", label_for_rendering_only)
    args = script.parse_args(
        ["--steps", "2", "--batch-size", "4", "--warmup", "1", "--dino-weight", "1"]
        + ["--colour-views", "--nce-weight", "1", "--swap-views"]
    )
    net, last = script.train(args)  # MAE + DINO + InfoNCE, two tiny steps, no label read
    assert {"mae", "dino", "nce"} <= set(last) and all(math.isfinite(v) for v in last.values())
    assert set(net.state_dict()) == set(builtin_encoder(weights="random").network.state_dict())


def test_self_supervised_trainer_is_deterministic_and_describes_its_recipe() -> None:
    """Same arguments, same weights bit for bit (the shipped file can be remade); the json's
    recipe text follows the arguments of the command it records."""
    script = _ssl_script()
    argv = ["--steps", "2", "--batch-size", "4", "--warmup", "1", "--nce-weight", "1"]
    with one_torch_thread():
        a, _ = script.train(script.parse_args([*argv, "--swap-views"]))
        b, _ = script.train(script.parse_args([*argv, "--swap-views"]))
        c, _ = script.train(script.parse_args([*argv, "--swap-views", "--seed", "1"]))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # the seed does reach the weights
    meta = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    shipped = script.parse_args(meta["command"].split()[2:])
    assert (
        meta["objective"] == script.describe_objective(shipped) and "InfoNCE" in meta["objective"]
    )
    assert meta["augmentation"] == script.describe_views(shipped)
    assert meta["labels_used"] is False


def test_random_weights_are_seeded() -> None:
    a, b = builtin_encoder(weights="random", seed=1), builtin_encoder(weights="random", seed=1)
    c = builtin_encoder(weights="random", seed=2)
    assert a.spec.weights == "random:1" and a.spec.weights_sha256 == b.spec.weights_sha256
    assert a.spec.entry_id() != c.spec.entry_id()
    x = _as_batch([BuiltinSource().load(0, 32)])
    assert torch.equal(a(x)[0], b(x)[0]) and not torch.equal(a(x)[0], c(x)[0])


def test_saved_random_weights_reload_exactly(tmp_path: Path) -> None:
    rnd = builtin_encoder(weights="random", seed=7, resolution=32)
    st = save_weights(rnd.network, tmp_path / "mine.safetensors")
    pth = tmp_path / "mine.pth"
    torch.save(rnd.network.state_dict(), pth)
    x = _as_batch([BuiltinSource().load(i, 32) for i in range(2)])
    want = rnd(x)
    for path in (st, pth):
        enc = builtin_encoder(weights=str(path), resolution=32)
        got = enc(x)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert enc.spec.weights == f"file:{path.name}"
        assert enc.spec.weights_sha256 == sha256_file(path)
        assert enc.spec.entry_id() != builtin_encoder(resolution=32).spec.entry_id()


class _Payload:
    """Unpickling this would create a file: the refusal test checks it never does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_pth_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    state = builtin_encoder(weights="random").network.state_dict()
    bad = tmp_path / "evil.pth"
    torch.save({**state, "extra": _Payload(marker)}, bad)
    with pytest.raises(WeightsError) as err:
        builtin_encoder(weights=str(bad))
    assert err.value.hint and "safetensors" in err.value.hint
    assert not marker.exists()


def test_unusable_weight_files_are_weights_errors(tmp_path: Path) -> None:
    state = builtin_encoder(weights="random").network.state_dict()
    wrong = {k: (torch.zeros(3, 3) if k == "norm.weight" else v) for k, v in state.items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    torch.save({k: v for k, v in state.items() if k != "cls_token"}, tmp_path / "short.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "w.npz").write_bytes(b"")
    cases = ["missing.safetensors", "wrong.pth", "short.pth", "junk.safetensors", "w.npz"]
    for name in cases:
        with pytest.raises(WeightsError) as err:
            builtin_encoder(weights=str(tmp_path / name))
        assert err.value.hint, name


def test_layer_and_resolution_arguments() -> None:
    x = _as_batch([BuiltinSource().load(0, 64)])
    final = builtin_encoder()(x)[0]
    mid = builtin_encoder(layer=1)
    assert mid.spec.layer == 1 and mid.spec.entry_id() != builtin_encoder().spec.entry_id()
    assert mid(x)[0].shape == final.shape and not torch.allclose(mid(x)[0], final)
    assert torch.equal(builtin_encoder(layer=3)(x)[0], final)  # block 3 is the last block
    for kwargs in ({"layer": 4}, {"layer": -1}, {"resolution": 60}, {"resolution": 0}):
        with pytest.raises(ConfigError):
            builtin_encoder(**kwargs)
    with pytest.raises(RepackError):
        builtin_encoder(weights="random", resolution=True)


# ------------------------------------------------------------ semantics of the shipped tokens


@pytest.fixture(scope="module")
def probe_features() -> dict[str, torch.Tensor]:
    """Mean-pooled shipped-encoder tokens of 300 train and 200 held-out val images at 64 px."""
    enc = builtin_encoder()
    out = {}
    for split, num in (("train", 300), ("val", 200)):
        src = BuiltinSource(split=split, num=num)
        tokens = torch.cat(
            [
                enc(_as_batch([src.load(i, 64) for i in range(s, s + 100)]))[0]
                for s in range(0, num, 100)
            ]
        )  # (N, T, C)
        out[split] = tokens.mean(1)  # (N, C)
        out[split + "_y"] = torch.tensor([src.label(i) for i in range(num)])
    return out


def test_linear_probe_on_shipped_tokens_beats_chance_by_far(probe_features: dict) -> None:
    tr, va = probe_features["train"], probe_features["val"]
    mu, sd = tr.mean(0), tr.std(0) + 1e-6
    xtr = torch.cat([(tr - mu) / sd, torch.ones(len(tr), 1)], 1).double()  # (N, C+1)
    xva = torch.cat([(va - mu) / sd, torch.ones(len(va), 1)], 1).double()
    y = F.one_hot(probe_features["train_y"], 10).double()
    w = torch.linalg.solve(
        xtr.T @ xtr + 1.0 * torch.eye(xtr.shape[1], dtype=torch.float64), xtr.T @ y
    )
    acc = ((xva @ w).argmax(1) == probe_features["val_y"]).double().mean().item()
    assert acc > 0.8  # chance is 0.1; the shipped encoder gets 0.91 here


def test_classes_are_distinguishable_by_nearest_centroid(probe_features: dict) -> None:
    tr, va = probe_features["train"], probe_features["val"]
    centroids = torch.stack([tr[probe_features["train_y"] == k].mean(0) for k in range(10)])
    pred = torch.cdist(va, centroids).argmin(1)
    acc = (pred == probe_features["val_y"]).double().mean().item()
    assert acc > 0.7  # chance is 0.1; 0.935 with the shipped encoder


def test_ssl_script_writes_its_files_refuses_others_and_bad_flags(tmp_path, capsys) -> None:
    """The weights script run as a user runs it (tiny sizes): weights and card written, written
    again over its own files; a user's file at --out or its card, a path that is not
    .safetensors and counts below their least are an Error: before any training."""
    script = _ssl_script()
    out = tmp_path / "enc.safetensors"
    tiny = ["--steps", "1", "--batch-size", "2", "--warmup", "0", "--probe-train", "10"]
    tiny += ["--probe-val", "4", "--out", str(out)]
    with one_torch_thread():
        assert script.main(tiny) == 0
        card = json.loads(out.with_suffix(".json").read_text())
        assert card["sha256"] == sha256_file(out) and card["settings"]["steps"] == 1
        assert script.main(tiny) == 0  # its own files: replaced by the same run
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == card["sha256"]
    capsys.readouterr()
    mine = tmp_path / "mine.safetensors"
    mine.with_suffix(".json").write_text('{"notes": 1}')
    for argv, said in (
        (["--out", str(mine)], "mine.json exists and is not an encoder file"),
        (["--out", str(tmp_path / "w.pt")], "is not a .safetensors path"),
        (["--steps", "0"], "--steps 0 is below 1"),
        (["--batch-size", "1"], "--batch-size 1 is below 2"),
        (["--mask-ratio", "1"], "--mask-ratio 1.0"),
    ):
        assert script.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"Error: {said}" in err or said in err, (argv, err)
        assert "Hint:" in err and "Traceback" not in err
    assert mine.with_suffix(".json").read_text() == '{"notes": 1}' and not mine.exists()
