"""Loose ends a new user met walking through the README with the built-in data.

`runs rm` / `cache rm` with no answer on stdin (a script, CI, ``< /dev/null``), notes of
`evaluate recon|probe` printed twice, torch's deprecation warning about DDP's
``broadcast_buffers`` under a two-process `train dit`, the `cache verify --repair` hint that
must recreate exactly the damaged entry, and `sample --out` into a folder made from an older
checkpoint. One tiny stack (patchpix, 32 px, 2-step pack run, 2-step DiT) is shared.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env, use_sandbox
from support.caches import shared_tiny_dit_stack
from support.cli import cli_ok, cli_refused
from support.launch import start_two
from typer.testing import CliRunner

from repackctl.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CPU = ["--device", "cpu"]
ENTRY = "builtin-n16--train--32px"
MAIN = str(Path(__file__).resolve().parents[2] / "repackctl" / "__main__.py")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """cache/ (train + val split), runs/pk (pack, 2 steps), runs/dit (checkpoints 1 and 2)."""
    return shared_tiny_dit_stack(tmp_path_factory, tmp_path_factory.mktemp("walkthrough"), True)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Path:
    """The stack's cache and runs, samples under ``tmp_path``."""
    monkeypatch.setenv("REPACKCTL_CACHE", str(stack / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(stack / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    return stack


def _refused_on_eof(code: int, *args: str) -> str:
    """``repackctl ARGS`` with an empty stdin (EOF at the prompt): one Error: and a Hint:."""
    res = runner.invoke(app, list(args), input="")
    out = " ".join(res.output.split())
    assert res.exit_code == code, res.output
    assert "Error:" in out and "Hint:" in out and "Traceback" not in out, out
    return out


def test_rm_with_no_answer_on_stdin_is_refused_and_deletes_nothing(env):
    out = _refused_on_eof(2, "runs", "rm", "dit")
    assert "nothing was deleted" in out and "--yes" in out.split("Hint:")[1]
    assert "repackctl runs info dit" in out  # what would be deleted
    assert (env / "runs" / "dit" / "checkpoints").is_dir()
    out = _refused_on_eof(6, "cache", "rm", ENTRY, "--latents", "x")
    assert "no packed latents" in out  # a wrong group is still refused before asking
    out = _refused_on_eof(2, "cache", "rm", ENTRY)
    assert "nothing was deleted" in out and "--yes" in out.split("Hint:")[1]
    assert f"repackctl cache info {ENTRY}" in out
    assert (env / "cache" / ENTRY / "images").is_dir()


def test_recon_and_probe_print_each_note_once(env):
    out = cli_ok("evaluate", "recon", "--run", "pk", "--split", "train", *CPU)
    assert out.count("rFID skipped") == 1, out
    assert out.count("scoring on the training split") == 1, out
    out = cli_ok("evaluate", "probe", "--run", "pk", "--split", "train", "--epochs", "1", *CPU)
    assert out.count("scoring on the training split") == 1, out
    assert out.count("chance level") == 1, out  # added after the bar: printed by the CLI


def test_recon_and_probe_say_which_checkpoint_and_weights_they_scored(env):
    """Both score the pack run's newest checkpoint (EMA weights), which may not be the one a
    DiT's latents came from: the output named only the run, and probe-*.json held neither the
    checkpoint nor its epochs and seed (only its file name did, and only when not defaults)."""
    ckpt = env / "runs" / "pk" / "checkpoints" / "step-0000002"
    out = cli_ok("evaluate", "recon", "--run", "pk", "--split", "train", *CPU)
    assert "step-0000002 (EMA weights)" in out
    out = cli_ok("evaluate", "probe", "--run", "pk", "--split", "train", "--epochs", "1", *CPU)
    assert "pk step-0000002 (EMA weights), 1 epochs, seed 0" in out
    (report,) = ckpt.glob("probe-*.json")
    doc = json.loads(report.read_text())
    assert doc["checkpoint"] == str(ckpt.resolve()) or Path(doc["checkpoint"]) == ckpt
    assert (doc["epochs"], doc["seed"], doc["weights"]) == (1, 0, "ema") and doc["pack_id"]


@pytest.mark.slow
def test_two_process_train_shows_no_ddp_deprecation_warning(stack, tmp_path):
    """torch's FutureWarning about ``broadcast_buffers`` (nothing a user can act on) is not
    shown, nor DDP's warning that ``find_unused_parameters=True`` found no unused parameter
    (each process printed it, and DDP searched the autograd graph at every step for nothing):
    the built-in DiT declares that it uses every parameter. Training under DDP still works."""
    root = tmp_path / "two"
    shutil.copytree(stack / "cache", root / "cache")
    shutil.copytree(stack / "runs" / "pk", root / "runs" / "pk")
    args = ["train", "dit", "--pack-run", "pk", "--size", "tiny", "--depth", "2", "--steps", "1",
            "-b", "8", "--image-every", "0", "--name", "ddp", *CPU]  # fmt: skip
    code, _, stderr = start_two([MAIN, *args], subprocess_env(root)).wait(timeout=300)
    assert code == 0, stderr[-2000:]
    assert "broadcast_buffers" not in stderr and "FutureWarning" not in stderr, stderr[-2000:]
    assert "find_unused_parameters" not in stderr, stderr[-2000:]


def _damage_first_chunk(folder: Path) -> None:
    chunk = next(p for p in sorted(folder.rglob("*")) if p.is_file() and p.parent.name == "0")
    chunk.write_bytes(chunk.read_bytes()[:50])


def test_verify_repair_hint_recreates_exactly_the_damaged_entry(tmp_path, monkeypatch):
    use_sandbox(monkeypatch, tmp_path)
    made = ["extract", "-e", "builtin", "--split", "val", "--resolution", "32", "-n", "12",
            "--layer", "1", "--precision", "bf16", "--no-flips", *CPU]  # fmt: skip
    cli_ok(*made)
    entry = tmp_path / "cache" / "builtin-n12--val--32px"
    (fid,) = [p.name for p in (entry / "features").iterdir() if p.is_dir()]
    _damage_first_chunk(entry / "features" / fid / "tokens")
    out = cli_ok("cache", "verify", "--repair")
    cmd = out.split("now run")[1].split("`")[1]
    for flag in ("--split val", "--resolution 32", "-n 12", "--layer 1", "--precision bf16",
                 "--no-flips", "--encoder builtin"):  # fmt: skip
        assert flag in cmd, cmd
    cli_ok(*shlex.split(cmd)[1:], *CPU)  # rewrites the pending rows into the same group
    assert "ok" in cli_ok("cache", "verify")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == [entry.name]
    assert [p.name for p in (entry / "features").iterdir() if p.is_dir()] == [fid]
    _damage_first_chunk(entry / "images")  # the entry's own rows: the same command
    out = cli_ok("cache", "verify", "--repair")
    assert out.split("now run")[1].split("`")[1] == cmd, out


def test_sample_into_a_folder_of_an_older_checkpoint_names_that_checkpoint(env, tmp_path):
    out_dir = str(tmp_path / "mine")
    sample = ["sample", "-r", "dit", "-n", "2", "--steps", "2", "--out", out_dir, *CPU]
    cli_ok(*sample, "--checkpoint", "step-0000001")  # the run has trained on since
    out = cli_refused(2, *sample)
    hint = out.split("Hint:")[1]
    assert "--checkpoint step-0000001" in hint and "another --out" in hint, out
    cli_ok(*sample, "--checkpoint", "step-0000001")  # the hint's way: the folder is reused


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
