"""Metrics: Fréchet distance, streaming stats, the torch-fidelity Inception path (offline, random
weights saved to a file), FD in encoder space, PSNR/SSIM/grids, linear probe, ADM npz, protocol.

The Inception tests build torch-fidelity's Inception once with its weight loading bypassed, save
that random state dict to a temporary file and run the real ``--inception-weights FILE`` path on
it. Its FDs use ``fd_method="cholesky"``: with 2048-d features the default ADM path (scipy
sqrtm) takes ~13 s per call on this 2-core machine; both methods are checked against the closed
form and against torch-fidelity on small dimensions below.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread, random_inception_state

from repackctl.errors import ConfigError, DataError, WeightsError
from repackctl.files import sha256_file
from repackctl.metrics.adm import (
    count_images,
    iter_npz_images,
    read_reference_batch,
    read_samples_npz,
    write_samples_npz,
)
from repackctl.metrics.frechet import (
    FeatureStats,
    frechet_distance,
    load_stats,
    save_stats,
    sha256_array,
    sha256_path,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two contended threads ran the Inception
    forward 2.5-4x and the tiny probe 20x slower than one."""
    with one_torch_thread():
        yield


# --------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("method", ["sqrtm", "cholesky"])
def test_frechet_distance_closed_form_for_commuting_covariances(method):
    rng = np.random.default_rng(0)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(
        expected, rel=1e-9
    )
    # Same eigenbasis, rotated: the trace term is still sum (sqrt a - sqrt b)^2.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, s1, mu1, s1, method=method) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_equals_torch_fidelity_on_the_same_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(400, 48, generator=g)  # (N, D) float32 like extractor outputs
    f2 = 0.8 * torch.randn(350, 48, generator=g) @ torch.randn(48, 48, generator=g) * 0.3 + 0.2
    theirs = fid_statistics_to_metric(
        fid_features_to_statistics(f1), fid_features_to_statistics(f2), verbose=False
    )["frechet_inception_distance"]
    s1, s2 = FeatureStats().update(f1), FeatureStats().update(f2)
    for method in ("sqrtm", "cholesky"):
        ours = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, method=method)
        assert ours == pytest.approx(theirs, rel=1e-6)
    assert theirs > 1.0


def test_frechet_distance_rejects_mismatched_dimensions():
    with pytest.raises(DataError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streaming_equals_numpy_and_merges():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(257, 16)) * rng.uniform(0.5, 2, 16) + 1e4  # large offset on purpose
    acc = FeatureStats()
    for part in np.split(x, [1, 50, 51, 200]):  # uneven batches, one of size 1
        acc.update(torch.from_numpy(part) if len(part) % 2 else part)  # tensors and arrays
    assert acc.n == 257
    np.testing.assert_allclose(acc.mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    left, right = FeatureStats().update(x[:100]), FeatureStats().update(x[100:])
    merged = left.merge(right)
    np.testing.assert_allclose(merged.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(DataError):
        _ = FeatureStats().update(x[:1]).sigma  # one sample has no covariance


def test_stats_file_round_trip_and_hashes(tmp_path):
    rng = np.random.default_rng(2)
    stats = FeatureStats().update(rng.normal(size=(30, 5)))
    path = save_stats(
        tmp_path / "ref.npz",
        stats,
        extractor="inception-v3-compat",
        weights_sha256="ab" * 32,
        resolution=256,
        source_sha256=sha256_array(np.zeros(3)),
    )
    loaded = load_stats(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 30 and loaded.metadata["resolution"] == 256
    assert loaded.metadata["extractor"] == "inception-v3-compat"
    with np.load(path, allow_pickle=False) as z:  # nothing pickled inside
        assert set(z.files) == {"mu", "sigma", "n", "metadata"}
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_array(np.arange(4)) == sha256_array(np.arange(4))
    assert sha256_array(np.arange(4)) != sha256_array(np.arange(4).astype(np.int32))
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


# --------------------------------------------------------------------------- Inception (offline)


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("inception")
    state = random_inception_state()
    torch.save(state, root / "inception.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, root / "inception.safetensors")
    return root


@pytest.fixture(scope="module")
def extractor(inception_files):
    from repackctl.metrics.inception import InceptionExtractor

    return InceptionExtractor(inception_files / "inception.pth", batch_size=16)


def _images(seed: int, n: int, smooth: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, 48)[None, :, None, None] * rng.uniform(50, 200, (n, 1, 1, 3))
    return np.broadcast_to(ramp, (n, 48, 48, 3)).astype(np.uint8).transpose(0, 2, 1, 3)


@pytest.mark.slow
def test_inception_pipeline_gives_finite_scores_from_a_weights_file(
    extractor, inception_files, tmp_path
):
    from repackctl.metrics.generative import compute_generative_metrics, compute_inception_stats

    gen, ref = _images(0, 10, smooth=False), _images(1, 10, smooth=True)  # IS needs ≥ 10
    res = compute_generative_metrics(
        [gen[:5], gen[5:]],
        ref,
        ("fid", "sfid", "is", "kid", "prc"),
        extractor=extractor,
        fd_method="cholesky",
    )
    for key in ("fid", "sfid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall"):
        assert math.isfinite(res[key]), key
    assert res["fid"] > 1e-3 and res["sfid"] > 1e-3 and res["is_mean"] >= 1.0
    assert 0.0 <= res["precision"] <= 1.0 and 0.0 <= res["recall"] <= 1.0
    assert res["n_generated"] == 10 and res["n_reference"] == 10
    assert res["extractor"]["weights_sha256"] == sha256_file(inception_files / "inception.pth")
    assert res["extractor"]["weights_official"] is False
    assert any("not torch-fidelity's official" in n for n in res["notes"])
    assert any("singular" in n for n in res["notes"])
    json.dumps(res)  # JSON-safe as documented

    # The same images against an ADM-style reference batch file holding their own statistics.
    stats = compute_inception_stats(gen[:4], extractor)
    adm = tmp_path / "VIRTUAL_test.npz"
    np.savez(adm, mu=stats["fid"].mu, sigma=stats["fid"].sigma)  # stats only, no arr_0
    same = compute_generative_metrics(
        gen[:4], adm, ("fid",), extractor=extractor, fd_method="cholesky"
    )
    assert abs(same["fid"]) < 1e-5 * np.trace(stats["fid"].sigma)
    with pytest.raises(DataError, match="no arr_0"):  # KID needs the reference images
        compute_generative_metrics(gen[:4], adm, ("kid",), extractor=extractor)
    assert "ADM reference batch" in same["reference_stats"]


def test_sfid_features_are_mixed_6d_branch1x1_first_7_channels_hwc(extractor):
    images = _images(2, 2, smooth=False)
    seen = {}
    hook = extractor.model.Mixed_6d.branch1x1.register_forward_hook(
        lambda m, i, o: seen.setdefault("out", o.detach().clone())
    )
    try:
        feats = extractor.features(images)
    finally:
        hook.remove()
    assert seen["out"].shape == (2, 192, 17, 17)  # TF mixed_6/conv: 192 channels at 17×17
    assert feats["spatial"].shape == (2, 2023) and feats["pool"].shape == (2, 2048)
    assert feats["logits"].shape == (2, 1008)
    expected = seen["out"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # ADM: [..., :7], NHWC
    torch.testing.assert_close(feats["spatial"], expected)


def test_safetensors_weights_are_read_to_the_same_state_dict(inception_files):
    from repackctl.metrics.inception import read_state_dict_safely

    a = read_state_dict_safely(inception_files / "inception.safetensors")
    b = read_state_dict_safely(inception_files / "inception.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = inception_files / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_state_dict_safely(bad)


def test_missing_inception_weights_raise_one_clear_error(tmp_path, monkeypatch):
    from repackctl.metrics.generative import compute_generative_metrics
    from repackctl.metrics.inception import INCEPTION_FILENAME, hub_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError) as err:
        compute_generative_metrics(_images(0, 4, True), _images(1, 4, True), ("fid",))
    hint = err.value.hint
    assert str(hub_weights_path()) in hint and INCEPTION_FILENAME in hint
    assert "--inception-weights" in hint
    with pytest.raises(WeightsError, match="not found"):
        from repackctl.metrics.inception import resolve_inception_weights

        resolve_inception_weights(tmp_path / "nope.pth")


class _Payload:
    """Pickles to a call that would create a file when unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickle_bearing_weights_are_refused_without_running_them(tmp_path):
    from repackctl.metrics.inception import InceptionExtractor

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": _Payload(str(marker))}, bad)
    with pytest.raises(WeightsError, match="refusing"):
        InceptionExtractor(bad)
    assert not marker.exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    with pytest.raises(WeightsError, match="does not fit"):
        InceptionExtractor(wrong)


# --------------------------------------------------------------------------- generative inputs
def test_generative_metrics_input_errors(tmp_path):
    from repackctl.metrics.generative import compute_generative_metrics

    stats = FeatureStats().update(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ConfigError, match="unknown metric"):
        compute_generative_metrics(_images(0, 2, True), {"fid": stats}, ("fid", "lpips"))
    with pytest.raises(ConfigError, match="need reference images"):
        compute_generative_metrics(_images(0, 2, True), {"fid": stats}, ("fid", "kid"))
    assert count_images([np.zeros((3, 4, 4, 3)), np.zeros((2, 4, 4, 3))]) == 5


# --------------------------------------------------------------------------- encoder FD
def test_encoder_fd_uses_pooled_patch_tokens_and_records_the_encoder():
    from repackctl.encoders.builtin import builtin_encoder
    from repackctl.metrics.encoder_fd import compute_encoder_fd, encoder_feature_stats

    enc = builtin_encoder(weights="random", resolution=32, seed=0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
    c = (a // 4 + 100).astype(np.uint8)  # another distribution: low contrast, brighter
    same = compute_encoder_fd(enc, a, b, batch_size=75)
    other = compute_encoder_fd(enc, a, c, batch_size=75)
    assert other["fd"] > 20 * max(same["fd"], 1e-12)
    assert same["encoder"] == enc.spec.attrs() and "patch tokens" in same["feature"]
    assert same["n_generated"] == 150 and same["n_reference"] == 150
    # The feature really is the token mean: recompute it by hand.
    with torch.no_grad():
        tokens, _ = enc(torch.from_numpy(a[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    manual = FeatureStats().update(tokens.mean(dim=1).double())
    np.testing.assert_allclose(
        encoder_feature_stats(enc, a[:100], batch_size=7).mu, manual.mu, rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------------- recon
def test_psnr_closed_form_identical_and_float_range():
    from repackctl.metrics.recon import psnr

    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, (3, 16, 16, 3), dtype=np.uint8)
    res = psnr(x, x + np.uint8(4))
    np.testing.assert_allclose(res.per_image, 20 * np.log10(255 / 4))
    assert res.mean == pytest.approx(20 * np.log10(255 / 4)) and res.n_identical == 0
    same = psnr(x, x)
    assert same.mean == math.inf and same.n_identical == 3 and same.to_dict()["psnr"] is None
    mixed = psnr(x, np.concatenate([x[:1], x[1:] + np.uint8(8)]))
    assert mixed.n_identical == 1 and mixed.mean == pytest.approx(20 * np.log10(255 / 8))
    f = torch.rand(2, 3, 16, 16) * 1.5 - 0.75
    assert psnr(f, f + 0.1).mean == pytest.approx(20 * np.log10(2.0 / 0.1), rel=1e-4)
    with pytest.raises(DataError, match="uint8 images with float"):
        psnr(x, x.astype(np.float32))


def test_ssim_identity_constant_images_and_monotone_in_noise():
    from repackctl.metrics.recon import SSIM_K1, ssim, ssim_per_image

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    scores = [
        ssim(x, np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8))
        for s in (5, 20, 60)
    ]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    # Constant images: variances vanish, SSIM = (2ab + C1) / (a² + b² + C1).
    a, b, c1 = 100.0, 140.0, (SSIM_K1 * 255) ** 2
    ca, cb = np.full((1, 16, 16, 3), a, np.uint8), np.full((1, 16, 16, 3), b, np.uint8)
    assert ssim_per_image(ca, cb)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_equals_the_full_2d_gaussian_window():
    """The separable blur gives the SSIM of Wang et al.'s 11 × 11 window (σ 1.5), computed here
    the direct way: one 2-D depthwise convolution of the outer-product window."""
    import torch.nn.functional as F

    from repackctl.metrics.recon import SSIM_K1, SSIM_K2, ssim_per_image

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    win = torch.outer(g, g) / torch.outer(g, g).sum()
    blur = lambda t: F.conv2d(t, win.expand(3, 1, 11, 11), groups=3)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    m = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    want = m.flatten(1).mean(1).numpy()
    got = ssim_per_image(a, b)
    assert 0.2 < want.min() < want.max() < 0.95
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_save_grid_writes_rows_with_labels(tmp_path):
    from PIL import Image

    from repackctl.metrics.recon import save_grid

    top = np.zeros((3, 8, 8, 3), np.uint8)
    top[:, :, :, 0] = 255
    bottom = np.full((2, 8, 8, 3), 7, np.uint8)
    out = save_grid([top, bottom], tmp_path / "g" / "grid.png", labels=["real", "recon"], pad=2)
    img = np.asarray(Image.open(out))
    assert img.shape[0] == 2 * (8 + 2) + 2 and img.shape[1] > 3 * (8 + 2) + 2
    margin = img.shape[1] - (3 * (8 + 2) + 2)  # label column width
    assert tuple(img[2 + 3, margin + 2 + 3]) == (255, 0, 0)  # first cell of the top row
    assert tuple(img[12 + 3, margin + 2 + 3]) == (7, 7, 7)  # first cell of the bottom row
    with pytest.raises(DataError):
        save_grid([top.astype(np.float32)], tmp_path / "bad.png")


# --------------------------------------------------------------------------- probe
def test_linear_probe_separable_vs_random_labels():
    from repackctl.metrics.probe import format_probe_table, linear_probe

    rng = np.random.default_rng(0)
    k, d = 4, 16
    centres = rng.normal(0, 3, (k, d))
    ytr, yev = rng.integers(0, k, 400), rng.integers(0, k, 400)
    xtr = centres[ytr] + rng.normal(size=(400, d))
    xev = centres[yev] + rng.normal(size=(400, d))
    good = linear_probe(xtr, ytr, xev, yev, epochs=40, weight_decays=(0.0, 1e-2))
    assert good.top1 > 0.95 and good.num_params == d * k + k and good.dims == d
    noise = linear_probe(  # mini-batch path
        rng.normal(size=(400, d)), ytr, rng.normal(size=(400, d)), yev, epochs=40,
        weight_decays=(0.0, 1e-2), batch_size=128,
    )  # fmt: skip
    assert abs(noise.top1 - 1 / k) < 0.1
    table = format_probe_table(
        [
            ("RePack 32-d", good),
            {"name": "DINOv3 raw 768-d", "dims": 768, "params": 769000, "top1": 0.8256},
        ]
    )
    lines = table.splitlines()
    assert lines[0] == "| Representation | dims | #params | top-1 % |"
    assert lines[-1] == "| DINOv3 raw 768-d | 768 | 769,000 | 82.56 |"


# --------------------------------------------------------------------------- ADM npz
def test_samples_npz_round_trip_streaming_and_reference_batch(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    p1 = write_samples_npz(tmp_path / "a.npz", images, labels)
    p2 = write_samples_npz(tmp_path / "b.npz", (images[i : i + 4] for i in range(0, 10, 4)), num=10)
    got, got_labels = read_samples_npz(p1)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    with np.load(p2, allow_pickle=False) as z:  # the ADM evaluator's own way of reading
        np.testing.assert_array_equal(z["arr_0"], images)
        assert "arr_1" not in z.files
    batches = list(iter_npz_images(p1, batch_size=3))
    assert [b.shape[0] for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    with pytest.raises(DataError, match="num=11"):
        write_samples_npz(tmp_path / "c.npz", iter([images]), num=11)
    assert not (tmp_path / "c.npz").exists()

    ref_path = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref_path, arr_0=images, mu=np.ones(4), sigma=np.eye(4), mu_s=np.zeros(2),
             sigma_s=np.eye(2))  # fmt: skip
    ref = read_reference_batch(ref_path)
    assert ref.num_images == 10 and ref.sha256 == sha256_file(ref_path)
    np.testing.assert_array_equal(ref.sigma, np.eye(4))
    np.testing.assert_array_equal(np.concatenate(list(ref.iter_images(4))), images)
    with zipfile.ZipFile(tmp_path / "junk.npz", "w") as zf:
        zf.writestr("mu.npy", b"not an array")
    with pytest.raises(DataError):
        read_reference_batch(tmp_path / "junk.npz")


# --------------------------------------------------------------------------- protocol card
def _card_fields() -> dict:
    return dict(
        sampler="euler-ode", steps=50, nfe=100, cfg_scale=1.8, cfg_interval=(0.0, 0.7),
        cfg_legacy_channels=0, shift=1.0, label_scheme="balanced", seed=0, precision="fp32",
        evaluator="repackctl.metrics.generative", feature_extractor="inception-v3-compat",
        num_samples=50000,
    )  # fmt: skip


def test_protocol_card_has_every_field_and_hashes_match(tmp_path):
    from repackctl.metrics.protocol import (
        ProtocolCard,
        read_metrics_json,
        verify_card_files,
        write_metrics_json,
    )

    ckpt = tmp_path / "step-0000010"
    ckpt.mkdir()
    (ckpt / "ema.safetensors").write_bytes(b"weights")
    (ckpt / "state.json").write_text("{}")
    (ckpt / "optim.pt").write_bytes(b"ignored for the hash")
    ref, weights = tmp_path / "ref.npz", tmp_path / "inception.pth"
    ref.write_bytes(b"reference")
    weights.write_bytes(b"inception")
    card = ProtocolCard.build(
        checkpoint=ckpt, reference_file=ref, feature_extractor_weights=weights, **_card_fields()
    )
    assert card.reference_sha256 == sha256_file(ref)
    assert card.feature_extractor_sha256 == sha256_file(weights)
    assert card.checkpoint_sha256 == sha256_path(ckpt)
    assert {"torch", "torch-fidelity", "repackctl"} <= set(card.versions)
    out = write_metrics_json(tmp_path / "m" / "metrics.json", {"fid": 2.5, "psnr": math.inf}, card)
    metrics, back = read_metrics_json(out)
    assert metrics == {"fid": 2.5, "psnr": None} and back == card
    doc = json.loads(out.read_text())
    import dataclasses

    assert {f.name for f in dataclasses.fields(ProtocolCard)} <= set(doc["protocol"])
    verify_card_files(card, checkpoint=ckpt, reference=ref, feature_extractor=weights)
    (ckpt / "optim.pt").write_bytes(b"optimizer state does not change samples")
    verify_card_files(card, checkpoint=ckpt)
    (ckpt / "ema.safetensors").write_bytes(b"other weights")
    with pytest.raises(DataError, match="not the checkpoint"):
        verify_card_files(card, checkpoint=ckpt)
    incomplete = card.to_dict()
    del incomplete["cfg_interval"]
    incomplete["label_scheme"] = ""
    with pytest.raises(ConfigError, match="missing cfg_interval; empty label_scheme"):
        write_metrics_json(tmp_path / "bad.json", {"fid": 1.0}, incomplete)
    assert not (tmp_path / "bad.json").exists()
