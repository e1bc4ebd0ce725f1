"""`pack train --features F --encoder E` keeps an encoder that is the network that made F under
another name, and still refuses one that is another network.

Features extracted with `--encoder timm:vit_base_patch16_dinov3` have the id `dinov3-vitb16--…`;
`pack train --features dinov3-vitb16--… --encoder dinov3` was refused ("drop --encoder"),
although the registered `dinov3` encoder is that very timm model: the check compared the name
given with the `--encoder` the cache recorded (`timm:…`), not what the two resolve to. Both
names now resolve to their spec id (`dinov3-vitb16`) from the names alone, no model built.

A real extract through the CLI (DINOv3 ViT-B/16 with seeded random weights, 2 built-in images
at 32 px: a 2×2 token grid) with `--encoder timm:vit_base_patch16_dinov3`, and a copy of it
recording `--encoder dinov3`, as that extract would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import private_copy
from support.cli import cli_ok, cli_refused

from repackctl.cache.commands import encoder_flag
from repackctl.cache.store import DatasetEntry
from repackctl.errors import ConfigError
from repackctl.settings import resolve_settings

TIMM = "timm:vit_base_patch16_dinov3"
ENTRY = "builtin-n2--train--32px"
TINY = ["--batch-size", "2", "-c", "4", "--ch", "8", "--image-every", "0", "--steps", "1"]


def _extract(root: Path, encoder: str) -> Path:
    src = ["--encoder", encoder, "--weights", "random", "--resolution", "32", "-n", "2"]
    cli_ok("extract", *src, "--chunk", "2", "--shard", "2", "--num-workers", "0",
           "--device", "cpu", "--cache", str(root))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def by_timm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache whose DINOv3-B features were extracted with ``--encoder timm:…``."""
    return _extract(tmp_path_factory.mktemp("dinov3-timm") / "cache", TIMM)


@pytest.fixture
def by_name(by_timm: Path, tmp_path: Path) -> Path:
    """A cache whose DINOv3-B features were extracted with ``--encoder dinov3``: what that
    extract writes is ``by_timm``'s features (the same model, seed and id) with ``dinov3`` as
    the recorded ``--encoder``, so a copy of it records that instead of a second ViT-B build."""
    root = private_copy(by_timm, tmp_path)
    feats = DatasetEntry.open(str(root), ENTRY).features(_features(root))
    config = feats.attrs["config"]
    assert config["values"]["extract"]["encoder"] == TIMM, config
    config["values"]["extract"]["encoder"] = "dinov3"
    feats.group.attrs["config"] = config
    assert encoder_flag(feats.attrs, _features(root)) == "dinov3"
    return root


def _features(root: Path) -> str:
    (fid,) = DatasetEntry.open(str(root), ENTRY).feature_ids()
    return fid


def _check(root: Path, encoder: str) -> None:
    """``check_named_alone`` of ``pack train --features F --encoder encoder`` on ``root``."""
    from repackctl.cli.pack import check_named_alone

    flags = {"cache": str(root), "pack.features": _features(root), "pack.encoder": encoder}
    check_named_alone(resolve_settings(flags=flags, environ={}), "train")


def test_dinov3_beside_features_of_its_timm_name_trains(by_timm: Path, tmp_path: Path) -> None:
    fid, runs = _features(by_timm), tmp_path / "runs"
    assert fid.startswith("dinov3-vitb16--"), fid
    train = ["pack", "train", *TINY, "--device", "cpu", "--cache", str(by_timm)]
    train += ["--runs", str(runs), "--features", fid, "--resolution", "32"]
    cli_ok(*train, "--name", "d3", "--encoder", "dinov3")
    assert (runs / "d3" / "checkpoints").is_dir()
    _check(by_timm, TIMM)  # the name it was made with, as before
    # another network is still refused: the built-in encoder, DINOv2, another DINOv3 size
    out = cli_refused(2, *train, "--name", "b", "--encoder", "builtin")
    assert f"pack.encoder = 'builtin' (from flag) given with pack.features = '{fid}'" in out, out
    assert f"drop --encoder to train on {fid}" in out, out
    for other in ("dinov2", "timm:vit_small_patch16_dinov3", "timm:vit_base_patch14_dinov2"):
        with pytest.raises(ConfigError, match=f"pack.encoder = '{other}'"):
            _check(by_timm, other)
    assert not (runs / "b").exists()


def test_timm_name_beside_features_of_dinov3_is_kept(by_name: Path) -> None:
    from repackctl.pack.data import encoder_made_features

    fid = _features(by_name)
    assert fid.startswith("dinov3-vitb16--")
    _check(by_name, "dinov3")
    _check(by_name, TIMM)
    settings = resolve_settings(flags={"cache": str(by_name)}, environ={}).settings
    assert encoder_made_features(settings, "dinov3:vit_base_patch16_dinov3", fid)
    assert not encoder_made_features(settings, "builtin", fid)
    for other in ("builtin", "dinov2", "timm:vit_small_patch16_dinov3"):
        with pytest.raises(ConfigError, match=f"pack.encoder = '{other}'"):
            _check(by_name, other)


def test_registered_timm_names_resolve_to_the_factorys_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spec id read from a registered name is the one its factory builds (the factory's
    timm model, caught before anything is built)."""
    from repackctl.encoder_names import TIMM_ENCODERS, encoder_spec_id, timm_short_id
    from repackctl.encoders import timm_vit
    from repackctl.registry import registry

    monkeypatch.setattr(timm_vit, "timm_encoder", lambda **kwargs: kwargs["variant"])
    assert set(TIMM_ENCODERS) == {"dinov2", "dinov3"}
    for name, arch in TIMM_ENCODERS.items():
        assert registry("encoders").get(name)(weights="random") == arch, name
        assert encoder_spec_id(name) == timm_short_id(arch), name
    assert encoder_spec_id(TIMM) == "dinov3-vitb16"
    assert encoder_spec_id("builtin") is None and encoder_spec_id("patchpix") is None
