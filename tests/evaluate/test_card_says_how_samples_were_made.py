"""A score's protocol card (and the printed tables) say how its samples were made.

1. Autoguidance (``sample --guide RUN``) was scored and printed as plain CFG: the guide run,
   checkpoint and sha256 are on the card, and "autoguidance by <run> <checkpoint>" is printed
   by `sample` and `evaluate fid`.
2. The refiner, EMA vs raw weights and the pack decoder were missing from the card and table;
   a ``metrics.json`` written before these fields is replaced by the same result recomputed
   (with a note), never refused.
3. `evaluate fid RUN` took the folder scored last (writing metrics.json changes the folder's
   mtime), not the samples made last; it warns when the run trained on since its samples. A
   run's name (not only its folder) is taken.

Real commands on the shared toy stack (tests/support/stack.py): patchpix 32 px, a tiny DiT
checkpoint, another as the guide, a refiner; FD in the built-in encoder's space.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.stack import FD_SCORE, make_dit_run, save_refiner_run, shared_stack, stack_env
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.metrics.adm import write_samples_npz

runner = CliRunner()
SCORE = FD_SCORE
SAMPLE = ["sample", "-n", "6", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """The shared stack plus a guide run, a refiner and a run that trains on after sampling."""
    paths = shared_stack(tmp_path_factory)
    runs = paths["runs"]
    if not (Path(runs) / "card-guide").is_dir():
        make_dit_run(runs, "card-guide", seed=1)
        make_dit_run(runs, "card-grows", seed=2)
        save_refiner_run(runs, "card-refine", resolution=32)
    return paths


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("COLUMNS", "1000")  # table cells on one line: paths are never folded
    yield from stack_env(stack, tmp_path, monkeypatch)


def _ok(*args: str) -> str:
    """Run the command; its output with table borders dropped and words single-spaced."""
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output, res.output
    return " ".join(w for w in res.output.split() if w not in ("│", "┃"))


def _sample(env: dict[str, str], *args: str, run: str = "dit-tiny") -> tuple[Path, str]:
    """Sample into a new folder; (that folder, the printed summary)."""
    before = set(Path(env["samples"]).glob("*")) if Path(env["samples"]).is_dir() else set()
    out = _ok(*SAMPLE, "-r", run, *args)
    (folder,) = set(Path(env["samples"]).glob("*")) - before
    return folder, out


def _score(folder: Path) -> tuple[dict, str]:
    """`evaluate fid FOLDER`: (the card of its metrics.json, the printed table)."""
    out = _ok("evaluate", "fid", str(folder), *SCORE)
    return json.loads((folder / "metrics.json").read_text())["protocol"], out


def _unwrapped(text: str) -> str:
    """``text`` without whitespace and table borders (a long cell wraps over several lines)."""
    return "".join(ch for ch in text if not ch.isspace() and ch != "│")


def _protocol(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def test_autoguidance_is_named_on_the_card_and_in_both_tables(env):
    guided, said = _sample(env, "--cfg", "2", "--guide", "card-guide")
    plain, said_plain = _sample(env, "--cfg", "2")
    assert "autoguidance by card-guide step-0000005, scale 2" in said, said
    assert "autoguidance by" not in said_plain

    card, out = _score(guided)
    recorded = _protocol(guided)["guide"]
    assert card["guide"] == {
        "run": "card-guide",
        "checkpoint": recorded["checkpoint"],
        "sha256": recorded["sha256"],
    }
    assert "autoguidance by card-guide step-0000005, scale=2.0" in out, out
    plain_card, plain_out = _score(plain)
    assert plain_card["guide"] is None and "autoguidance by" not in plain_out
    assert plain_card["cfg_scale"] == card["cfg_scale"] == 2.0  # the same CFG, told apart


def test_refiner_and_raw_weights_are_on_the_card_and_in_the_table(env):
    ema, _ = _sample(env)
    raw, said = _sample(env, "--weights", "model")
    refined, _ = _sample(env, "--refiner", "card-refine")
    assert "weights model" in said

    ema_card, ema_out = _score(ema)
    raw_card, raw_out = _score(raw)
    ref_card, ref_out = _score(refined)
    assert (ema_card["weights"], raw_card["weights"], ref_card["weights"]) == (
        "ema",
        "model",
        "ema",
    )
    assert ema_card["refiner"] is None and raw_card["refiner"] is None
    assert ref_card["refiner"] == _protocol(refined)["refiner"]
    assert ref_card["refiner"]["sha256"] and "card-refine" in ref_card["refiner"]["checkpoint"]
    decoder = _protocol(ema)["pack"]
    assert ema_card["pack_decoder"] == {
        "checkpoint": decoder["checkpoint"],
        "pack_id": decoder["pack_id"],
    }
    assert "weights ema refiner none" in ema_out, ema_out
    assert "weights model" in raw_out
    refiner = ref_card["refiner"]
    # long paths wrap inside the table's cells: compared without the wrapping
    assert _unwrapped(f"refiner {refiner['checkpoint']} (sha256 {refiner['sha256'][:12]}…)") in (
        _unwrapped(ref_out)
    )
    assert _unwrapped(f"decoder {decoder['checkpoint']}") in _unwrapped(ema_out), ema_out


def test_a_metrics_json_of_the_previous_version_is_recomputed_with_a_note(env):
    folder, _ = _sample(env)
    _score(folder)
    path = folder / "metrics.json"
    doc = json.loads(path.read_text())
    for key in ("weights", "guide", "refiner", "pack_decoder"):  # as the previous version wrote
        doc["protocol"].pop(key, None)
    path.write_text(json.dumps(doc))

    card, out = _score(folder)  # the same evaluation again: neither refused nor silent
    assert "written by an earlier version whose card lacks" in out, out
    assert card["weights"] == "ema" and "pack_decoder" in card
    _, again = _score(folder)
    assert "earlier version" not in again


def test_a_run_resolves_to_the_samples_made_last_not_the_folder_scored_last(env):
    older, _ = _sample(env, "--seed", "1")
    past = time.time() - 100  # these samples were made 100 s before the others
    for p in [*older.iterdir(), older]:
        os.utime(p, (past, past))
    newer, _ = _sample(env, "--seed", "2")
    _score(newer)
    _score(older)  # writing its metrics.json last made it the folder changed last

    run = Path(env["runs"]) / "dit-tiny"
    out = _ok("evaluate", "fid", str(run), *SCORE)
    assert f"its newest samples folder is {newer}" in out, out
    assert "trained on since" not in out  # made from the run's newest checkpoint
    # the run's name, as `sample -r dit-tiny` takes it ("generated samples ./dit-tiny do not
    # exist" before); a name that is neither a path nor a run is still refused
    assert f"its newest samples folder is {newer}" in _ok("evaluate", "fid", "dit-tiny", *SCORE)
    res = runner.invoke(app, ["evaluate", "fid", "no-such-run", *SCORE])
    assert res.exit_code != 0 and "nor is 'no-such-run' a run under" in " ".join(res.output.split())


def test_a_run_that_trained_on_since_its_samples_is_warned_about(env):
    from safetensors.torch import load_file

    from repackctl.train.checkpoint import save_checkpoint

    folder, _ = _sample(env, run="card-grows")
    run = Path(env["runs"]) / "card-grows"
    step5 = run / "checkpoints" / "step-0000005"
    sd = load_file(str(step5 / "model.safetensors"))
    extra = json.loads((step5 / "state.json").read_text())["extra"]
    save_checkpoint(run, 9, {"model": sd, "ema": sd}, {}, {"extra": extra})  # trained on

    out = _ok("evaluate", "fid", str(run), *SCORE)
    assert f"its newest samples folder is {folder}" in out
    assert "Warning:" in out and "step-0000005" in out and "step-0000009" in out, out
    assert "trained on since" in out


def test_what_external_samples_do_not_record_is_not_recorded_not_none(env, tmp_path):
    """Samples from elsewhere: the card leaves these fields out and the table says "not
    recorded" (never "none", which would claim plain CFG of the EMA weights, no refiner)."""
    folder, _ = _sample(env)
    external = tmp_path / "external" / "samples.npz"
    external.parent.mkdir()
    with np.load(folder / "samples.npz") as z:
        write_samples_npz(external, z["arr_0"])
    out = _ok("evaluate", "fid", str(external), *SCORE)
    card = json.loads((external.parent / "metrics.json").read_text())["protocol"]
    assert not {"weights", "guide", "refiner", "pack_decoder"} & set(card)
    assert "weights not recorded refiner not recorded decoder not recorded" in out, out
