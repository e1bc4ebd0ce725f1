"""`train t2i` shuffles Zarr data within a window sized on its own rows, as `train dit` does.

``build_t2i_task`` took the window of the DiT's base task: sized on the latents alone (the
caption features, here ~136x the latents' bytes, left out), looked up in ``runs/dit-<model>``
(not the t2i run's folder when ``--name`` is not given), and its readers kept a buffer of 32
chunks whatever the window (every chunk read again and again once the window is larger). Now
the window is ``data.cached.shuffle_window`` of the captioned data and the t2i run folder:
the memory budget on latents + captions, the readers sized to two windows, a resumed run keeps
its recorded window (also one recorded before this), in-memory data keeps window 16 (its
sample-by-sample order is unchanged). ``tests/train/test_data_order.py`` tests the rule itself.

Real components: extract (48 images in chunks of 2: 24 blocks) → pack train → pack encode →
captions, and real tiny t2i runs through the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.ckpt_state import write_state
from support.cli import cli_ok

from repackctl.cache.store import list_entries
from repackctl.train import latest_checkpoint, read_state
from repackctl.train.sampler import auto_buffer_blocks

CPU = ["--device", "cpu"]
N, CHUNK = 48, 2
BLOCKS = N // CHUNK  # 24 > the old fixed 16
T2I = ["train", "t2i", "-b", "8", "--ckpt-every", "2", "--log-every", "2", "--image-every", "0"]
T2I += [*CPU]

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """cache/ (48 captioned images in 24 chunks, their latents) and runs/pk."""
    root = tmp_path_factory.mktemp("t2i-window")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPACKCTL_CACHE", str(root / "cache"))
        mp.setenv("REPACKCTL_RUNS", str(root / "runs"))
        mp.setenv("REPACKCTL_NUM_WORKERS", "0")
        src = ["--encoder", "patchpix", "--resolution", "32", "-n", str(N)]
        cli_ok("extract", *src, "--chunk", str(CHUNK), "--shard", "16", *CPU)
        pack = ["pack", "train", *src, "--steps", "2", "--batch-size", "8", "--ch", "8", "-c", "4"]
        cli_ok(*pack, "--in-memory", "--name", "pk", "--image-every", "0", *CPU)
        cli_ok("pack", "encode", "--run", "pk", *CPU)
        (entry,) = list_entries(str(root / "cache"))
        cli_ok("captions", "--entry", entry, "--max-length", "8", *CPU)
    return root


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    """A private copy of the stack; the built t2i tasks are kept in ``work.tasks``."""
    root = tmp_path / "w"
    shutil.copytree(stack, root)
    for name in ("cache", "runs", "samples"):
        monkeypatch.setenv(f"REPACKCTL_{name.upper()}", str(root / name))
    monkeypatch.setenv("REPACKCTL_NUM_WORKERS", "0")
    import repackctl.dit.t2i_run as t2i_run

    real, tasks = t2i_run.build_t2i_task, []

    def spy(*args, **kwargs):
        task, config = real(*args, **kwargs)
        tasks.append(task)
        return task, config

    monkeypatch.setattr(t2i_run, "build_t2i_task", spy)
    return root, tasks


def _config(run: Path) -> dict:
    return read_state(latest_checkpoint(run))["config"]


@pytest.mark.parametrize("memory_gb", [0.001, 1.0])
def test_zarr_window_is_sized_on_latents_and_captions(work, monkeypatch, memory_gb):
    root, tasks = work
    budget = ["--memory-gb", str(memory_gb)]  # the flag the Warning's hint names (train dit's)
    cli_ok(*T2I, "--steps", "2", "--no-in-memory", "--name", "t", *budget)
    (task,) = tasks
    data = task.data
    assert not data.in_memory and data.chunk == CHUNK and len(data) == N
    want = auto_buffer_blocks(N, CHUNK, data.row_bytes(), memory_gb, in_memory=False)
    config = _config(root / "runs" / "t")
    assert config["block"] == CHUNK and config["buffer_blocks"] == want
    # 1 MiB holds 7 blocks of captioned rows twice (the floor: 16), not the 24 latents-only
    assert want == (16 if memory_gb < 0.01 else BLOCKS)
    assert data.buffer_chunks == 2 * want  # every chunk read once per epoch (was 32)


def test_in_memory_data_keeps_its_window_and_order(work):
    root, tasks = work
    cli_ok(*T2I, "--steps", "2", "--name", "t")  # 1.6 MB of rows fit the default 4 GiB
    (task,) = tasks
    assert task.data.in_memory
    config = _config(root / "runs" / "t")
    assert config["block"] == 1 and config["buffer_blocks"] == 16  # as before the auto window


def test_a_resumed_run_keeps_its_recorded_window(work, monkeypatch):
    """Also a run started before this change (its record rewritten to a window the new rule
    would never give), and with the default run name (the DiT's lookup read runs/dit-…)."""
    root, _ = work
    monkeypatch.setenv("REPACKCTL_MEMORY_GB", "1.0")
    cli_ok(*T2I, "--steps", "2", "--no-in-memory")
    (run,) = (root / "runs").glob("t2i-*")
    assert not (root / "runs" / "dit-mmdit-tiny").exists()
    assert _config(run)["buffer_blocks"] == BLOCKS
    ckpt = latest_checkpoint(run)
    state = read_state(ckpt)
    state["config"]["buffer_blocks"] = 20  # as an older version recorded it
    write_state(ckpt / "state.json", state)
    monkeypatch.setenv("REPACKCTL_MEMORY_GB", "0.000001")  # the budget now gives 16
    cli_ok(*T2I, "--steps", "4", "--no-in-memory")
    config = _config(run)
    assert read_state(latest_checkpoint(run))["step"] == 4
    assert config["buffer_blocks"] == 20
