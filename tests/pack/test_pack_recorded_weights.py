"""A pack run's ``--weights`` file, read from another folder than the one it was typed in
(audit s29b, G7).

`pack train --weights enc.safetensors` recorded the relative path as typed (config.json and the
checkpoints' ``source.weights``): resuming the run or `pack encode --run pk --encoder …` from
another folder failed with "weights file not found: enc.safetensors". New runs record the
absolute path (as `extract` does); a run recorded before is read only where the relative path
names the recorded file (its sha256), else refused with an Error naming the record, and nothing
is written.

Real runs through the command line: a weights file of the built-in encoder, extract, pack train,
resume and encode from two working folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.ckpt_state import write_state
from support.cli import cli_ok, cli_refused

from repackctl.run_files import CONFIG_SHA256, json_sha256
from repackctl.train.checkpoint import list_checkpoints, read_state

TINY = ["--batch-size", "4", "-c", "4", "--ch", "8", "--disc-channels", "8", "--image-every", "0"]
SRC = ["--resolution", "32", "-n", "8", "--weights", "w.safetensors"]
REFUSED = "pack run pk: its recorded --weights is the relative path 'w.safetensors'"
HINT = "Hint: pass --weights with the file's absolute path"


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A weights file in ``mine`` (the working folder), features extracted from it there, and
    a 2-step pack run ``pk`` started there with ``--weights w.safetensors``."""
    from repackctl.encoders.builtin import builtin_encoder, save_weights

    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    network = builtin_encoder(weights="random", seed=7, resolution=32).network
    save_weights(network, mine / "w.safetensors")
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    where = ["--device", "cpu"]
    monkeypatch.chdir(mine)
    cli_ok("extract", *SRC, "--chunk", "8", "--shard", "8", "--num-workers", "0", *where)
    cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "2", *TINY, *where)
    return {"mine": mine, "elsewhere": elsewhere, "where": where, "run": tmp_path / "runs/pk"}


def _steps(run: Path) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(run)]


def _replaced(doc: Any, old: str, new: str) -> Any:
    if isinstance(doc, dict):
        return {k: _replaced(v, old, new) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_replaced(v, old, new) for v in doc]
    return new if doc == old else doc


def _as_typed_before(run: Path, absolute: str, typed: str) -> None:
    """The run's records as versions before wrote them: ``typed`` wherever they hold the
    absolute path (config.json and every checkpoint's state.json, each sealed again)."""
    for path in (run / "checkpoints").glob("step-*/state.json"):
        write_state(path, _replaced(json.loads(path.read_text()), absolute, typed))
    config = _replaced(json.loads((run / "config.json").read_text()), absolute, typed)
    config[CONFIG_SHA256] = json_sha256(config, CONFIG_SHA256)
    (run / "config.json").write_text(json.dumps(config))


def test_a_new_run_records_the_file_and_resumes_and_encodes_from_another_folder(
    folders: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, weights = folders["run"], str(folders["mine"] / "w.safetensors")
    config = json.loads((run / "config.json").read_text())
    assert config["extra"]["settings"]["values"]["pack"]["weights"] == weights  # HEAD: as typed
    state = read_state(list_checkpoints(run)[-1])
    assert state["extra"]["source"]["weights"] == weights

    monkeypatch.chdir(folders["elsewhere"])
    out = cli_ok("pack", "train", "--name", "pk", "--steps", "3", *folders["where"])
    assert "resumed from" in out and _steps(run) == [2, 3], out
    # the encoder named now: its features id is worked out from the recorded weights file
    out = cli_ok("pack", "encode", "--run", "pk", "--encoder", "builtin", *folders["where"])
    assert "pk-0000003" in out, out


def test_an_older_relative_record_is_read_only_where_it_names_the_recorded_file(
    folders: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, where = folders["run"], folders["where"]
    _as_typed_before(run, str(folders["mine"] / "w.safetensors"), "w.safetensors")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    monkeypatch.chdir(folders["elsewhere"])  # no such file here
    out = cli_refused(2, "pack", "train", "--name", "pk", "--steps", "3", *where)
    assert REFUSED in out and f"this folder ({folders['elsewhere']}) holds no such" in out, out
    assert HINT in out, out
    out = cli_refused(2, "pack", "encode", "--run", "pk", "--encoder", "builtin", *where)
    assert REFUSED in out and HINT in out, out
    (folders["elsewhere"] / "w.safetensors").write_bytes(b"another file")  # one of that name
    out = cli_refused(2, "pack", "train", "--name", "pk", "--steps", "3", *where)
    assert f"{folders['elsewhere'] / 'w.safetensors'} is another file" in out, out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing written

    monkeypatch.chdir(folders["mine"])  # the folder it was typed in: the recorded file
    cli_ok("pack", "train", "--name", "pk", "--steps", "3", *where)
    state = read_state(list_checkpoints(run)[-1])
    assert state["extra"]["source"]["weights"] == str(folders["mine"] / "w.safetensors")
    assert _steps(run) == [2, 3]


def test_an_older_run_resumes_with_its_weights_typed_again(
    folders: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same ``--weights w.safetensors`` typed again in its folder is no change of the run's
    settings, although it is now recorded by its absolute path (not 'would change
    pack.weights')."""
    run = folders["run"]
    _as_typed_before(run, str(folders["mine"] / "w.safetensors"), "w.safetensors")
    out = cli_ok("pack", "train", *SRC, "--name", "pk", "--steps", "3", *folders["where"])
    assert "resumed from" in out and "pack.weights" not in out, out
    assert _steps(run) == [2, 3]
