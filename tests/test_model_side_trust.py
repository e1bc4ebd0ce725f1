"""Answers that could be silently wrong are refused instead: `runs rm` of a folder repackctl did
not write, a corrupt checkpoint shown as complete, `--arch`/`--patch` ignored at `--size tiny`,
a cosine run resumed with other steps, the hint after a re-encoded pack, seeds folded onto
32 bits, the weights flag named by the offline encoder hint.

One real stack is built through the CLI for the module (patchpix extract, 32 px → a 4-step pack
run with checkpoints at 2 and 4, the step-2 checkpoint encoded → a 2-step tiny DiT run); tests
that change it work on a private copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_torch_thread, use_sandbox
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError, WeightsError
from repackctl.settings import resolve_settings

runner = CliRunner()
CPU = ["--device", "cpu"]  # REPACKCTL_NUM_WORKERS=0 comes from the sandbox
DIT = ["train", "dit", "--size", "tiny", "--global-batch", "8", "--image-every", "0"]
DIT += ["--repa-weight", "0", "--log-every", "1", "--ckpt-every", "2", "--device", "cpu"]


def _flags(root: Path) -> list[str]:
    return ["--cache", str(root / "cache"), "--runs", str(root / "runs")]


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return res


def _refused(code: int, args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == code, res.output
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    return res


# tiny matrices: one thread is faster than two on a loaded 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ with patchpix features and the step-2 latents of pack run pk; runs/pk, runs/d."""
    root = tmp_path_factory.mktemp("trust")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, root)  # no REPACKCTL_* settings of the caller
        _build(root)
    return root


def _build(root: Path) -> None:
    ext = ["extract", "--encoder", "patchpix", "--resolution", "32", "--num", "32"]
    _ok([*ext, "--chunk", "8", "--shard", "16", *_flags(root)[:2], *CPU])
    pack = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "--num", "32"]
    pack += ["--steps", "4", "--batch-size", "8", "--ch", "8", "--latent-channels", "4"]
    pack += ["--ckpt-every", "2", "--keep-last", "0", "--image-every", "0", "--name", "pk"]
    _ok([*pack, *_flags(root), *CPU])
    step2 = root / "runs" / "pk" / "checkpoints" / "step-0000002"
    _ok(["pack", "encode", "--run", str(step2), *_flags(root), *CPU])
    _ok([*DIT, "--steps", "2", "--name", "d", *_flags(root)])


@pytest.fixture
def roots(base, tmp_path) -> Path:
    """A private copy of the module's cache and runs."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def _state(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())


# 1 ------------------------------------------------------------------------------------------


def test_runs_rm_refuses_folders_repackctl_did_not_write(roots):
    runs = roots / "runs"
    bert = runs / "bert-base"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    (bert / "pytorch_model.bin").write_text("w")
    junk = runs / "junk" / "checkpoints" / "step-0000001"  # step folder without repackctl state
    junk.mkdir(parents=True)
    (junk / "notes.txt").write_text("mine")
    listing = json.loads(_ok(["runs", "ls", "--json", "--runs", str(runs)]).output)
    assert sorted(r["name"] for r in listing["runs"]) == ["d", "pk"]  # the real runs only
    for name in ("bert-base", "junk"):
        res = _refused(7, ["runs", "rm", name, "--yes", "--runs", str(runs)])
        assert "not a repackctl run" in res.output and "pk (pack" in res.output
    assert (bert / "pytorch_model.bin").read_text() == "w"
    assert (junk / "notes.txt").read_text() == "mine"
    _ok(["runs", "rm", "d", "--yes", "--runs", str(runs)])  # a real run still goes
    assert not (runs / "d").exists()


# 2 ------------------------------------------------------------------------------------------


def test_runs_info_reports_a_corrupt_checkpoint(roots):
    runs = roots / "runs"
    ema = runs / "pk" / "checkpoints" / "step-0000004" / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    ema.write_bytes(bytes(data))
    info = json.loads(_ok(["runs", "info", "pk", "--json", "--runs", str(runs)]).output)
    by_name = {c["name"]: c for c in info["checkpoints"]}
    assert by_name["step-0000004"]["complete"] is False
    assert by_name["step-0000004"]["problem"] == "corrupt (ema.safetensors)"
    assert by_name["step-0000002"]["complete"] is True and info["step"] == 2
    text = _ok(["runs", "info", "pk", "--runs", str(runs)]).output
    assert "corrupt (ema.safetensors)" in text
    # `runs ls` stays fast: it checks names and sizes (this file kept its size), not checksums
    listing = json.loads(_ok(["runs", "ls", "--json", "--runs", str(runs)]).output)
    pk = next(r for r in listing["runs"] if r["name"] == "pk")
    assert (pk["step"], pk["checkpoints"], pk["checksums_verified"]) == (4, 2, False)


# 3 ------------------------------------------------------------------------------------------


def test_tiny_refuses_an_arch_or_patch_it_does_not_have_and_builds_the_patch_it_has(roots):
    from repackctl.dit.task import model_id_of

    for flag, value in (("--arch", "sit"), ("--patch", "4")):
        args = [*DIT, "--steps", "1", "--name", "t", flag, value, *_flags(roots)]
        res = _refused(ConfigError.exit_code, args)
        assert f"{flag} {value}" in res.output and "--size tiny" in res.output
        assert not (roots / "runs" / "t").exists()

    def model_of(**dit) -> str:
        flags = {f"dit.{k}": v for k, v in dit.items()}
        return model_id_of(resolve_settings(None, flags, environ={}).settings.dit)

    assert model_of(size="tiny", arch="lightningdit", patch=1) == "tiny"  # what tiny is
    assert model_of(size="tiny", preset="repa") == "tiny"  # a preset's sit/2 is not a flag
    assert model_of(size="s", arch="sit", patch=4) == "sit-s-4"

    def tiny_patch_of(**dit) -> int:
        from repackctl.dit.task import build_model, build_spec

        flags = {f"dit.{k}": v for k, v in dit.items()}
        resolved = resolve_settings(None, flags, environ={})
        settings, sources = resolved.settings, resolved.sources
        kwargs = build_spec(settings, model_id_of(settings.dit, sources), sources).model_kwargs
        model = build_model("tiny", **kwargs, in_channels=4, input_size=8, num_classes=10)
        return model.config.patch_size

    assert tiny_patch_of(size="tiny", patch=2) == 2  # the tiny model has patch 2 too
    assert tiny_patch_of(size="tiny") == 1
    assert tiny_patch_of(size="tiny", preset="repa") == 1  # the preset's sit/2 is not asked
    # a --patch given with the preset's own value is asked for: it was built as patch 1 while
    # the run recorded dit.patch 2 (flag)
    assert tiny_patch_of(size="tiny", preset="repa", patch=2) == 2


# 4 ------------------------------------------------------------------------------------------


def test_more_steps_on_a_cosine_run_is_a_breaking_change(roots):
    from repackctl.errors import ResumeConflict
    from repackctl.settings.resume import reconcile

    name = ["--name", "c", *_flags(roots)]
    _ok([*DIT, "--steps", "2", "--schedule", "cosine", "--lr", "1e-3", *name])
    res = _refused(ConfigError.exit_code, ["train", "dit", "--steps", "3", *name])
    assert "dit.steps: 2 → 3" in res.output and "--allow-change steps" in res.output
    assert _state(roots / "runs" / "c", 2)["step"] == 2
    assert not (roots / "runs" / "c" / "checkpoints" / "step-0000003").exists()
    ok = _ok(["train", "dit", "--steps", "3", "--allow-change", "steps", *name])
    assert "(allowed by --allow-change)" in ok.output
    assert "dit.steps" in (roots / "runs" / "c" / "config_history.jsonl").read_text()

    def resume(schedule: str) -> list:
        """A run started with (schedule, 2 steps) resumed with only --steps 3 given."""
        given = {"dit.steps": "flag", "dit.schedule": "flag"}
        stored = {"values": {"dit": {"steps": 2, "schedule": schedule}}, "sources": given}
        now = {"values": {"dit": {"steps": 3, "schedule": schedule}}}
        return reconcile(stored, now | {"sources": {"dit.steps": "flag"}}, "dit", []).changes

    for schedule in ("constant", "warmup", "step"):  # the lr of done steps does not move
        assert resume(schedule) == [("dit.steps", 2, 3)]
    with pytest.raises(ResumeConflict, match="lr of the steps already done"):
        resume("cosine")


# 5 ------------------------------------------------------------------------------------------


def test_a_run_resumes_on_its_own_latents_after_a_newer_pack_encode(roots):
    """It was refused (exit 7) with a hint to pass its own latents and --allow-change: a run
    made before runs recorded their latents resumes on those of its checkpoint."""
    run = roots / "runs" / "d"
    old = _state(run, 2)["extra"]["cache"]["latents"]
    _ok(["pack", "encode", "--run", "pk", *_flags(roots), *CPU])  # step-4 latents: newer
    _ok(["train", "dit", "--name", "d", "--steps", "3", *_flags(roots)])
    assert _state(run, 3)["extra"]["cache"]["latents"] == old


# 6 ------------------------------------------------------------------------------------------


def test_seeds_outside_32_bits_are_refused(roots):
    from repackctl.sample.plan import index_seed

    for seed in ("4294967296", "-1"):
        args = ["sample", "--run", "d", "--num", "2", "--seed", seed, *_flags(roots)]
        args += ["--samples", str(roots / "samples")]
        res = _refused(ConfigError.exit_code, args)
        assert "seed" in res.output and "4294967295" in res.output
    assert not (roots / "samples").exists()
    top = resolve_settings(None, {"seed": 2**32 - 1}, environ={}).settings.seed
    assert index_seed(top, 0) != index_seed(0, 0)
    with pytest.raises(ConfigError, match="4294967295"):
        index_seed(2**32, 0)


# 7 ------------------------------------------------------------------------------------------


def test_offline_dinov2_hint_names_the_flag_of_each_command(monkeypatch):
    from repackctl.evaluate.generative import make_fd_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = resolve_settings(None, {"evaluate.fd_encoder": "dinov2"}, environ={}).settings
    with pytest.raises(WeightsError) as caught:
        make_fd_encoder(settings, 256, "cpu")
    hint = caught.value.hint or ""
    assert "--fd-weights FILE (evaluate" in hint and "--weights FILE (extract" in hint
