"""`evaluate fid` against an ADM reference batch with Inception weights other than the official
file: the batch's mu/sigma are TensorFlow statistics of the official Inception, so FID/sFID of
features from other weights compared two feature spaces and was written with only a "not
comparable to published ones" caveat. It is refused (nothing written) unless
``--force-reference``, which records the difference on the card. The weights are recorded by
absolute path (besides their sha256) when given as a relative path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.files import sha256_file


def _external_samples(path: Path, n: int = 3) -> Path:
    """An external samples .npz (ADM layout: arr_0 uint8 (N, H, W, 3)) of built-in images."""
    from repackctl.data.builtin import BuiltinSource

    src = BuiltinSource(split="train", num=n, seed=1)
    np.savez(path, arr_0=np.stack([src.load(i, 32) for i in range(n)]))
    return path


def test_adm_fid_with_unofficial_inception_weights_is_refused_unless_forced(
    tmp_path, inception_file, monkeypatch
):
    samples = _external_samples(tmp_path / "gen.npz")
    adm = tmp_path / "VIRTUAL_test.npz"
    np.savez(adm, mu=np.zeros(2048), sigma=np.eye(2048))  # statistics only, as ADM's batches
    out = tmp_path / "out" / "metrics.json"
    # the weights given relative to the current folder: recorded by absolute path
    monkeypatch.chdir(inception_file.parent)
    args = ["evaluate", "fid", str(samples), "--ref", str(adm), "--metrics", "fid",
            "--inception-weights", inception_file.name, "--fd-method", "cholesky",
            "--device", "cpu", "--out", str(out)]  # fmt: skip

    refused = cli_refused(ConfigError.exit_code, *args)
    assert "ADM reference batch" in refused and "not torch-fidelity's official" in refused
    assert str(inception_file.resolve()) in refused and "--force-reference" in refused
    assert not out.exists()  # nothing written

    said = cli_ok(*args, "--force-reference")
    assert "Warning: reference protocol differs (Inception weights" in said
    doc = json.loads(out.read_text())
    differences = doc["protocol"]["reference_protocol_differences"]
    assert len(differences) == 1 and "Inception weights" in differences[0]
    inception = doc["metrics"]["inception"]
    assert inception["weights_path"] == str(inception_file.resolve())
    assert os.path.isabs(inception["weights_path"])
    assert inception["weights_sha256"] == sha256_file(inception_file)


def test_fd_weights_given_relative_are_recorded_by_absolute_path(tmp_path, monkeypatch):
    import shutil

    from repackctl.encoders.builtin import SHIPPED_WEIGHTS, BuiltinViT
    from repackctl.evaluate.generative import read_stats_bundle

    weights = tmp_path / "w" / "enc.safetensors"
    weights.parent.mkdir()
    if SHIPPED_WEIGHTS.is_file():
        shutil.copyfile(SHIPPED_WEIGHTS, weights)
    else:  # a checkout without them: any weights of the built-in encoder's shape
        from safetensors.torch import save_file

        save_file(BuiltinViT().state_dict(), str(weights))
    samples = _external_samples(tmp_path / "gen.npz", n=4)
    monkeypatch.chdir(weights.parent)
    out = tmp_path / "out" / "metrics.json"
    cli_ok("evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "fd",
           "--fd-weights", weights.name, "--fd-method", "cholesky", "--device", "cpu",
           "--out", str(out))  # fmt: skip
    detail = json.loads(out.read_text())["metrics"]["fd_detail"]
    assert detail["weights_path"] == str(weights.resolve())
    assert detail["encoder"]["weights_sha256"] == sha256_file(weights)

    said = cli_ok("evaluate", "stats", "builtin", "--extractor", "fd", "--num", "4",
                  "--resolution", "32", "--fd-weights", weights.name, "--device", "cpu",
                  "--stats-dir", str(tmp_path / "stats"))  # fmt: skip
    assert "computed" in said
    (stats_file,) = (tmp_path / "stats").glob("*.npz")
    meta = read_stats_bundle(stats_file)["fd"].metadata
    assert meta["weights_path"] == str(weights.resolve())
