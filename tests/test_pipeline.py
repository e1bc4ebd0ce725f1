"""The shared pipeline runner's folder rule: a demo never writes into, or deletes from, a folder
it did not make; ``--fresh`` removes only what the demo writes."""

from __future__ import annotations

import json
import sys
import time

import pytest
import zarr
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError, RepackError
from repackctl.pipeline import MARKER, Pipeline, claim_folder

runner = CliRunner()


def test_a_folder_the_pipeline_did_not_make_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="was not made by `repackctl demo`"):
        claim_folder(out, "demo", ("cache",), fresh=True)
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]  # no marker written either

    r = runner.invoke(app, ["demo", "--quick", "--fresh", "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "Error:" in r.output and "Hint:" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


@pytest.mark.parametrize("t2i", [False, True])
def test_a_file_as_out_or_a_bad_seed_is_refused_before_anything_is_written(tmp_path, t2i):
    """`demo --out FILE` ended in a NotADirectoryError traceback; `--seed -1` was refused only
    after the folder had been claimed (a marker file written)."""
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    flag = ["--t2i"] if t2i else []
    r = runner.invoke(app, ["demo", "--quick", *flag, "--out", str(mine)])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "is a file" in r.output and "Hint:" in r.output
    assert mine.read_text() == "mine"
    out = tmp_path / "new"
    r = runner.invoke(app, ["demo", "--quick", *flag, "--seed", "-1", "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output and "--seed" in r.output, r.output
    assert not out.exists()


def test_fresh_removes_only_what_the_pipeline_writes(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out, "demo", ("cache", "report.md"), fresh=False)  # a new folder is claimed
    assert json.loads((out / MARKER).read_text()) == {"made_by": "demo"}
    zarr.open_group(str(out / "cache"), mode="w")  # a cache root: only what the cache writes
    (out / "report.md").write_text("old")
    (out / "notes.txt").write_text("mine")  # the user's own file
    claim_folder(out, "demo", ("cache", "report.md"), fresh=False)  # reuse: nothing removed
    assert (out / "cache" / "zarr.json").is_file() and (out / "report.md").is_file()
    removed: list[str] = []
    claim_folder(out, "demo", ("cache", "report.md"), fresh=True, log=removed.append)
    assert not (out / "cache").exists() and not (out / "report.md").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / MARKER).is_file()
    assert len(removed) == 2


def test_another_pipelines_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    claim_folder(out, "demo", ("cache",), fresh=False)
    (out / "cache").mkdir()
    with pytest.raises(ConfigError, match="demo-t2i"):
        claim_folder(out, "demo-t2i", ("cache",), fresh=True)
    assert (out / "cache").is_dir()


@pytest.mark.slow
def test_a_side_process_reports_its_own_run_time_not_the_wait(tmp_path):
    pipe = Pipeline(tmp_path, log=lambda _: None)
    t0 = time.monotonic()
    pipe.start_side("help", ["--help"])
    pipe.side["help"][0].wait()
    ran = time.monotonic() - t0  # at most the side process's run time (a loaded host: seconds)
    time.sleep(2.0)  # the caller was busy long after the side process ended
    seconds = pipe.wait_side("help", RepackError, "it")
    assert 0.0 <= seconds <= ran + 0.5, (seconds, ran)  # the 2 s wait not counted
    assert "Usage" in (tmp_path / "help.log").read_text()

    pipe.start_side("bad", ["no-such-command"])
    with pytest.raises(RepackError, match="bad failed"):
        pipe.wait_side("bad", RepackError, "it")


def test_a_start_killed_while_it_wrote_its_marker_is_claimed_again(tmp_path):
    """The marker was written in place: a kill left it empty, and every rerun (`--fresh` too)
    refused the folder as someone else's. It is written through a temporary now, and what a
    kill leaves of that temporary does not make the folder foreign."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    out = tmp_path / "demo"
    out.mkdir()
    (out / f".tmp-{MARKER}.{proc.pid}").write_text('{"made_')  # killed before the rename
    claim_folder(out, "demo", ("cache",), fresh=False)
    assert [p.name for p in out.iterdir()] == [MARKER]  # the temporary removed by the write
    assert json.loads((out / MARKER).read_text()) == {"made_by": "demo"}


_PARENT = """
import sys, time
from pathlib import Path
from repackctl.pipeline import Pipeline
pipe = Pipeline(Path(sys.argv[1]), log=lambda _: None)
pipe.start_side("slow", ["extract", "-n", "100000", "--resolution", "64", "--cache", sys.argv[2],
                         "--device", "cpu"])
print(pipe.side["slow"][0].pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_side_process_dies_with_the_demo_that_started_it(tmp_path):
    """A killed demo left its refiner training on: the rerun failed on the run it held."""
    import signal
    import subprocess

    (tmp_path / "out").mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path / "out"), str(tmp_path / "cache")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    assert _running(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while _running(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(child)
