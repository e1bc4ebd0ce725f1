"""`refine train --lpips-weights PATH` where PATH is no file (a typo, a moved file).

The refiner trained without the perceptual term, with "Warning: no LPIPS weights" (they were
given) and the missing path recorded in its config as if used. It is now refused before the
triplets or the run folder are written, naming the setting; a real file still trains the term.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.cache.store import DatasetEntry
from repackctl.errors import ConfigError
from repackctl.pack.load import load_pack
from repackctl.pack.losses import write_random_lpips_weights
from repackctl.refine.triplets import KIND

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return shared_stack(tmp_path_factory)


def _triplet_groups(entry: DatasetEntry) -> list[str]:
    return sorted(entry.group[KIND].group_keys()) if KIND in entry.group else []


def test_lpips_weights_that_are_no_file_are_refused(stack, tmp_path: Path) -> None:
    common = ["--cache", stack["cache"], "--runs", stack["runs"], "--device", "cpu"]
    new = ["refine", "train", "--pack-run", "pack-tiny", "--batch-size", "4"]
    new += ["--base-channels", "8", "--gan-weight", "0", "--steps", "1", *common]
    pack = load_pack("pack-tiny", runs=stack["runs"])
    entry = DatasetEntry.open(stack["cache"], pack.extra["cache"]["entry"])
    triplets = _triplet_groups(entry)
    missing = tmp_path / "gone" / "vgg.safetensors"
    out = cli_refused(
        ConfigError.exit_code, *new, "--name", "lp", "--noise", "0.4",
        "--lpips-weights", str(missing),
    )  # fmt: skip
    assert f"refine.lpips_weights names {missing} (from flag), which is no file" in out, out
    assert (
        "leave --lpips-weights out" in out
        and "--perceptual-weight 0" in out
        and "no LPIPS weights" not in out
    ), out
    assert not (Path(stack["runs"]) / "lp").exists()  # HEAD: trained, without the term
    assert _triplet_groups(entry) == triplets  # nor the noisy triplets built first
    # an existing file trains the term
    weights = write_random_lpips_weights(tmp_path / "lpips.safetensors")
    out = cli_ok(*new, "--name", "lp", "--lpips-weights", str(weights), "--log-every", "1")
    assert "no LPIPS weights" not in out, out
    rows = (Path(stack["runs"]) / "lp" / "metrics.jsonl").read_text().splitlines()
    assert any("lpips" in json.loads(row) for row in rows), rows
