"""A refiner run resumes on the pack run it was trained on, not on the newest one.

`refine train --name R` without `--pack-run` takes the newest pack run; resumed after another
pack run was trained, it took that one and was refused ("trained on pack model A, not B") with
the hint "use a new --name". The pack run a new run resolves is recorded in its settings (as
`train dit` records its latents), and a run that recorded none (started by an older version)
resumes on the one its checkpoint names. A pack run given on resume that differs is still
refused. Real CLI runs on a real patchpix cache.
"""

from __future__ import annotations

import json

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.errors import ConfigError
from repackctl.run_files import CONFIG_SHA256, json_sha256
from repackctl.train.checkpoint import latest_checkpoint, read_state

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("refine-pack-run-cache", 16)

PACK = [
    *("pack", "train", "--preset", "small", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--batch-size", "8", "--image-every", "0", "--gan-weight", "0"),
    *("--steps", "2", "--device", "cpu"),
]
REFINE = [
    *("refine", "train", "--name", "rf", "--batch-size", "4", "--base-channels", "8"),
    *("--gan-weight", "0", "--device", "cpu"),
]


def _trained_on(run) -> str:
    return read_state(latest_checkpoint(run))["extra"]["pack"]["run"]


def _forget_pack_run(run) -> None:
    """The run's settings record as a version that did not record the resolved pack run wrote
    it (refine.pack_run None, from the default), sealed again."""
    path = run / "config.json"
    doc = json.loads(path.read_text())
    doc["extra"]["settings"]["values"]["refine"]["pack_run"] = None
    doc["extra"]["settings"]["sources"].pop("refine.pack_run")
    body = {k: v for k, v in doc.items() if k != CONFIG_SHA256}
    path.write_text(json.dumps(body | {CONFIG_SHA256: json_sha256(body, CONFIG_SHA256)}))


def test_a_named_refiner_resumes_on_its_own_pack_run(cache, tmp_path):
    run = tmp_path / "runs" / "rf"
    cli_ok(*PACK, "--name", "pa")
    out = cli_ok(*REFINE, "--steps", "1")
    assert "using pa, the newest pack run" in out, out
    cli_ok(*PACK, "--name", "pb")  # now the newest pack run
    out = cli_ok(*REFINE, "--steps", "2")
    assert "newest pack run" not in out, out
    assert _trained_on(run) == "pa" and latest_checkpoint(run).name == "step-0000002"
    # a run whose record names no pack run resumes on its checkpoint's
    _forget_pack_run(run)
    cli_ok(*REFINE, "--steps", "3")
    assert _trained_on(run) == "pa" and latest_checkpoint(run).name == "step-0000003"
    # which the record now names; another pack run given is refused
    out = cli_refused(ConfigError.exit_code, *REFINE, "--steps", "4", "--pack-run", "pb")
    assert "refine.pack_run: 'pa' → 'pb'" in out, out
    assert latest_checkpoint(run).name == "step-0000003"
    cli_ok(*REFINE, "--steps", "4", "--pack-run", "pa")
    assert latest_checkpoint(run).name == "step-0000004"
