"""`repackctl plugins --check` fails (non-zero, one Error line naming them) when a plugin does not
load or an id is registered twice; the listing is printed first either way.

A real throwaway distribution: a ``*.dist-info`` folder on PYTHONPATH whose entry points name a
module that does not exist and an id the built-ins already use. No pip, no mocks: a real
`repackctl` subprocess reads it through ``importlib.metadata`` like an installed plugin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from repackctl.errors import RegistryError


@pytest.fixture
def broken_plugin(tmp_path) -> Path:
    """A folder holding the distribution ``brokenplug`` 0.1 (two bad entry points)."""
    site = tmp_path / "site"
    info = site / "brokenplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[repackctl.encoders]\n"
        "brokenenc = brokenplug_missing_module:build\n"
        "\n[repackctl.models]\n"
        "tiny = brokenplug_missing_module:tiny\n"  # `tiny` is a built-in id: a duplicate
    )
    return site


def _plugins(tmp_path: Path, site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repackctl", "plugins", *args],
        env=subprocess_env(tmp_path, PYTHONPATH=str(site), COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_check_fails_naming_the_broken_and_duplicated_plugins(tmp_path, broken_plugin):
    res = _plugins(tmp_path, broken_plugin, "--check")
    assert res.returncode == RegistryError.exit_code, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: 2 plugins failed to load: brokenenc (repackctl.encoders), tiny (repackctl.models)"
    ], res.stderr
    assert "Hint:" in res.stderr and "REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1" in res.stderr
    # the listing still comes first, with the reason of each failure in its status column
    rows = {tuple(line.split()[:3]): line for line in res.stdout.splitlines()}
    broken = rows[("brokenenc", "repackctl.encoders", "brokenplug")]
    assert "error:" in broken and "brokenplug_missing_module" in broken
    assert "duplicate" in rows[("tiny", "repackctl.models", "brokenplug")]
    assert "loaded" in rows[("builtin", "repackctl.encoders", "repackctl")]


@pytest.mark.slow
def test_listing_without_check_and_builtins_only_still_succeed(tmp_path, broken_plugin):
    listed = _plugins(tmp_path, broken_plugin)  # no import attempted: nothing can fail
    assert listed.returncode == 0, listed.stderr
    assert "brokenenc" in listed.stdout and "not loaded" in listed.stdout
    builtins = _plugins(tmp_path, broken_plugin, "--check", REPACKCTL_DISABLE_PLUGIN_AUTOLOAD="1")
    assert builtins.returncode == 0, builtins.stderr
    assert "Error:" not in builtins.stderr
    line = next(x for x in builtins.stdout.splitlines() if x.startswith("brokenenc"))
    assert "disabled" in line
    # the built-in `tiny` that a disabled plugin also names is the one loaded: no duplicate
    rows = {tuple(x.split()[:3]): x for x in builtins.stdout.splitlines()}
    assert "disabled" in rows[("tiny", "repackctl.models", "brokenplug")]
    assert rows[("tiny", "repackctl.models", "repackctl")].split()[-1] == "loaded"
