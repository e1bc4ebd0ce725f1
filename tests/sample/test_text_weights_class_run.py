"""`sample --text-weights DIR` (where a text-to-image run's text-encoder folder is now) has no
meaning for a class-conditional run: it is refused there like `--prompt`, before anything is
written, rather than accepted and ignored.

The shared toy stack (tests/support/stack.py): a tiny class-conditional DiT, on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_refused
from support.stack import shared_stack, stack_env

from repackctl.errors import ConfigError


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def test_a_class_conditional_run_refuses_text_weights(env, tmp_path):
    out = tmp_path / "s"
    msg = cli_refused(
        ConfigError.exit_code, "sample", "-r", "dit-tiny", "-n", "2", "--steps", "1",
        "--text-weights", str(tmp_path), "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert "class-conditional" in msg and "--text-weights" in msg
    assert not out.exists() and not list(Path(env["samples"]).glob("*"))
