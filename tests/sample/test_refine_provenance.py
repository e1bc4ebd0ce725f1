"""`refine apply` records who refined the samples: the refined folder's card keeps the source's
``run_header``, ``versions`` and ``git_revision`` (how the samples were generated) and adds the
refining call's own under ``refined_by``; the call prints its run header as `sample` does.

Before, the card copied the source's three fields and nothing recorded the machine, device and
versions that did the refining. A rerun that refines nothing in a finished folder keeps the
``refined_by`` of the call that made the images (and credits no call when an older card
recorded none); `evaluate` still reads the card.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``, refiner
``refine-audit3``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok
from support.stack import FD_SCORE, stack_env, stack_with_refiner

from repackctl.metrics.protocol import git_revision, package_versions

CPU = ["--device", "cpu"]
REFINER = "refine-audit3"
ELSEWHERE = {
    "run_header": {"world_size": 8, "device": "cuda:0", "precision": "bf16",
                   "precision_source": "flag", "seed": 0, "repackctl": "0.0.9", "torch": "2.9"},
    "versions": {"python": "3.10.0", "torch": "2.9", "repackctl": "0.0.9"},
    "git_revision": "0123456789abcdef0123456789abcdef01234567",
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, REFINER)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def _edit_card(folder: Path, **fields) -> dict:
    card = {**_card(folder), **fields}
    card = {k: v for k, v in card.items() if v is not None}
    (folder / "protocol.json").write_text(json.dumps(card, indent=2))
    return card


def test_refine_apply_records_its_own_provenance_beside_the_sources(env, tmp_path):
    src = tmp_path / "s"
    cli_ok("sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", *CPU, "--out", str(src))
    _edit_card(src, **ELSEWHERE)  # the samples were generated on another machine
    apply = ["refine", "apply", str(src), "--refiner", REFINER, *CPU]
    output = cli_ok(*apply)
    out = tmp_path / f"s--{REFINER}"
    card = _card(out)
    for key, value in ELSEWHERE.items():  # how the samples were generated: the source's
        assert card[key] == value, key
    assert "refined_by" in card, card  # who refined them: this call
    by = card["refined_by"]
    assert "world 1 · cpu · fp32 (refiner) · seed 0 · repackctl" in output
    header = by["run_header"]
    assert (header["world_size"], header["device"], header["precision"]) == (1, "cpu", "fp32")
    assert header["precision_source"] == "refiner"
    assert by["versions"] == package_versions()
    assert by["git_revision"] == git_revision()

    # a rerun that refines nothing keeps the refined_by of the call that made the images
    made = {**by, "git_revision": "fedcba9876543210fedcba9876543210fedcba98"}
    before = _edit_card(out, refined_by=made)
    assert "0 now, 4 already done" in cli_ok(*apply)
    assert _card(out) == before
    # a card of an older version records none: the rerun does not credit itself
    before = _edit_card(out, refined_by=None)
    assert "0 now, 4 already done" in cli_ok(*apply)
    assert _card(out) == before
    cli_ok("evaluate", "fid", str(out), *FD_SCORE)  # evaluate reads the card, checks its files
    assert "fd" in json.loads((out / "metrics.json").read_text())["metrics"]
