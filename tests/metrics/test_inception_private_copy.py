"""The private copy of the Inception weights that torch-fidelity loads (``InceptionExtractor``).

It went to ``tempfile.mkdtemp(prefix="repackctl-inception-")`` and was removed once the model
was built: a kill during the build (Ctrl-C twice, the OOM killer, a job's time limit) left
~91 MB in the temporary folder each time, which nothing removed. The folder now names its
writer (``repackctl-inception-<pid>-<host>-<random>``), and each build first removes the
folders of this machine's killed builds, and nothing else: not a live process's, not another
machine's (a shared temporary folder), not a link, not a user's folder of a similar name.

Real subprocesses building the extractor, one killed at a kill point (``repackctl.crash``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env
from support.kill import dead_pid

from repackctl.crash import CRASH_ENV
from repackctl.temp_names import HOST

PREFIX = "repackctl-inception-"
CRASH = "inception-private-copy"  # after the copy is written, before the model is built
BUILD = (
    "import sys; from repackctl.metrics.inception import InceptionExtractor as E; E(sys.argv[1])"
)


def _build(tmp: Path, weights: Path, root: Path, **extra: str) -> tuple[int, int, str]:
    """Build the extractor in a real subprocess whose temporary folder is ``tmp``: its exit
    status, pid and stderr."""
    env = subprocess_env(root, TMPDIR=str(tmp), **extra)
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(weights)], env=env, stderr=subprocess.PIPE, text=True
    )
    _, err = proc.communicate(timeout=300)
    return proc.returncode, proc.pid, err


def _ours(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith(PREFIX)}


def test_a_killed_build_leaves_a_copy_that_the_next_build_removes(tmp_path, inception_file):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = dead_pid()
    (tmp / f"{PREFIX}{dead}-{HOST}-k1lled").mkdir()  # a build of this machine, killed
    (tmp / f"{PREFIX}{dead}-{HOST}-k1lled" / "weights.pth").write_bytes(b"x" * 1000)
    (tmp / f"{PREFIX}{dead}-0123abcd-other").mkdir()  # another machine's: its pid means nothing
    (tmp / f"{PREFIX}notes").mkdir()  # a user's folder of a similar name
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("kept")
    (tmp / f"{PREFIX}{dead}-{HOST}-alink").symlink_to(target)  # a link: never followed
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp / f"{PREFIX}{live.pid}-{HOST}-running").mkdir()  # a live build's
        kept = {
            f"{PREFIX}{dead}-0123abcd-other",
            f"{PREFIX}notes",
            f"{PREFIX}{dead}-{HOST}-alink",
            f"{PREFIX}{live.pid}-{HOST}-running",
        }

        code, pid, err = _build(tmp, inception_file, tmp_path, **{CRASH_ENV: CRASH})
        left = _ours(tmp) - kept
        assert f"{PREFIX}{dead}-{HOST}-k1lled" not in left, "the dead build's copy was not swept"
        assert code == 137, err[-2000:]
        (copy,) = left  # the killed build's own folder, named after it
        assert copy.startswith(f"{PREFIX}{pid}-{HOST}-")
        assert any(p.stat().st_size > 10_000_000 for p in (tmp / copy).iterdir())

        code, _, err = _build(tmp, inception_file, tmp_path)
        assert code == 0, err[-2000:]
        assert _ours(tmp) == kept  # the killed copy removed, its own removed at the end
        assert (target / "keep.txt").read_text() == "kept"
    finally:
        live.kill()
        live.wait()
