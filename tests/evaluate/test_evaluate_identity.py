"""Identity checks of `evaluate fid` and `evaluate adherence` left over after s30.

1. ``compute_encoder_fd`` refused reference statistics of other encoder weights only after it
   had computed the samples' features: the user waited for nothing. It refuses them first.
2. `evaluate adherence` compared the training entry of a stored ``adherence.json`` by name
   only; it now records the content hash of the images the classifiers trained on
   (``classifier.trained_on_sha256``) and compares it where both records have one (an entry
   removed and extracted again under that name holds other images); older records keep the
   name rule.
3. The "another protocol" refusal of `evaluate fid` printed the fd encoder's whole spec (mean,
   std, arch, ...) twice; it names only the keys that differ, stored → this run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from test_fid_identity_checks import _encoder_weights, _fd_args, _samples

from repackctl.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]


def test_encoder_fd_refuses_other_weights_before_the_samples(tmp_path):
    from repackctl.encoders.builtin import builtin_encoder
    from repackctl.metrics.encoder_fd import compute_encoder_fd
    from repackctl.metrics.frechet import FeatureStats, StatsFile
    from repackctl.progress import null_progress

    enc = builtin_encoder(weights="random", resolution=32, seed=0)
    feats = np.random.default_rng(0).normal(size=(8, enc.spec.dim))
    moments = FeatureStats(dim=enc.spec.dim).update(feats)
    other = StatsFile(moments.mu, moments.sigma, moments.n, {"weights_sha256": "ab" * 32})
    started: list[str] = []

    def progress(description: str = "", **kw: object):  # records each job begun
        started.append(description)
        return null_progress(description, **kw)

    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="other encoder weights") as e:
        compute_encoder_fd(enc, images, other, progress=progress)
    assert "abababababab" in e.value.message
    assert started == []  # refused before the samples' features were computed
    same = StatsFile(moments.mu, moments.sigma, moments.n, {})  # bare moments: not checked
    assert (
        compute_encoder_fd(enc, images, same, fd_method="cholesky", progress=progress)[
            "n_reference"
        ]
        == 8
    )
    assert started == ["encoder: generated"]


def test_another_fd_encoder_is_named_by_the_keys_that_differ(tmp_path):
    from repackctl.files import sha256_file

    samples = _samples(tmp_path / "gen.npz")
    weights = _encoder_weights(tmp_path / "a.safetensors", seed=0)
    other = _encoder_weights(tmp_path / "c.safetensors", seed=1)
    out, stats = tmp_path / "out" / "metrics.json", tmp_path / "stats"
    cli_ok(*_fd_args(samples, weights, out, stats))
    before = out.read_bytes()

    refused = cli_refused(ConfigError.exit_code, *_fd_args(samples, other, out, stats))
    said = " ".join(refused.split())  # the console wraps long lines
    a, c = sha256_file(weights), sha256_file(other)
    assert (
        f"fd encoder: weights 'file:a.safetensors' → 'file:c.safetensors', "
        f"weights_sha256 '{a}' → '{c}' (stored → this run)"
    ) in said, said
    assert "'mean'" not in said and "'arch'" not in said  # not the whole spec, twice
    assert out.read_bytes() == before


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s30b-t2i") / "w")


def test_adherence_compares_the_training_images_by_content(t2i, tmp_path, monkeypatch):
    from repackctl.evaluate.generative import cache_image_set

    work = use_stack(t2i, tmp_path, monkeypatch)
    folder = tmp_path / "s"
    cli_ok("sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "4", "--prompt",
           "a red star", "--out", str(folder), *CPU)  # fmt: skip
    adherence = ["evaluate", "adherence", str(folder), "--steps", "2", *CPU]
    cli_ok(*adherence)
    path = folder / "adherence.json"
    doc = json.loads(path.read_text())
    clf = doc["classifier"]
    entry, content = clf["trained_on"], clf["trained_on_sha256"]
    # the content hash of the images the classifiers trained on, as `evaluate fid` hashes them
    assert content == cache_image_set(str(work / "cache"), entry, None).hasher()

    # a file written when the entry of that name held other images: another result, kept
    doc["classifier"]["trained_on_sha256"] = "0" * 64
    doc["classifier_real_val_accuracy"] = {"shape": 0.5}  # of those other classifiers
    path.write_text(json.dumps(doc))
    kept = path.read_bytes()
    out = " ".join(cli_refused(ConfigError.exit_code, *adherence).split())
    assert f"training entry {entry} held other images (content sha256 000000000000…" in out
    assert "nothing was scored" in out
    assert path.read_bytes() == kept

    # a file written before the hash was recorded: the name decides, as before
    del doc["classifier"]["trained_on_sha256"]
    path.write_text(json.dumps(doc))
    cli_ok(*adherence)
    again = json.loads(path.read_text())
    assert again["classifier"]["trained_on_sha256"] == content
    assert again["classifier_real_val_accuracy"] == {"shape": 0.5}  # same classifiers: kept
