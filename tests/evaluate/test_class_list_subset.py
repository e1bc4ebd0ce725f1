"""`evaluate fid --samples N` of a folder sampled with a class list (``--labels 3,7,7``: sample i
gets class ``ids[i mod 3]``, twice as many 7s as 3s) took as many samples of each class, so the
FD was of a 1:1 mix that the card's ``label_scheme: classes:3,7,7`` does not describe (and an N
the number of classes does not divide was refused). It scores the first N, the samples
``sample -n N --labels 3,7,7`` makes, in the scheme's proportions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from support.cli import cli_ok
from support.stack import FD_SCORE, shared_stack, stack_env


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return shared_stack(tmp_path_factory)


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def test_a_class_list_subset_keeps_the_lists_proportions(env, tmp_path) -> None:
    folder = tmp_path / "l377"
    cli_ok("sample", "-r", "dit-tiny", "-n", "12", "--steps", "2", "--labels", "3,7,7",
           "--grid", "0", "--device", "cpu", "--out", str(folder))  # fmt: skip
    with np.load(folder / "samples.npz") as z:
        images, labels = z["arr_0"], z["arr_1"]
    assert labels.tolist() == [3, 7, 7] * 4
    cli_ok("evaluate", "fid", str(folder), "--samples", "6", *FD_SCORE)
    doc = json.loads((folder / "metrics-n6.json").read_text())
    subset = doc["protocol"]["sample_subset"]
    assert subset["rule"] == "first" and subset["num"] == 6, subset
    # the same score as the first 6 images (two 3s, four 7s) scored as external samples
    first = tmp_path / "first"
    first.mkdir()
    np.savez(first / "first6.npz", arr_0=images[:6], arr_1=labels[:6])
    cli_ok("evaluate", "fid", str(first / "first6.npz"), *FD_SCORE)
    ext = json.loads((first / "first6-metrics.json").read_text())
    assert doc["metrics"]["fd"] == pytest.approx(ext["metrics"]["fd"], rel=1e-9)
    # an N that the 2 classes do not divide is what `sample -n 5 --labels 3,7,7` makes
    cli_ok("evaluate", "fid", str(folder), "--samples", "5", *FD_SCORE)
    assert (
        json.loads((folder / "metrics-n5.json").read_text())["metrics"]["fd_detail"]["n_generated"]
        == 5
    )
