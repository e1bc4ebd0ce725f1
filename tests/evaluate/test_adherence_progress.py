"""`evaluate adherence` shows the training of its attribute classifiers (README: every long job
shows progress: a Rich bar on a terminal, a plain line every ``REPACKCTL_LOG_EVERY_S`` seconds
otherwise).

The 400 default steps of ``train_classifier`` took 3–4 minutes on a CPU without a word: the
command printed nothing until its table. The steps now advance the CLI's progress factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok

from repackctl.evaluate import adherence

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def t2i_base(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("adh-progress") / "w")


@pytest.fixture
def folder(t2i_base, tmp_path, monkeypatch) -> Path:
    """A samples folder of the stack's t2i run ``tA``, with no classifier of this process
    trained yet (a network trained for the same inputs would be reused: nothing to show)."""
    use_stack(t2i_base, tmp_path, monkeypatch)
    monkeypatch.setattr(adherence, "_TRAINED", {})
    out = tmp_path / "s"
    cli_ok("sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "4", *CPU, "--prompt",
           "a red star", "--out", str(out))  # fmt: skip
    return out


class _Bar:
    def __init__(self) -> None:
        self.done = 0
        self.fields: dict[str, Any] = {}

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)

    def log(self, message: str) -> None:
        pass


def test_the_command_shows_the_classifier_training(folder):
    """Not a terminal here: plain lines (one every REPACKCTL_LOG_EVERY_S, and the final one)."""
    out = cli_ok("evaluate", "adherence", str(folder), "--steps", "3", *CPU)
    line = "adherence classifier 3/3 (100%)"  # the task the bar names
    assert line in out, out  # HEAD: nothing before the table
    assert "done in" in out[out.index(line) :] and "loss" in out[out.index(line) :], out
    assert out.index(line) < out.index("evaluate adherence"), out


def test_the_progress_factory_receives_the_training_steps(folder):
    tasks: list[tuple[str, int | None, str, _Bar]] = []

    @contextmanager
    def recording(
        description: str = "", total: int | None = None, completed: int = 0, unit: str = "it"
    ) -> Iterator[_Bar]:
        bar = _Bar()
        tasks.append((description, total, unit, bar))
        yield bar

    cpu = torch.device("cpu")
    first = adherence.run_adherence(folder, None, 5, 0, cpu, progress=recording)
    assert [t[:3] for t in tasks] == [(adherence.CLASSIFIER_TASK, 5, "step")]
    bar = tasks[0][3]
    assert bar.done == 5 and isinstance(bar.fields.get("loss"), float), bar.fields
    # the same classifiers again: reused (the same scores), so nothing trains and nothing shows
    tasks.clear()
    again = adherence.run_adherence(folder, None, 5, 0, cpu, progress=recording)
    assert tasks == [] and again.scores["shape_accuracy"] == first.scores["shape_accuracy"]
