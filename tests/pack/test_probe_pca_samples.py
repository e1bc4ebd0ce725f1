"""`evaluate probe`'s PCA-d row is fitted on `pack.pca_samples` tokens (a config file or the
environment sets it). The report recorded neither that count nor put it in its file name, so a
probe run with another count replaced the file of the default one. Now the report records it,
and a count that is not the default names its own file (`probe-<entry>-pcaP.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import cli_pack_stack
from support.cli import cli_ok

VAL = "builtin-n8--val--32px"


def test_a_probe_with_another_pca_count_keeps_the_default_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, runs = cli_pack_stack(tmp_path, val=8)
    probe = ["evaluate", "probe", "--run", "pk", "--split", "val", "--epochs", "2"]
    probe += ["--device", "cpu", *cache, *runs]
    cli_ok(*probe)
    monkeypatch.setenv("REPACKCTL_PACK__PCA_SAMPLES", "8")
    cli_ok(*probe)
    (ckpt,) = (tmp_path / "runs" / "pk" / "checkpoints").iterdir()
    default = json.loads((ckpt / f"probe-{VAL}-epochs2.json").read_text())
    fewer = json.loads((ckpt / f"probe-{VAL}-epochs2-pca8.json").read_text())
    assert (default["pca_samples"], fewer["pca_samples"]) == (20000, 8)
