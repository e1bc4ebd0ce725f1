"""`pack train`: the LPIPS weights (and Watson-DFT parameters) are checked before anything is read
in bulk or written, and an explicit perceptual weight needs its weights.

- `--perceptual-weight 2` without `--lpips-weights` trained without the term after a warning;
  now an Error with a Hint, while the default weight without weights still trains with the
  warning (presets name LPIPS; an offline machine has none);
- `--lpips-weights PATH` that is no file was found only once the features were open (loaded
  into memory with `--in-memory`), with a message naming no source; `--lpips-weights ,` ended in
  an IndexError traceback. Now both are refused first, naming the setting and its source, and
  an existing run's files stay byte for byte as they were.

Real CLI runs on a real patchpix cache."""

from __future__ import annotations

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files

from repackctl.errors import ConfigError
from repackctl.run_lock import LOCK_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

base_cache, cache = patchpix_fixtures("s30-term-files-cache", 16)

TINY = (
    *("pack", "train", "--preset", "small", "--encoder", "patchpix", "--resolution", "32"),
    *("-c", "4", "--ch", "8", "--batch-size", "8", "--log-every", "1", "--image-every", "0"),
    *("--device", "cpu", "--ckpt-every", "2"),
)


def test_an_explicit_perceptual_weight_without_lpips_weights_is_refused(cache, tmp_path):
    out = cli_refused(ConfigError.exit_code, *TINY, "--perceptual-weight", "2", "--name", "pw")
    assert "pack.perceptual_weight = 2.0 (from flag)" in out, out
    assert "pack.lpips_weights is not set" in out and "pass --lpips-weights with" in out, out
    assert not (tmp_path / "runs" / "pw").exists()
    # the default weight without weights: trained, with the warning
    out = cli_ok(*TINY, "--steps", "2", "--name", "pd")
    log = (tmp_path / "runs" / "pd" / "log.txt").read_text()
    assert "Warning: no LPIPS weights" in log, log


def test_lpips_weights_that_are_no_file_are_refused_before_anything_changes(cache, tmp_path):
    missing = tmp_path / "missing.safetensors"
    out = cli_refused(ConfigError.exit_code, *TINY, "--steps", "2", "--name", "new",
                      "--lpips-weights", str(missing), "--in-memory")  # fmt: skip
    assert f"pack.lpips_weights names {missing} (from flag), which is no file" in out, out
    assert "--perceptual-weight 0" in out, out
    assert not (tmp_path / "runs" / "new").exists()
    out = cli_refused(ConfigError.exit_code, *TINY, "--steps", "2", "--name", "new",
                      "--lpips-weights", ",")  # fmt: skip
    assert "pack.lpips_weights names ','" in out, out  # was an IndexError traceback
    # an existing run: resumed with a missing file (allowed), nothing of it changes
    cli_ok(*TINY, "--steps", "2", "--name", "old")
    run = tmp_path / "runs" / "old"
    before = folder_files(run, skip=(LOCK_FILE,))
    out = cli_refused(ConfigError.exit_code, *TINY, "--steps", "4", "--name", "old",
                      "--lpips-weights", str(missing), "--allow-change", "lpips_weights")  # fmt: skip
    assert f"pack.lpips_weights names {missing} (from flag)" in out, out
    assert folder_files(run, skip=(LOCK_FILE,)) == before
    out = cli_refused(ConfigError.exit_code, *TINY, "--steps", "2", "--name", "wat",
                      "--watson-weight", "0.01", "--watson-weights", str(missing))  # fmt: skip
    assert f"pack.watson_weights names {missing} (from flag), which is no file" in out, out
    assert not (tmp_path / "runs" / "wat").exists()
