"""A process of a torchrun job killed: the survivor printed gloo's raw traceback ("Connection
closed by peer … GLHF!") from its next collective, where a user needs one `Error:` and the
rerun. The message is the one gloo raises (seen with `kill -9` of rank 1 during `extract` and
`train dit`); a RuntimeError of one process, or any other, keeps its traceback."""

from __future__ import annotations

import pytest
from support.cli import raising_app
from typer.testing import CliRunner

GLOO = "[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:1234"


def test_a_lost_peer_is_an_error_with_the_rerun(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(raising_app(RuntimeError(GLOO)), [])
    assert res.exit_code == 1 and res.exception.__class__ is SystemExit, res.output
    assert "Error: another process of this job stopped" in res.output
    assert "Hint: run the same command again" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("world,message", [("1", GLOO), ("2", "shape mismatch")])
def test_other_runtime_errors_keep_their_traceback(monkeypatch, world, message) -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    res = CliRunner().invoke(raising_app(RuntimeError(message)), [])
    assert isinstance(res.exception, RuntimeError) and "Error:" not in res.output
