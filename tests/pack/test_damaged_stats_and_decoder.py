"""Hints that work when followed, for a damaged pack checkpoint (audit A of session 37,
findings 1 and 3).

- ``latent_stats.json`` cut or edited: every reader (`sample`, `refine train --pack-run`,
  `evaluate recon`, `pack encode` of another split) refuses it with the `pack encode` of that
  checkpoint, and that command, which writes the file, now runs and writes it again (it used to
  be refused by the very check that named it). The file is sealed with its sha256: it is not
  among the files ``state.json`` checksums, and an edited one used to be read as it was.
- The pack checkpoint a DiT decodes through damaged: `sample` says it is that checkpoint and
  that it has to be restored (it said "use another checkpoint of the run", and every
  checkpoint of the DiT decodes through the same pack checkpoint).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from support.stack import make_dit_run, shared_stack

from repackctl.errors import CheckpointError
from repackctl.pack.load import load_decoder, load_pack
from repackctl.train.checkpoint import read_state

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]


def _cut(path: Path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def _edit(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["mean"][0] += 1.0  # still valid JSON and valid stats
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("damage", "said"), [(_cut, "is not valid JSON"), (_edit, "does not match the sha256")]
)
def test_pack_encode_writes_a_damaged_latent_stats_again(tmp_path, tmp_path_factory, damage, said):
    root = shared_packed_cache(tmp_path_factory, tmp_path / "cache", 32)
    runs = tmp_path / "runs"
    (stats_file,) = runs.glob("pk/checkpoints/*/latent_stats.json")
    ckpt = stats_file.parent
    before = json.loads(stats_file.read_text())
    damage(stats_file)
    with pytest.raises(CheckpointError) as e:
        load_pack(ckpt)  # what sample, refine train and evaluate recon read it through
    assert said in e.value.message and str(stats_file) in e.value.message
    assert f"`repackctl pack encode --run {ckpt}`" in e.value.hint
    # the hint, followed: it used to be refused with the same error
    common = ["--cache", str(root), "--runs", str(runs), *CPU]
    cli_ok("pack", "encode", "--run", str(ckpt), *common)
    after = load_pack(ckpt).latent_stats
    assert after is not None
    assert after["mean"] == before["mean"] and after["std"] == before["std"]


@pytest.fixture
def dit_of_own_pack(tmp_path_factory, tmp_path) -> tuple[Path, Path]:
    """A private copy of the stage stack's pack run and a DiT run trained on it (runs root,
    the pack checkpoint the DiT records)."""
    stack = shared_stack(tmp_path_factory)
    runs = tmp_path / "runs"
    shutil.copytree(Path(stack["runs"]) / "pack-tiny", runs / "pack-tiny")
    dit = make_dit_run(str(runs), "dit", seed=3)
    return runs, Path(read_state(dit)["extra"]["pack"]["checkpoint"])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda c: _flip(c / "ema.safetensors"), "ema.safetensors is corrupt"),
        (lambda c: (c / "state.json").unlink(), "state.json is missing"),
    ],
)
def test_a_damaged_decoder_is_named_as_the_dits_pack_checkpoint(dit_of_own_pack, damage, said):
    runs, ckpt = dit_of_own_pack
    damage(ckpt)
    extra = read_state(runs / "dit" / "checkpoints" / "step-0000005")["extra"]
    with pytest.raises(CheckpointError) as e:
        load_decoder(str(runs), extra)
    assert "the pack checkpoint the DiT decodes through" in e.value.message
    assert str(ckpt) in e.value.message and said in e.value.message
    assert f"restore {ckpt}" in e.value.hint
    assert "another checkpoint of the run" not in e.value.hint
    assert "complete checkpoint folder" not in e.value.hint


def test_sample_names_the_decoder_and_a_damaged_stats_file_its_repair(dit_of_own_pack, tmp_path):
    runs, ckpt = dit_of_own_pack
    _flip(ckpt / "model.safetensors")
    roots = ["--runs", str(runs), "--samples", str(tmp_path / "samples"), *CPU]
    sample = ["sample", "-r", "dit", "-n", "2", "--steps", "2", "--grid", "0", *roots]
    out = cli_refused(CheckpointError.exit_code, *sample)
    assert "the pack checkpoint the DiT decodes through" in out and f"restore {ckpt}" in out, out
    assert "use another checkpoint of the run" not in out, out


def test_a_damaged_stats_file_of_the_decoder_keeps_its_repair(dit_of_own_pack):
    runs, ckpt = dit_of_own_pack
    (ckpt / "latent_stats.json").write_text('{"mean": [0.1, ')
    extra = read_state(runs / "dit" / "checkpoints" / "step-0000005")["extra"]
    with pytest.raises(CheckpointError) as e:
        load_decoder(str(runs), extra)
    assert "latent_stats.json is not valid JSON" in e.value.message
    assert f"`repackctl pack encode --run {ckpt}`" in e.value.hint
