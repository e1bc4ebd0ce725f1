"""Checkpoint integrity (DESIGN.md §6, §8): checksums in ``state.json``, a validated state, bad
checkpoints that rotation keeps apart from and resume skips, full disks, unwritable roots, stale
temporary files, and output folders that are never emptied of foreign content.

Damage is done to real checkpoints written by the real trainer (the toy task of
``train_toy_script``); sampling cases go through ``repackctl sample`` on the shared stage stack.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from support import train_toy_script as toy
from support.ckpt_state import write_state
from support.kill import dead_pid
from support.stack import LATENT, _settings, make_dit_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import CheckpointError, ConfigError
from repackctl.files import ensure_writable_dir
from repackctl.sample.folder import claim_folder
from repackctl.sample.run import run_sample
from repackctl.train import checkpoint as ckpt_io
from repackctl.train.loop import train

runner = CliRunner()


def _toy(run: Path, steps: int, every: int = 10, keep: int = 0):
    args = toy.parse([str(run), "--steps", str(steps), "--ckpt-every", str(every)])
    args.keep_last = keep
    task = toy.task_from_args(args)
    return task, train(task, toy.config_from_args(args))


@pytest.fixture(scope="module")
def toy_template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    _toy(run, 20)
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step-0000010", "step-0000020"]
    return run


@pytest.fixture
def toy_run(toy_template, tmp_path) -> Path:
    """A trained toy run with checkpoints at steps 10 and 20 (a fresh copy per test)."""
    run = tmp_path / "run"
    shutil.copytree(toy_template, run)
    return run


def _flip(path: Path, offset: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = e.value.message
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- checksums


def test_state_lists_a_sha256_of_every_file(toy_run) -> None:
    ckpt = toy_run / "checkpoints" / "step-0000020"
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "ema.safetensors", "optim.pt"}
    from repackctl.files import sha256_file

    assert all(sha256_file(ckpt / n) == h for n, h in files.items())


@pytest.mark.parametrize(
    "damage",
    ["data bytes", "truncated", "header bytes"],
)
def test_damaged_weights_are_never_used_and_resume_falls_back(toy_run, damage, capfd) -> None:
    newest = toy_run / "checkpoints" / "step-0000020"
    path = newest / "model.safetensors"
    size = path.stat().st_size
    if damage == "data bytes":
        _flip(path, size - 400, 200)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])
    else:
        _flip(path, 10, 20)  # inside the JSON header: safetensors itself would raise
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load_weights(newest, "model")
    assert str(path) in _one_line(e) and "corrupt" in e.value.message

    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(toy_run, warn=warnings.append).name == "step-0000010"
    assert (
        len(warnings) == 1 and "step-0000020" in warnings[0] and "model.safetensors" in warnings[0]
    )
    # resume goes on from the previous checkpoint and says why it skipped the newest
    _, result = _toy(toy_run, 12)
    assert result.resumed_from == 10
    err = capfd.readouterr().err
    assert "Warning: skipping checkpoint step-0000020" in err


def test_a_changed_value_in_state_json_makes_the_checkpoint_bad(toy_run) -> None:
    """``state.json`` holds the others' sha256 and its own: a digit of its data position, latent
    stats or config changed (still valid JSON, still a valid state) was used as it was."""
    ckpt = toy_run / "checkpoints" / "step-0000020"
    path = ckpt / "state.json"
    state = json.loads(path.read_text())
    assert state[ckpt_io.STATE_SHA256]
    path.write_text(json.dumps(state | {"offset": state["offset"] + 1}))
    with pytest.raises(CheckpointError) as e:
        ckpt_io.read_state(ckpt)
    assert str(path) in _one_line(e) and "does not match the sha256 it was written with" in (
        e.value.message
    )
    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(toy_run, warn=warnings.append).name == "step-0000010"
    assert "step-0000020" in warnings[0] and "sha256" in warnings[0]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s | {"epoch": "abc"}, "epoch"),
        (lambda s: s | {"rng": [{"python": "garbage"}]}, "rng.0"),
        (lambda s: s | {"rng": [s["rng"][0] | {"torch": [1, 2, 3]}]}, "rng.0.torch"),
        (lambda s: s | {"extra": {"latent_stats": {"mean": "x", "std": [1.0]}}}, "latent_stats"),
        (lambda s: s | {"extra": {"latent_stats": {"mean": [0.0], "std": [1.0, 2.0]}}}, "std"),
        (lambda s: {"step": 20}, "epoch"),
        (lambda s: s | {"step": -1}, "step"),
        (lambda s: {k: v for k, v in s.items() if k != "files"}, "files"),
    ],
)
def test_malformed_state_is_one_line_naming_file_and_field(toy_run, edit, field) -> None:
    ckpt = toy_run / "checkpoints" / "step-0000020"
    path = ckpt / "state.json"
    write_state(path, edit(json.loads(path.read_text())))
    with pytest.raises(CheckpointError) as e:
        ckpt_io.read_state(ckpt)
    msg = _one_line(e)
    assert str(path) in msg and field in msg
    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(toy_run, warn=warnings.append).name == "step-0000010"
    assert field in warnings[0]


def test_replaced_optim_pickle_is_refused_without_running_it(toy_run, tmp_path) -> None:
    from support.evil import write_evil_pickle

    ckpt = toy_run / "checkpoints" / "step-0000020"
    marker = tmp_path / "pwned"
    write_evil_pickle(ckpt / "optim.pt", marker)
    # state.json updated too, as an attacker would: the checksum passes, the unpickler refuses
    state = json.loads((ckpt / "state.json").read_text())
    from repackctl.files import sha256_file

    state["files"]["optim.pt"] = sha256_file(ckpt / "optim.pt")
    state["sizes"]["optim.pt"] = (ckpt / "optim.pt").stat().st_size
    write_state(ckpt / "state.json", state)
    with pytest.raises(CheckpointError, match="cannot load .*optim.pt safely"):
        ckpt_io.load_optim(ckpt)
    assert not marker.exists()


# --------------------------------------------------------------------------- bad checkpoints


def _save(run: Path, step: int, value: float, good: bool = True, keep: int = 2) -> Path:
    sd = {"w": torch.full((4,), value)}
    return ckpt_io.save_checkpoint(run, step, {"model": sd, "ema": sd}, {}, {}, keep, good=good)


def test_rotation_keeps_the_newest_good_checkpoint_and_resume_picks_it(tmp_path) -> None:
    run = tmp_path / "run"
    _save(run, 1, 1.0)
    _save(run, 2, 2.0, good=False)
    _save(run, 3, 3.0, good=False)  # keep_last=2 would have deleted step 1, the only good one
    names = [p.name for p in ckpt_io.list_checkpoints(run)]
    assert names == ["step-0000001", "step-0000002", "step-0000003"]
    _save(run, 4, 4.0, good=False)
    names = [p.name for p in ckpt_io.list_checkpoints(run)]
    assert names == ["step-0000001", "step-0000003", "step-0000004"]
    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(run, warn=warnings.append).name == "step-0000001"
    assert [w.split(":")[0] for w in warnings] == [
        "skipping checkpoint step-0000004",
        "skipping checkpoint step-0000003",
    ]
    assert all("marked bad" in w for w in warnings)
    _save(run, 5, 5.0)  # a good one again: the old good one may go now
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step-0000004", "step-0000005"]


def test_non_finite_weights_are_detected_on_load(tmp_path) -> None:
    run = tmp_path / "run"
    _save(run, 1, 1.0)
    bad = _save(run, 2, float("nan"))
    warnings: list[str] = []
    assert ckpt_io.latest_checkpoint(run, warn=warnings.append).name == "step-0000001"
    assert "non-finite" in warnings[0]
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt_io.load_weights(bad, "ema")


# --------------------------------------------------------------------------- disk and roots


def test_full_disk_is_a_checkpoint_error_and_keeps_earlier_ones(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    first = _save(run, 1, 1.0)

    def no_space(tensors, filename, metadata=None):  # save_safetensors's signature
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # a partial write, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(ckpt_io, "save_safetensors", no_space)
    sd = {"w": torch.zeros(1024, 256)}  # 1 MiB
    with pytest.raises(CheckpointError) as e:
        ckpt_io.save_checkpoint(run, 2, {"model": sd, "ema": sd}, {}, {})
    msg = _one_line(e)
    assert "no space left" in msg and str(run / "checkpoints") in msg and "2.0 MiB" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000001"]
    ckpt_io.verify_checkpoint(first)


def test_roots_that_are_files_or_under_files_are_clean_errors(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"{blocker} is a file"):
        ensure_writable_dir(blocker, "runs folder")
    with pytest.raises(ConfigError, match=f"sits under {blocker}, which is a file"):
        ckpt_io.remove_stale_temporaries(blocker / "run")
    with pytest.raises(ConfigError, match="sits under"):
        _save(blocker / "run", 1, 1.0)
    with pytest.raises(ConfigError, match="samples folder"):
        claim_folder(blocker / "samples" / "x", {"a": 1})
    # the CLI: Error line naming the path, no traceback
    r = runner.invoke(
        app,
        ["import", "official", "--stage1", str(tmp_path / "s1.ckpt"), "--out", "o"]
        + ["--runs", str(blocker / "runs")],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "Error:" in r.output and str(blocker) in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_root_is_a_clean_error(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="read-only"):
            ckpt_io.remove_stale_temporaries(ro / "run")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- samples folders


def test_claim_removes_only_our_stale_temporaries(tmp_path) -> None:
    folder = tmp_path / "samples"
    claim_folder(folder, {"a": 1})
    dead, alive = dead_pid(), os.getpid()
    (folder / "latents").mkdir()
    stale = [
        folder / f".000033.png.{dead}.tmp",
        folder / f".samples.npz.{dead}.0a1b2c3d.tmp",
        folder / "latents" / f".000033.npy.{dead}.tmp",
        folder / f".tmp-protocol.json.{dead}",
    ]
    kept = [
        folder / f".000034.png.{alive}.tmp",  # a live writer's file
        folder / "notes.txt",
        folder / ".000033.png.tmp",  # not our pattern
        folder / "latents" / "000001.npy",
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    claim_folder(folder, {"a": 1})
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


def test_sample_out_with_foreign_content_is_refused_and_untouched(stack, tmp_path) -> None:
    out = tmp_path / "entry"
    (out / "latents" / "pack").mkdir(parents=True)
    (out / "latents" / "pack" / "mean").write_bytes(b"packed latents of a cache entry")
    with pytest.raises(ConfigError, match="did not write"):
        run_sample(_settings(stack, run="dit-tiny", num=2, steps=2, out=str(out)))
    assert (out / "latents" / "pack" / "mean").read_bytes() == b"packed latents of a cache entry"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_sample(_settings(stack, run="dit-tiny", num=2, steps=2, out=str(empty)))
    assert res.num == 2 and (empty / "samples.npz").is_file()
    # rerunning into its own folder is fine (the settings file is the marker)
    run_sample(_settings(stack, run="dit-tiny", num=2, steps=2, out=str(empty)))


def _sample_cli(stack: dict[str, str], run: str, out: Path) -> object:
    return runner.invoke(
        app,
        ["sample", "-r", run, "-n", "2", "--steps", "2", "--runs", stack["runs"]]
        + ["--out", str(out), "--device", "cpu"],
    )


def test_sample_refuses_corrupt_weights_naming_the_file(stack, tmp_path) -> None:
    ckpt = make_dit_run(stack["runs"], "dit-corrupt", seed=1)
    path = ckpt / "ema.safetensors"
    _flip(path, path.stat().st_size - 400, 200)
    r = _sample_cli(stack, "dit-corrupt", tmp_path / "out")
    assert r.exit_code == CheckpointError.exit_code, r.output
    assert "Traceback" not in r.output and str(path) in r.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_sample_with_another_sizes_weights_is_one_line(stack, tmp_path) -> None:
    from repackctl.models.dit import DiTConfig
    from repackctl.models.variants import build_from_config, tiny

    ckpt = make_dit_run(stack["runs"], "dit-wrong-size", seed=2)
    cfg = tiny(in_channels=LATENT[0], input_size=LATENT[1], num_classes=10).config.to_dict()
    other = build_from_config(DiTConfig.from_dict(cfg | {"hidden_size": 128, "num_heads": 2}))
    extra = json.loads((ckpt / "state.json").read_text())["extra"]
    sd = other.state_dict()
    ckpt_io.save_checkpoint(ckpt.parent.parent, 5, {"model": sd, "ema": sd}, {}, {"extra": extra})
    r = _sample_cli(stack, "dit-wrong-size", tmp_path / "out")
    assert r.exit_code == CheckpointError.exit_code, r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "Traceback" not in r.output
    assert "width 128 in the weights, 64 recorded" in " ".join(r.output.split())
    assert len(r.output.splitlines()) <= 6


def test_pack_latent_stats_file_is_validated(tmp_path) -> None:
    from repackctl.pack.load import LATENT_STATS, read_latent_stats

    (tmp_path / LATENT_STATS).write_text(json.dumps({"mean": "x", "std": [1.0]}))
    with pytest.raises(CheckpointError) as e:
        read_latent_stats(tmp_path)
    assert str(tmp_path / LATENT_STATS) in _one_line(e) and "mean" in e.value.message
    (tmp_path / LATENT_STATS).write_text(json.dumps({"mean": [0.5], "std": [2.0], "n": 3}))
    assert read_latent_stats(tmp_path)["std"] == [2.0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
