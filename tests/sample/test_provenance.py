"""A rerun of `sample` on a finished folder makes no samples: its card keeps the provenance of
the call that made them (``run_header``, ``versions``, ``git_revision``), not the rerun's.

Before, every rerun rewrote those three with its own (this machine, device, precision source,
package versions, git revision), so the card credited samples to a call that made none of them.
The card's ``files`` still match (``evaluate`` checks them), whether the rerun found the
folder whole or restored a PNG from its samples.npz.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``); a text-to-image
folder on the toy t2i stack (tests/support/caches.py ``t2i_stack``, slow).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok
from support.stack import FD_SCORE, shared_stack, stack_env

from repackctl.sample.folder import check_recorded_file, verify_recorded_pngs

CPU = ["--device", "cpu"]
SCORE = FD_SCORE


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def _as_made_elsewhere(folder: Path) -> tuple[dict, dict]:
    """(the card as `sample` wrote it, the provenance it gets): the card rewritten as a call
    on another machine, device and version would have written it, the rest unchanged."""
    card = _card(folder)
    made = {
        "versions": {**card["versions"], "torch": "2.99.0", "repackctl": "0.0.9"},
        "git_revision": "0123456789abcdef0123456789abcdef01234567",
    }
    if "run_header" in card:  # class-conditional cards record the call's header
        made["run_header"] = {**card["run_header"], "device": "cuda:0", "world_size": 8}
    (folder / "protocol.json").write_text(json.dumps({**card, **made}, indent=2))
    return card, made


def _assert_files_match(folder: Path, num: int) -> None:
    card = _card(folder)
    for name in ("samples.npz", "latents.npy"):
        check_recorded_file(folder, name, card, "sample again")
    assert verify_recorded_pngs(folder, num, card)


def test_a_rerun_on_a_finished_folder_keeps_who_made_the_samples(env, tmp_path):
    out = tmp_path / "s"
    args = ["sample", "-r", "dit-tiny", "-n", "6", "--steps", "2", *CPU, "--out", str(out)]
    cli_ok(*args)
    card, made = _as_made_elsewhere(out)
    # nothing made: the folder is whole (the precision now given by a flag, not a default)
    assert "0 now, 6 already done" in cli_ok(*args, "--precision", "fp32")
    assert _card(out) == {**card, **made}
    # a PNG lost, restored from samples.npz: still nothing made here
    (out / "000002.png").unlink()
    assert "0 now, 6 already done" in cli_ok(*args)
    assert _card(out) == {**card, **made}  # the card of the call that made them, files included
    _assert_files_match(out, 6)
    cli_ok("evaluate", "fid", str(out), *SCORE)  # evaluate reads the card, checks its files
    assert "fd" in json.loads((out / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_a_t2i_rerun_on_a_finished_folder_keeps_who_made_the_samples(tmp_path_factory, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    stack = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-provenance") / "w")
    use_stack(stack, tmp_path, monkeypatch)
    out = tmp_path / "t"
    args = ["sample", "-r", "tA", "-n", "4", "--steps", "2", "--grid", "0", *CPU]
    args += ["--prompt", "a red star", "--prompt", "a blue ring", "--out", str(out)]
    cli_ok(*args)
    card, made = _as_made_elsewhere(out)
    (out / "000001.png").unlink()
    assert "0 now, 4 already done" in cli_ok(*args)
    assert _card(out) == {**card, **made}
    _assert_files_match(out, 4)
