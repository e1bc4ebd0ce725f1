"""`runs info RUN` lists a samples folder as made from the run only when the weights it sampled
are the run's: a folder is named after the run and checkpoint, so after `runs rm RUN` and a new
run of the same name, the old run's samples (kept in the samples root) used to be listed as the
new run's. Now they are listed apart (``samples_of_other_runs``), by the ``checkpoint_sha256``
their ``.sample-settings.json`` records against the checkpoint's ``state.json``."""

from __future__ import annotations

import json

from support.stack import make_dit_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app

RUN = "dit-audit4"


def _cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_samples_of_an_earlier_run_of_the_same_name_are_not_the_runs(
    tmp_path_factory, tmp_path, one_thread
) -> None:
    stack = shared_stack(tmp_path_factory)
    roots = ["--runs", stack["runs"], "--samples", str(tmp_path / "samples")]
    sample = ["sample", "-r", RUN, "-n", "2", "--device", "cpu", *roots, "--cache", stack["cache"]]
    make_dit_run(stack["runs"], RUN, seed=1)
    _cli(*sample, "--steps", "1")
    (first,) = json.loads(_cli("runs", "info", RUN, "--json", *roots))["samples"]

    _cli("runs", "rm", RUN, "--yes", "--runs", stack["runs"])
    make_dit_run(stack["runs"], RUN, seed=2)  # the same name and checkpoint, other weights
    info = json.loads(_cli("runs", "info", RUN, "--json", *roots))
    assert info["samples"] == [] and info["samples_of_other_runs"] == [first], info

    _cli(*sample, "--steps", "2")  # the new run's own samples are its
    info = json.loads(_cli("runs", "info", RUN, "--json", *roots))
    assert info["samples_of_other_runs"] == [first], info
    (second,) = info["samples"]
    assert second != first
    text = _cli("runs", "info", RUN, *roots)
    assert f"samples of another run of this name  {first}" in text, text
    _cli("runs", "rm", RUN, "--yes", "--runs", stack["runs"])  # the shared stack as it was
