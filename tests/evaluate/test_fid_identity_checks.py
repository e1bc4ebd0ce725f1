"""`evaluate fid` decides whether a rerun recomputes the same result by content, and refuses
another feature space before anything is scored.

- FD encoder weights copied under another file name are the same bytes, hence the same feature
  space: a rerun that reads the copy replaces the ``metrics.json`` (which then names the copy)
  rather than being refused because the weights' tag (``file:<name>``) differs.
- Other FD encoder weights, or other Inception weights, are refused before the samples or the
  reference are scored: no reference statistics are computed and cached for them, and the
  existing ``metrics.json`` is left as it was.
- ``--force-reference`` with FD statistics made with other encoder weights scores (the card
  records the difference) instead of failing after the samples were scored; statistics of
  another feature width cannot be compared at all and are refused before scoring, forced or not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.files import sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(path: Path, n: int = 4) -> Path:
    """An external samples .npz (ADM layout: arr_0 uint8 (N, 32, 32, 3)) of built-in images."""
    from repackctl.data.builtin import BuiltinSource

    src = BuiltinSource(split="train", num=n, seed=1)
    np.savez(path, arr_0=np.stack([src.load(i, 32) for i in range(n)]))
    return path


def _encoder_weights(path: Path, seed: int) -> Path:
    """Seeded random weights of the built-in encoder, saved where `--fd-weights` reads them."""
    from safetensors.torch import save_file

    from repackctl.encoders.builtin import BuiltinViT

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(BuiltinViT().state_dict(), str(path))
    return path


def _fd_args(samples: Path, weights: Path, out: Path, stats: Path) -> list[str]:
    return ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "fd",
            "--fd-weights", str(weights), "--fd-method", "cholesky", "--device", "cpu",
            "--stats-dir", str(stats), "--out", str(out)]  # fmt: skip


def test_fd_weights_copied_under_another_name_are_the_same_feature_space(tmp_path):
    samples = _samples(tmp_path / "gen.npz")
    weights = _encoder_weights(tmp_path / "w" / "a.safetensors", seed=0)
    copy = tmp_path / "elsewhere" / "b.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(weights, copy)
    out, stats = tmp_path / "out" / "metrics.json", tmp_path / "stats"
    cli_ok(*_fd_args(samples, weights, out, stats))
    first = json.loads(out.read_text())["metrics"]

    cli_ok(*_fd_args(samples, copy, out, stats))  # the same result recomputed: replaces it
    again = json.loads(out.read_text())["metrics"]
    assert again["fd"] == pytest.approx(first["fd"])
    detail = again["fd_detail"]
    assert detail["weights_path"] == str(copy.resolve())  # the file this run read
    assert detail["encoder"]["weights"] == "file:b.safetensors"
    assert detail["encoder"]["weights_sha256"] == sha256_file(weights)


def test_other_fd_weights_are_refused_before_anything_is_scored(tmp_path):
    samples = _samples(tmp_path / "gen.npz")
    weights = _encoder_weights(tmp_path / "a.safetensors", seed=0)
    other = _encoder_weights(tmp_path / "c.safetensors", seed=1)
    out, stats = tmp_path / "out" / "metrics.json", tmp_path / "stats"
    assert "encoder: generated" in cli_ok(*_fd_args(samples, weights, out, stats))
    before, cached = out.read_bytes(), sorted(stats.iterdir())

    refused = cli_refused(ConfigError.exit_code, *_fd_args(samples, other, out, stats))
    assert "made with another protocol" in refused and "file:c.safetensors" in refused
    assert out.read_bytes() == before  # left untouched
    assert sorted(stats.iterdir()) == cached  # the reference was not scored in c's space
    assert "encoder: generated" not in refused  # nor were the samples


def test_other_inception_weights_are_refused_before_anything_is_scored(tmp_path, inception_file):
    samples = _samples(tmp_path / "gen.npz")
    copy = tmp_path / "copy" / "inception.pth"
    copy.parent.mkdir()
    shutil.copyfile(inception_file, copy)
    other = tmp_path / "other" / "inception.pth"
    other.parent.mkdir()
    state = torch.load(inception_file, weights_only=True)
    first_conv = next(k for k in state if k.endswith("weight"))
    state[first_conv] = state[first_conv] * 1.01  # another network, same shapes
    torch.save(state, other)
    out, stats = tmp_path / "out" / "metrics.json", tmp_path / "stats"

    def args(weights: Path) -> list[str]:
        return ["evaluate", "fid", str(samples), "--ref", "builtin", "--metrics", "fid",
                "--inception-weights", str(weights), "--fd-method", "cholesky",
                "--device", "cpu", "--stats-dir", str(stats), "--out", str(out)]  # fmt: skip

    assert "inception: generated" in cli_ok(*args(inception_file))
    cli_ok(*args(copy))  # the same bytes under another path: the same result recomputed
    before, cached = out.read_bytes(), sorted(stats.iterdir())
    refused = cli_refused(ConfigError.exit_code, *args(other))
    assert "made with another protocol" in refused and "feature_extractor_sha256" in refused
    assert out.read_bytes() == before
    assert sorted(stats.iterdir()) == cached  # no reference statistics for the other weights
    assert "inception: generated" not in refused


def _fd_stats(tmp_path: Path, *flags: str) -> Path:
    """`evaluate stats builtin --extractor fd` of 4 built-in images at 32 px: the stats file."""
    folder = tmp_path / "refstats"
    cli_ok("evaluate", "stats", "builtin", "--extractor", "fd", "--num", "4", "--resolution",
           "32", "--device", "cpu", "--stats-dir", str(folder), *flags)  # fmt: skip
    (path,) = folder.glob("*.npz")
    return path


def test_forced_fd_statistics_of_other_weights_are_scored(tmp_path):
    samples = _samples(tmp_path / "gen.npz")
    made_with = _encoder_weights(tmp_path / "a.safetensors", seed=0)
    other = _encoder_weights(tmp_path / "c.safetensors", seed=1)
    ref = _fd_stats(tmp_path, "--fd-weights", str(made_with))
    out = tmp_path / "out" / "metrics.json"
    args = ["evaluate", "fid", str(samples), "--ref", str(ref), "--metrics", "fd",
            "--fd-weights", str(other), "--fd-method", "cholesky", "--device", "cpu",
            "--out", str(out)]  # fmt: skip

    refused = cli_refused(ConfigError.exit_code, *args)
    assert "made with another protocol" in refused and "--force-reference" in refused
    assert not out.exists()

    said = cli_ok(*args, "--force-reference")
    assert said.count("Warning: reference protocol differs (") == 1
    card = json.loads(out.read_text())["protocol"]
    assert any("weights_sha256" in d for d in card["reference_protocol_differences"])


def test_fd_statistics_of_another_feature_width_are_refused_even_forced(tmp_path):
    samples = _samples(tmp_path / "gen.npz")
    ref = _fd_stats(tmp_path, "--fd-encoder", "patchpix")
    out = tmp_path / "out" / "metrics.json"
    args = ["evaluate", "fid", str(samples), "--ref", str(ref), "--metrics", "fd",
            "--fd-weights", "random", "--fd-method", "cholesky", "--device", "cpu",
            "--out", str(out), "--force-reference"]  # fmt: skip
    refused = cli_refused(ConfigError.exit_code, *args)
    assert "cannot be compared" in refused and "nothing was scored" in refused
    assert "encoder: generated" not in refused
    assert not out.exists()
