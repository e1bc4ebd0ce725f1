"""`evaluate recon` / `evaluate probe` with ``-n`` above what an entry holds, and with an
``--entry`` the run cannot score as it is (audit A, findings 2 and 7).

2. ``-n N`` above the held-out entry's size scored all of it under the whole entry's report name
   (``subset: {"rule": "all"}``), and a probe's 4N above the training entry trained on all of
   it, without a word; `evaluate stats --num` refuses the same request.
7. An ``--entry`` at another resolution than the run trained at, or one without the run's
   features, got the run's own extract as the hint (its training data, ``-n``, default
   resolution): following it wrote another entry and the same error came back.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import cli_ok, cli_refused
from support.stack import build_val_stack, stack_env

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError, ConfigError

VAL = "builtin-n3--val--32px"
CPU = ["--device", "cpu"]
EXTRACT = ["extract", "-e", "patchpix", "--split", "val", "--num-workers", "0", *CPU]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    """extract (16 built-in train images, 32 px) → pack-tiny, plus a val entry of 3."""
    return build_val_stack(tmp_path_factory.mktemp("num-entry-stack"))


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _written(env: dict[str, str]) -> list[str]:
    return sorted(p.name for p in Path(env["runs"]).glob("pack-tiny/checkpoints/*/*-builtin-*"))


def test_num_above_the_entry_is_refused(env):
    before = _written(env)
    recon = ["evaluate", "recon", "--run", "pack-tiny", "--entry", VAL, *CPU]
    out = cli_refused(ConfigError.exit_code, *recon, "-n", "4")
    assert f"-n 4 asks for 4 images of {VAL}, but it holds 3 usable images" in out, out
    assert "Hint: pass -n 3 or fewer (or leave -n out for all 3)" in out, out
    probe = ["evaluate", "probe", "--run", "pack-tiny", "--entry", VAL, "--epochs", "1", *CPU]
    out = cli_refused(ConfigError.exit_code, *probe, "-n", "4")  # 4N = 16 trains; 4 > 3 scored
    assert f"-n 4 asks for 4 images of {VAL}, but it holds 3" in out, out
    out = cli_refused(ConfigError.exit_code, *probe, "-n", "5")  # 4N = 20 > 16 training images
    assert "-n 5 trains the probe on 4N = 20 images of the pack run's training entry" in out
    assert "it holds 16 usable images" in out and "pass -n 4 or fewer (4N at most 16)" in out
    assert _written(env) == before  # nothing scored or written
    out = cli_ok(*recon, "-n", "3")  # the whole entry, as asked: scored
    assert f"{VAL} (3 images)" in out, out


def test_an_entry_at_another_resolution_is_named_as_such(env):
    cli_ok(*EXTRACT, "--resolution", "40", "-n", "3")
    out = cli_refused(
        CacheError.exit_code, "evaluate", "recon", "--run", "pack-tiny",
        "--entry", "builtin-n3--val--40px", *CPU,
    )  # fmt: skip
    assert "builtin-n3--val--40px is 40 px; pack run pack-tiny was trained on 32-px" in out, out
    assert f"Hint: pass an entry at 32 px with --entry ({VAL})" in out, out
    assert "repackctl extract" not in out  # no extract adds 32-px features to it


def test_an_entry_without_the_features_names_its_own_extract(env):
    cli_ok(*EXTRACT, "--resolution", "32", "-n", "2")
    entry = "builtin-n2--val--32px"
    (fid,) = DatasetEntry.open(env["cache"], entry).feature_ids()
    cli_ok("cache", "rm", entry, "--features", fid, "--yes")
    recon = ["evaluate", "recon", "--run", "pack-tiny", "--entry", entry, *CPU]
    out = cli_refused(CacheError.exit_code, *recon)
    hint = out.split("Hint: run `", 1)[1].split("` first", 1)[0]
    assert "--split val --resolution 32 -n 2" in hint, out  # this entry's, not the run's data
    cli_ok(*shlex.split(hint)[1:], "--num-workers", "0", *CPU)  # as the hint says
    assert f"{entry} (2 images)" in cli_ok(*recon)
