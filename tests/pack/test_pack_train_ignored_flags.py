"""`pack train` with `--entry` / `--features` refuses the flags they would silently override.

`--entry E --split val` (or `-n`, `--data`) trained on E and recorded split val; `--features F
--encoder dinov3` trained on F and recorded encoder dinov3 as the run's. `pack encode` refused
the first already; both commands now share one check, run before the run folder is made.
`--resolution` beside `--entry` alone acts (the features id is worked out from the encoder at
that size) and is kept; an `--encoder` that made the features is kept too (on a GPU, preset
`auto` asks for it); a default or preset value is never refused.

A real patchpix cache (16 built-in images, 32 px) and real one-step trainings through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry
from repackctl.errors import ConfigError
from repackctl.settings import resolve_settings

base_cache, cache = patchpix_fixtures("s34-ignored-flags", num=16)

ENTRY = "builtin-n16--train--32px"
TINY = ["--batch-size", "4", "-c", "4", "--ch", "8", "--image-every", "0", "--steps", "1"]


def _features(root: Path) -> str:
    (fid,) = DatasetEntry.open(str(root), ENTRY).feature_ids()
    return fid


def _train(root: Path, runs: Path, name: str) -> list[str]:
    return ["pack", "train", "--name", name, *TINY, "--device", "cpu", "--cache", str(root),
            "--runs", str(runs)]  # fmt: skip


def test_source_flags_beside_entry_are_refused(base_cache: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # what trains on ENTRY (--resolution: the size of the features id the encoder makes)
    train = [*_train(base_cache, runs, "px"), "--entry", ENTRY, "--encoder", "patchpix"]
    train += ["--resolution", "32"]
    out = cli_refused(2, *train, "--split", "val")
    assert "pack.split = 'val' (from flag) given with pack.entry" in out, out
    assert "the one trained on" in out and "nothing was trained" in out, out
    assert "drop --split to train on" in out and "drop --entry" in out, out
    out = cli_refused(2, *train, "-n", "3", "--data", "builtin")
    assert "pack.data = 'builtin' (from flag), pack.num = 3 (from flag)" in out, out
    # beside --features too, --resolution names nothing: the entry fixes the size
    out = cli_refused(2, *train, "--features", _features(base_cache))
    assert "pack.resolution = 32 (from flag) given with pack.entry" in out, out
    assert not runs.exists()


def test_encoder_settings_beside_features_are_refused(
    base_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, fid = tmp_path / "runs", _features(base_cache)
    train = [*_train(base_cache, runs, "pz"), "--features", fid, "--resolution", "32"]
    out = cli_refused(2, *train, "--encoder", "dinov3")
    assert f"pack.encoder = 'dinov3' (from flag) given with pack.features = '{fid}'" in out, out
    assert f"drop --encoder to train on {fid}" in out and "drop --features" in out, out
    # weights and layer are read by nothing beside --features, even with the right encoder
    out = cli_refused(2, *train, "--encoder", "patchpix", "--layer", "3", "--weights", "w")
    assert "pack.weights = 'w' (from flag), pack.layer = 3 (from flag)" in out, out
    assert "encoder" not in out.split("given with")[0], out
    config = tmp_path / "enc.toml"
    config.write_text('[pack]\nencoder = "dinov3"\n')
    out = cli_refused(2, *train, "--config", str(config))
    assert "(from file enc.toml)" in out and "remove it from enc.toml" in out, out
    monkeypatch.setenv("REPACKCTL_PACK__ENCODER", "builtin")
    out = cli_refused(2, *train)
    assert "unset REPACKCTL_PACK__ENCODER" in out, out
    assert not runs.exists()


def test_consistent_names_still_train(cache: Path, tmp_path: Path) -> None:
    runs, fid = tmp_path / "runs", _features(cache)
    cli_ok(*_train(cache, runs, "f"), "--features", fid, "--resolution", "32")
    cli_ok(
        *_train(cache, runs, "fe"), "--features", fid, "--encoder", "patchpix", "--resolution", "32"
    )
    # without --features the encoder at --resolution makes the features id: both act
    cli_ok(
        *_train(cache, runs, "e"), "--entry", ENTRY, "--encoder", "patchpix", "--resolution", "32"
    )
    config = tmp_path / "split.toml"
    config.write_text('[pack]\nsplit = "val"\n')  # a lower layer, overridden by the flag
    cli_ok(*_train(cache, runs, "c"), "--entry", ENTRY, "--features", fid, "--config", str(config))
    for name in ("f", "fe", "e", "c"):
        assert (runs / name / "checkpoints").is_dir(), name
    record = json.loads((runs / "fe" / "config.json").read_text())["extra"]["settings"]
    assert record["values"]["pack"]["encoder"] == "patchpix", record


def test_library_names_entry_features_and_encoder(base_cache: Path) -> None:
    """The demo's path (``pipeline.pack_train``) gives entry, features and the encoder that
    made them in one layer: nothing there is ignored, so nothing is refused."""
    from repackctl.cli.pack import check_named_alone

    flags = {"cache": str(base_cache), "pack.entry": ENTRY, "pack.features": _features(base_cache)}
    check_named_alone(
        resolve_settings(flags=flags | {"pack.encoder": "patchpix"}, environ={}), "train"
    )
    with pytest.raises(ConfigError, match="pack.encoder = 'builtin'"):
        check_named_alone(
            resolve_settings(flags=flags | {"pack.encoder": "builtin"}, environ={}), "train"
        )
