"""`repackctl train dit`: DiT + REPA on packed latents from a real cache entry.

The cache entry comes from the real pipeline at toy size: `repackctl extract` (the fast `patchpix`
plugin encoder, 32 px, 4×4 tokens of width 64) → `repackctl pack train` (4 steps, d = 4) →
`repackctl pack encode` (latents + exact channel stats).
Model math (variants, adaLN-Zero, RoPE, transport, REPA loss) is tested in test_models.py /
test_transport.py; here: the command, its files, REPA in the logs, errors, kill/resume,
two processes, accumulation and the plugin model.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from support.caches import shared_packed_cache
from support.launch import start_two
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.errors import ConfigError
from repackctl.train import latest_checkpoint, load_weights, read_state

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
N = 32
TINY = ["--steps", "24", "-b", "8", "--log-every", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> Path:
    return shared_packed_cache(tmp_path_factory, tmp_path_factory.mktemp("dit") / "cache", N)


@pytest.fixture
def cache(base_cache, tmp_path, monkeypatch) -> Path:
    """A private copy of the cache (tests may damage it), set as REPACKCTL_CACHE."""
    root = tmp_path / "cache"
    shutil.copytree(base_cache, root)
    monkeypatch.setenv("REPACKCTL_CACHE", str(root))
    return root


# tiny matrices: one thread is faster than two on a loaded 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _env(tmp_path: Path) -> dict[str, str]:
    env = subprocess_env(tmp_path)
    env["REPACKCTL_CACHE"] = str(tmp_path / "cache")
    return env


def test_train_dit_writes_every_file_and_repa_aligns(cache, tmp_path):
    args = ["train", "dit", "--size", "tiny", *TINY, "--name", "dit-tiny"]
    res = runner.invoke(app, [*args, "--image-every", "12", "--ckpt-every", "12", "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "dit-tiny"
    for f in ("config.json", "metrics.jsonl", "curves.png", "tb", "images/step-0000012.png"):
        assert (run / f).exists(), f
    assert (run / "images" / "step-0000024.png").stat().st_size > 0
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step-0000024"
    assert (ckpt / "projector.safetensors").is_file()  # the REPA projector trains and resumes
    extra = read_state(ckpt)["extra"]
    assert extra["stage"] == "dit" and extra["model_id"] == "tiny"
    assert extra["latent_shape"] == [4, 4, 4] and extra["num_classes"] == 10
    assert extra["repa"]["depth"] == 1 and extra["repa"]["weight"] == 0.5
    assert extra["cache"]["features"].startswith("patchpix--")
    assert extra["pack"]["pack_id"] == extra["cache"]["latents"]
    stats = DatasetEntry.open(str(cache), extra["cache"]["entry"]).latents(
        extra["cache"]["latents"]
    )
    assert extra["latent_stats"]["mean"] == stats.attrs["stats"]["mean"]  # the exact stats

    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(4, 25, 4))
    repa = [r["loss/repa"] for r in rows]
    assert all(-1.0 <= v <= 1.0 for v in repa)
    assert repa[-1] < repa[0] - 0.1  # the projected hidden state aligns with the tokens

    from repackctl.dit.load import load_dit

    handle = load_dit(run)
    assert not handle.model.training and handle.checkpoint == ckpt
    ema = load_weights(ckpt, "ema")
    assert all(torch.equal(handle.model.state_dict()[k], v) for k, v in ema.items())
    x = torch.zeros(2, 4, 4, 4)
    v = handle.model(x, torch.full((2,), 0.5), torch.tensor([0, 10]))  # 10 = null class
    assert v.shape == x.shape and torch.isfinite(v).all()

    # --depth / --width / --heads: a custom small model, rebuilt as such for sampling
    res = runner.invoke(
        app,
        [*args[:-1], "dit-deep", "--depth", "4", "--width", "32", "--heads", "2", "--repa-depth",
         "2", "--steps", "4", "--ckpt-every", "4", "--image-every", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    deep = load_dit(tmp_path / "runs" / "dit-deep")
    assert len(deep.model.blocks) == 4 and deep.model.config.hidden_size == 32
    assert (
        read_state(latest_checkpoint(tmp_path / "runs" / "dit-deep"))["extra"]["repa"]["depth"] == 2
    )

    # --show-config names the preset's origin; the paper preset sets the official recipe
    shown = runner.invoke(app, ["train", "dit", "--preset", "paper", "--show-config"])
    assert shown.exit_code == 0, shown.output
    assert "dit.size" in shown.output and "'xl'" in shown.output
    assert "preset paper" in shown.output
    lr_line = [ln for ln in shown.output.splitlines() if ln.startswith("dit.lr ")]
    assert "0.0002" in lr_line[0]


def test_missing_inputs_name_the_command_to_run(cache, tmp_path):
    entry = list_entries(str(cache))[0]
    feats = cache / entry / "features"
    shutil.rmtree(feats)
    res = runner.invoke(app, ["train", "dit", *TINY])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert "repackctl extract --encoder patchpix --data builtin --resolution 32" in res.output
    assert f"-n {N}" in res.output
    # without REPA the same latents train fine
    ok = runner.invoke(
        app, ["train", "dit", *TINY, "--steps", "2", "--repa-weight", "0", "--name", "dit"]
    )
    assert ok.exit_code == 0, ok.output

    # --pack-run naming a run of another stage (here the DiT just trained): named as such, not
    # as a pack run whose latents are still to be encoded
    res = runner.invoke(app, ["train", "dit", *TINY, "--pack-run", "dit", "--name", "d2"])
    out = " ".join(res.output.split())
    assert res.exit_code == ConfigError.exit_code and "Traceback" not in out, out
    assert "--pack-run dit is a dit run, not a pack run" in out and "pack encode" not in out

    shutil.rmtree(cache / entry / "latents")
    res = runner.invoke(app, ["train", "dit", *TINY])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "repackctl pack encode" in res.output


def test_chunk_blocks_and_in_memory_read_the_same_batch(cache):
    from repackctl.dit.task import build_task
    from repackctl.settings import resolve_settings

    batches = []
    for mode in (True, False):
        flags = {"dit.in_memory": mode, "dit.latent_sampling": "sample"}
        task, config = build_task(resolve_settings(flags=flags).settings)
        assert task.data.in_memory is mode
        assert config.block == (1 if mode else 8)  # chunk-aligned blocks from the Zarr chunks
        batches.append(task.get_batch(np.array([3, 17, 4, 30, 3]), 5, None))
    a, b = batches
    assert a.keys() == b.keys() == {"x", "y", "flip", "tokens", "t", "noise", "drop"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["noise"][0], a["noise"][4])  # a repeated index gets fresh draws
    assert a["tokens"].shape == (5, 16, 64)


def test_gradient_accumulation_equals_the_larger_batch(cache, tmp_path):
    def run(name: str, accum: int) -> dict[str, torch.Tensor]:
        args = ["train", "dit", *TINY, "--steps", "4", "--name", name, "--grad-accum", str(accum)]
        res = runner.invoke(app, [*args, "--lr", "1e-3"])
        assert res.exit_code == 0, res.output
        return load_weights(latest_checkpoint(tmp_path / "runs" / name), "model")

    one, two = run("b8", 1), run("b4x2", 2)
    assert not torch.equal(
        one["final_layer.linear.weight"], torch.zeros_like(one["final_layer.linear.weight"])
    )
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-6)


def test_plugin_model_trains_a_step(cache, tmp_path):
    res = runner.invoke(app, ["train", "dit", *TINY, "--model", "uvit-tiny", "--steps", "2"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "dit-uvit-tiny"
    extra = read_state(latest_checkpoint(run))["extra"]
    assert extra["model_id"] == "uvit-tiny" and extra["repa"]["depth"] == 1

    from repackctl.dit.load import load_dit

    handle = load_dit(run)
    assert type(handle.model).__name__ == "UViTDiT"
    assert any(k.startswith("skip_linears.") for k in handle.model.state_dict())


# --------------------------------------------------------------------------- real processes


def _kill_after_first_checkpoint(proc: subprocess.Popen, run: Path, report: dict) -> None:
    deadline = time.monotonic() + 120
    while latest_checkpoint(run) is None and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    report["running"] = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(cache, tmp_path):
    args = ["train", "dit", "--steps", "40", "-b", "8", "--ckpt-every", "20", "--log-every", "10"]
    args += ["--device", "cpu", "--image-every", "0"]
    cmd = [sys.executable, "-m", "repackctl", *args, "--name", "killed"]
    env = _env(tmp_path)
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    report: dict = {}
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(proc, run, report))
    killer.start()
    try:
        # meanwhile, the uninterrupted reference run in this process (one thread, CPU fp32)
        ref = runner.invoke(app, [*args, "--name", "straight"])
        assert ref.exit_code == 0, ref.output
    finally:
        killer.join(timeout=150)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert report.get("running"), proc.stderr.read().decode()[-2000:]
    killed_at = read_state(latest_checkpoint(run))["step"]
    assert killed_at < 40

    # the rerun in this process (one thread, as the killed one): the kill is the real process,
    # the rerun only reads what it left
    done = runner.invoke(app, [*args, "--name", "killed"])
    assert done.exit_code == 0, done.output
    assert f"resumed at {killed_at}" in done.output
    a = latest_checkpoint(run)
    b = latest_checkpoint(tmp_path / "runs" / "straight")
    assert a.name == b.name == "step-0000040"
    for name in ("model", "ema", "projector"):
        wa, wb = load_weights(a, name), load_weights(b, name)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    steps = [r["step"] for r in _metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 40


DUMP_SCRIPT = """
import os, sys
import torch
from safetensors.torch import save_file
from repackctl.settings import resolve_settings
from repackctl.train import train
from repackctl.dit.run import build_task
from repackctl.train.sharding import full


def main(out, name, parallel="ddp", accum="1"):
    torch.set_num_threads(1)
    flags = {"device": "cpu", "dit.steps": 6, "dit.global_batch": 8, "dit.log_every": 3,
             "dit.lr": 1e-3, "dit.name": name, "dit.image_every": 0,
             "dit.parallel": parallel, "dit.grad_accum": int(accum)}
    task, config = build_task(resolve_settings(flags=flags).settings)
    train(task, config)
    # full() gathers FSDP shards (a collective: every process dumps)
    state = {f"{m}.{k}": full(v).detach().clone() for m, mod in task.modules.items()
             for k, v in mod.state_dict().items()}
    rank = os.environ.get("RANK", "0")
    save_file(state, os.path.join(str(out), f"{name}-rank{rank}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
"""


@pytest.mark.slow
def test_fsdp_matches_ddp_and_its_checkpoint_resumes_on_one_process(cache, tmp_path):
    """2 processes x 2 micro-batches with FSDP2 (each block sharded) against the same with DDP,
    and DDP against one process x 4 micro-batches of the same global batch.

    Not bit-identical: FSDP reduce-scatters flat shards where DDP all-reduces buckets, and AdamW
    runs on shards (same elementwise math, but the fp32 sums are grouped differently), so the
    weights after 6 steps agree to float rounding, asserted at atol 1e-6.
    """
    script = tmp_path / "dump_dit.py"
    script.write_text(DUMP_SCRIPT)
    env = _env(tmp_path)
    jobs = {
        mode: start_two([str(script), str(tmp_path), mode, mode, "2"], env)
        for mode in ("ddp", "fsdp")
    }
    try:  # meanwhile, the 1-process reference with the same global batch, in this process
        namespace: dict = {"__name__": "dump_dit"}
        exec(compile(DUMP_SCRIPT, "dump_dit.py", "exec"), namespace)
        namespace["main"](tmp_path, "one", "ddp", "4")
    finally:
        for job in jobs.values():
            code, _, err = job.wait(timeout=240)
            assert code == 0, err[-3000:]

    # DDP against one process: same samples and draws, only the order of float sums differs
    r0, r1 = load_weights(tmp_path, "ddp-rank0"), load_weights(tmp_path, "ddp-rank1")
    single = load_weights(tmp_path, "one-rank0")
    assert r0.keys() == single.keys() and any(k.startswith("projector.") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # the processes stay in sync
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5)
    assert read_state(latest_checkpoint(tmp_path / "runs" / "ddp"))["world_size"] == 2
    saved = load_weights(latest_checkpoint(tmp_path / "runs" / "ddp"), "model")
    assert all(torch.equal(saved[k], r0[f"model.{k}"]) for k in saved)
    header = json.loads((tmp_path / "runs" / "fsdp" / "header.json").read_text())
    assert header["parallel"] == "fsdp" and header["fsdp_modules"] == ["model", "projector"]
    a = latest_checkpoint(tmp_path / "runs" / "ddp")
    b = latest_checkpoint(tmp_path / "runs" / "fsdp")
    assert a.name == b.name == "step-0000006"
    for name in ("model", "ema", "projector"):
        wa, wb = load_weights(a, name), load_weights(b, name)
        assert wa.keys() == wb.keys(), name
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    dumped = load_weights(tmp_path, "fsdp-rank1")  # what rank 1 holds, gathered: the saved file
    saved = load_weights(b, "model")
    assert all(torch.equal(saved[k], dumped[f"model.{k}"]) for k in saved)

    # the FSDP checkpoint (full tensors, one file each) resumes in one plain process
    more = ["train", "dit", "--name", "fsdp", "--steps", "8", "--parallel", "ddp", "-b", "8"]
    more += ["--lr", "1e-3", "--grad-accum", "2", "--image-every", "0", "--device", "cpu"]
    res = runner.invoke(app, more)
    assert res.exit_code == 0, res.output
    assert "resuming a 2-process run on 1" in res.output and "(step 6)" in res.output
    assert "new lr" not in res.output  # the optimizer state came back as it was saved
    assert latest_checkpoint(tmp_path / "runs" / "fsdp").name == "step-0000008"


def test_resume_keeps_the_stored_settings_and_refuses_breaking_changes(cache, tmp_path):
    """Resuming with only --steps continues at the run's batch and lr; a new lr is refused."""
    name = ["--name", "keep", "--device", "cpu", "--log-every", "1", "--image-every", "0"]
    first = runner.invoke(app, ["train", "dit", *name, "--steps", "2", "-b", "4", "--lr", "1e-3"])
    assert first.exit_code == 0, first.output
    more = runner.invoke(app, ["train", "dit", *name, "--steps", "3"])
    assert more.exit_code == 0, more.output
    assert "dit.steps: 2 → 3" in more.output
    config = json.loads((tmp_path / "runs" / "keep" / "config.json").read_text())
    values = config["extra"]["settings"]["values"]["dit"]
    assert (values["global_batch"], values["lr"], values["steps"]) == (4, 1e-3, 3)
    assert (config["global_batch"], config["lr"]) == (4, 1e-3)

    refused = runner.invoke(app, ["train", "dit", *name, "--steps", "4", "--lr", "2e-4"])
    assert (
        refused.exit_code == 2 and "dit.lr" in refused.output and "--allow-change" in refused.output
    )
    assert "Traceback" not in refused.output
    assert read_state(latest_checkpoint(tmp_path / "runs" / "keep"))["step"] == 3

    allowed = ["--steps", "4", "--lr", "2e-4", "--allow-change", "lr"]
    ok = runner.invoke(app, ["train", "dit", *name, *allowed])
    assert ok.exit_code == 0, ok.output
    history = (tmp_path / "runs" / "keep" / "config_history.jsonl").read_text()
    assert "dit.lr" in history and "replaced" in history


def test_a_short_run_ends_with_a_grid_and_tensorboard_gets_pictures_and_config(cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["train", "dit", "--name", "short", "--steps", "2", "-b", "4", "--device", "cpu"]
    res = runner.invoke(app, [*args, "--image-every", "500", "--log-every", "1"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "short"
    assert (run / "images" / "step-0000002.png").is_file()  # image_every 500 > 2 steps
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "images" in tags["images"]
    assert any("config" in t for t in tags["tensors"])


def test_an_option_the_plugin_model_does_not_take_is_an_error(monkeypatch):
    from repackctl.dit import task as dit_task
    from repackctl.errors import ConfigError
    from repackctl.models.variants import tiny

    def plain(*, in_channels: int, input_size: int, num_classes: int):  # no switches at all
        return tiny(in_channels=in_channels, input_size=input_size, num_classes=num_classes)

    class Models:
        def get(self, ref):
            return plain

    monkeypatch.setattr(dit_task, "registry", lambda kind: Models())
    sizes = {"in_channels": 4, "input_size": 4, "num_classes": 3}
    assert dit_task.build_model("plain", **sizes, qk_norm=False, class_dropout=0.1) is not None
    with pytest.raises(ConfigError, match="qk_norm"):
        dit_task.build_model("plain", **sizes, qk_norm=True)


def test_a_library_run_resumes_through_the_settings_gate(cache, tmp_path):
    """The demo's path (``Pipeline.dit_train``) stores its settings record, so resuming with
    another lr is refused as on the command line; a run an older version made without a record
    is compared with the train settings its config.json keeps. A refused resume writes nothing."""
    from repackctl.errors import ResumeConflict
    from repackctl.pipeline import Pipeline

    out = tmp_path / "pipe"
    out.mkdir()
    shutil.copytree(cache, out / "cache")
    pipe = Pipeline(out, seed=0, log=lambda s: None)
    flags = {"size": "tiny", "global_batch": 4, "lr": 1e-3, "image_every": 0, "log_every": 1}
    pipe.dit_train("run", 2, **flags)
    config_path = out / "run" / "config.json"
    assert config_path.is_file() and "settings" in json.loads(config_path.read_text())["extra"]
    with pytest.raises(ResumeConflict, match="dit.lr"):
        pipe.dit_train("run", 3, **(flags | {"lr": 2e-4}))
    assert read_state(latest_checkpoint(out / "run"))["step"] == 2

    config = json.loads(config_path.read_text())
    del config["extra"]["settings"]  # as an older version wrote it
    config.pop("config_sha256")
    config_path.write_text(json.dumps(config))
    with pytest.raises(ResumeConflict, match="dit.global_batch"):
        pipe.dit_train("run", 3, **(flags | {"global_batch": 8}))
    assert read_state(latest_checkpoint(out / "run"))["step"] == 2
    # the same recipe resumes, and an lr not given again stays as the run had it
    pipe.dit_train("run", 3, **{k: v for k, v in flags.items() if k != "lr"})
    assert read_state(latest_checkpoint(out / "run"))["step"] == 3
    values = json.loads(config_path.read_text())["extra"]["settings"]["values"]["dit"]
    assert (values["lr"], values["global_batch"]) == (1e-3, 4)


def test_the_launchers_precision_is_kept_on_resume_or_refused(cache, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` chooses the precision outside repackctl's
    settings: a resume without it went on in fp32 (and one with it turned an fp32 run into
    bf16) with only ``steps: 2 → 4`` printed. The run records it; a run that did not is
    refused, naming the precisions, and nothing is written."""
    name = ["--name", "amp", "--device", "cpu", "--log-every", "1", "--image-every", "0", "-b", "4"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert runner.invoke(app, ["train", "dit", *name, "--steps", "2"]).exit_code == 0
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    more = runner.invoke(app, ["train", "dit", *name, "--steps", "3"])
    assert more.exit_code == 0, more.output
    run = tmp_path / "runs" / "amp"
    assert read_state(latest_checkpoint(run))["config"]["precision"] == "bf16"
    # a run whose record does not hold the launcher's choice (as before): refused
    config = json.loads((run / "config.json").read_text())
    config["extra"]["settings"]["values"]["precision"] = "fp32"
    config["extra"]["settings"]["sources"]["precision"] = "default"
    config.pop("config_sha256")  # as older versions wrote it, without its own sha256
    (run / "config.json").write_text(json.dumps(config))
    refused = runner.invoke(app, ["train", "dit", *name, "--steps", "4"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "trained in bf16" in refused.output and "go on in fp32" in refused.output
    assert "--precision bf16" in refused.output
    assert read_state(latest_checkpoint(run))["step"] == 3


def test_a_resume_under_another_launcher_precision_is_refused(cache, tmp_path, monkeypatch):
    """A run whose precision `accelerate launch --mixed_precision bf16` chose, resumed under
    `--mixed_precision fp16`, went on in bf16 without a word: refused, naming both, nothing
    written; under the same launcher setting (or none) it goes on."""
    name = ["--name", "amp2", "--device", "cpu", "--log-every", "1", "--image-every", "0"]
    name += ["-b", "4"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert runner.invoke(app, ["train", "dit", *name, "--steps", "2"]).exit_code == 0
    run = tmp_path / "runs" / "amp2"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    refused = runner.invoke(app, ["train", "dit", *name, "--steps", "3"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "trained in bf16" in refused.output and "asks for fp16" in refused.output
    assert "--mixed_precision bf16" in refused.output
    assert read_state(latest_checkpoint(run))["step"] == 2
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    ok = runner.invoke(app, ["train", "dit", *name, "--steps", "3"])
    assert ok.exit_code == 0, ok.output
    assert read_state(latest_checkpoint(run))["config"]["precision"] == "bf16"
    # a plain `accelerate launch` sets "no": nothing asked, the run goes on in bf16
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    ok = runner.invoke(app, ["train", "dit", *name, "--steps", "4"])
    assert ok.exit_code == 0, ok.output
    assert read_state(latest_checkpoint(run))["config"]["precision"] == "bf16"
    # after two resumes the kept value still knows the launcher chose it
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    again = runner.invoke(app, ["train", "dit", *name, "--steps", "5"])
    assert again.exit_code != 0 and "asks for fp16" in again.output, again.output
    assert read_state(latest_checkpoint(run))["step"] == 4


def test_an_allowed_change_enters_the_history_only_when_the_run_goes_on(cache, tmp_path):
    name = [
        "--name",
        "hist",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--image-every",
        "0",
        "-b",
        "4",
    ]
    assert runner.invoke(app, ["train", "dit", *name, "--steps", "2"]).exit_code == 0
    history = tmp_path / "runs" / "hist" / "config_history.jsonl"
    # nothing to train (already at step 2): the allowed lr never took effect, so no record of it
    shown = runner.invoke(app, ["train", "dit", *name, "--steps", "2", "--lr", "7e-4",
                                "--allow-change", "lr"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert not history.exists() or "dit.lr" not in history.read_text()
    # a run started when a default was another (EMA 0.99): kept as it trained (train dit's own
    # rule), which must not lose the allowed lr change on the way
    config_path = tmp_path / "runs" / "hist" / "config.json"
    config = json.loads(config_path.read_text())
    config["extra"]["settings"]["values"]["dit"]["ema_decay"] = 0.99
    config.pop("config_sha256")  # as that version wrote it
    config_path.write_text(json.dumps(config))
    ok = runner.invoke(app, ["train", "dit", *name, "--steps", "3", "--lr", "7e-4",
                             "--allow-change", "lr"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [c for line in lines for c in line.get("changes", [])] == [["dit.lr", 2e-4, 7e-4]]
    assert "dit.ema_decay: kept 0.99" in ok.output
    record = json.loads((tmp_path / "runs" / "hist" / "config.json").read_text())
    assert "allowed" not in record["extra"]["settings"]


@pytest.mark.parametrize("command", [["train", "dit"], ["train", "t2i"]])
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(
    cache, tmp_path, command
):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = runner.invoke(app, [*command, "--name", "nogpu", "--device", "cuda", "--steps", "2"])
    assert res.exit_code == 2 and "no CUDA GPU is available" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "runs" / "nogpu").exists()
