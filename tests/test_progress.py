"""Progress off a terminal (plain lines every N seconds), Rich bars that fit, and log.txt."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from conftest import subprocess_env
from rich.console import Console

from repackctl.progress import (
    LineBar,
    format_duration,
    log_every_s,
    log_progress,
    null_progress,
    progress_line,
    set_log_every_s,
    with_log_file,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_follow_the_period_and_the_format():
    clock, lines = Clock(), []
    factory = log_progress(write=lines.append, every_s=30, clock=clock)
    with factory("extract", total=5000, unit="img") as bar:
        clock.t += 10
        bar.advance(300, loss=0.5)
        assert lines == []  # 10 s < 30 s: nothing yet
        clock.t += 24.09
        bar.advance(900, loss=0.123)  # 1200 done after 34.09 s: 35.2 img/s, 3800 left
        assert lines == ["extract 1200/5000 (24%) 35.2 img/s ETA 1m48s loss 0.123"]
        clock.t += 29
        bar.advance(100)
        assert len(lines) == 1  # 29 s after the last line
        clock.t += 1
        bar.advance(100)
        assert len(lines) == 2 and lines[1].startswith("extract 1400/5000 (28%) ")
        bar.log("a warning")
        assert lines[-1] == "a warning"
    assert lines[-1].startswith("extract 1400/5000 (28%) ") and " done in 1m04s" in lines[-1]
    assert "loss 0.123" in lines[-1]


def test_a_line_gives_the_rate_and_eta_of_the_period_since_the_last_line():
    """A run that slows down (a GAN term starting mid-run, a shared machine) shows its recent
    rate and an ETA from it; an average since the start kept promising the early rate."""
    clock, lines = Clock(), []
    factory = log_progress(write=lines.append, every_s=30, clock=clock)
    with factory("train", total=6300, unit="step") as bar:
        clock.t += 30
        bar.advance(3000)  # 100 step/s
        clock.t += 30
        bar.advance(300)  # 10 step/s: 3000 left take 5 min, not 55 s
        assert lines == [
            "train 3000/6300 (48%) 100.0 step/s ETA 33s",
            "train 3300/6300 (52%) 10.0 step/s ETA 5m00s",
        ]
    assert lines[-1] == "train 3300/6300 (52%) 55.0 step/s done in 1m00s"  # the whole run's


def test_a_task_that_never_advanced_prints_no_progress_line():
    lines: list[str] = []
    factory = log_progress(write=lines.append, every_s=0, clock=Clock())
    with factory("triplets", total=None) as bar:
        bar.log("building triplets")
    with factory("train", total=10, completed=10, unit="step"):
        pass  # resumed at the end: nothing to report
    assert lines == ["building triplets"]


def test_a_failing_task_ends_with_a_stopped_line():
    clock, lines = Clock(), []
    factory = log_progress(write=lines.append, every_s=60, clock=clock)
    with pytest.raises(RuntimeError), factory("train", total=100, unit="step") as bar:
        clock.t += 5
        bar.advance(10)
        raise RuntimeError("boom")
    assert lines == ["train 10/100 (10%) 2.0 step/s stopped in 5s"]


def test_line_format_pieces():
    assert format_duration(48) == "48s"
    assert format_duration(108) == "1m48s"
    assert format_duration(2 * 3600 + 180) == "2h03m"
    assert progress_line("pack", 7, None, 0.5, "step", {}) == "pack 7 2.0 s/step"
    bar = LineBar("x", 4, 0, "it", print, every_s=1e9, clock=Clock())
    assert bar.rate(bar.start + 2) == 0.0


def test_period_from_env_and_from_the_resolved_setting(monkeypatch):
    from repackctl.settings import resolve_settings

    assert log_every_s() == 30.0
    monkeypatch.setenv("REPACKCTL_LOG_EVERY_S", "5")
    assert log_every_s() == 5.0
    assert resolve_settings(None, {}).settings.log_every_s == 5.0  # a valid setting, not an error
    monkeypatch.setenv("REPACKCTL_LOG_EVERY_S", "soon")
    assert log_every_s() == 30.0
    try:
        set_log_every_s(2.5)
        assert log_every_s() == 2.5
    finally:
        set_log_every_s(None)


def test_log_file_gets_progress_lines_and_messages(tmp_path):
    path = tmp_path / "run" / "log.txt"
    shown: list[str] = []
    factory = with_log_file(log_progress(write=shown.append, every_s=0), path, every_s=0)
    with factory("train", total=3, unit="step") as bar:
        bar.log("resumed from step 0")
        bar.advance(1, loss=0.25)
        bar.advance(2, loss=0.125)
    text = path.read_text()
    assert "resumed from step 0" in text
    assert "train 1/3 (33%)" in text and "loss 0.25" in text
    assert "train 3/3 (100%)" in text and "done in" in text
    assert shown[0] == "resumed from step 0"  # the terminal side still gets everything
    assert with_log_file(null_progress, path) is null_progress  # library use writes nothing


def _rich_output(monkeypatch, width: int) -> str:
    import repackctl.cli.common as common

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    monkeypatch.setattr(common, "err_console", console)
    with common.rich_progress("extract dinov3-b16--final", total=5000, unit="img") as bar:
        bar.advance(1200, loss=0.123)
    with common.rich_progress("triplets", total=None) as bar:
        bar.log("building triplets")
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_rich_bar_keeps_its_description_at_any_width(monkeypatch, width):
    out = _rich_output(monkeypatch, width)
    assert "extract dinov3-b16--final" in out  # never "extr…"
    assert "1200/5000" in out and "…" not in out
    assert "0/?" not in out  # the never-advanced "triplets" task left no bar
    assert "building triplets" in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n")
    assert max(len(line) for line in plain.splitlines()) <= width


@pytest.mark.slow
def test_extract_with_stderr_piped_prints_plain_lines(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "repackctl", "extract", "-n", "64", "--resolution", "32"],
        env=subprocess_env(tmp_path, REPACKCTL_LOG_EVERY_S="0.001"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("extract ")]
    assert lines, err
    assert "64/64 (100%)" in lines[-1] and "img/s done in" in lines[-1]
    for junk in ("━", "╸", "0/?", "…", "\r", "\x1b["):
        assert junk not in err, (junk, err)
