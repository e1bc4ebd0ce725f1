"""zarr's temporaries that a killed write leaves in a cache entry are swept, and named.

zarr's LocalStore writes each chunk and ``zarr.json`` to ``<key>.<uuid32>.partial`` and then
renames it. A kill between the two left that file (a whole chunk): the rerun wrote the chunk
again under another name and exited 0, `cache verify` said ok, `cache info` counted it, and
every further kill added one. Now the writer that is alone in the entry deletes them first
(``creation.entry_writer``), `cache verify` names them and `--repair` deletes them; neither
touches one while another writer holds the entry, nor a name that is not zarr's temporary.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import subprocess_env
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.cache.creation import entry_writer
from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError

ENTRY = "builtin-n16--train--32px"
base_cache, cache = patchpix_fixtures("kill-leftovers", 16)

#: runs `repackctl ARGS` and exits with 137, as a kill would, right before the ``os.<KILL_CALL>``
#: of a path matching the regex ``KILL_PAT`` (zarr's writes run on worker threads, where a
#: crash point cannot reach)
KILL = """
import os, re, runpy, sys
pat, name = re.compile(os.environ["KILL_PAT"]), os.environ["KILL_CALL"]
need = os.environ.get("KILL_HAS", "").encode()
orig = getattr(os, name)
def hook(src, *a, **k):
    s = os.fspath(src)
    if pat.search(s) and (not need or need in open(s, "rb").read()):
        os._exit(137)
    return orig(src, *a, **k)
setattr(os, name, hook)
sys.argv = ["repackctl", *sys.argv[1:]]
runpy.run_module("repackctl", run_name="__main__", alter_sys=True)
"""

EXTRACT = ["extract", "--encoder", "patchpix", "-n", "16", "--resolution", "32"]
EXTRACT += ["--chunk", "8", "--shard", "8", "--num-workers", "0"]


def killed(tmp_path: Path, argv: list[str], **hook: str) -> None:
    """Run ``repackctl ARGV`` in a subprocess killed where ``hook`` says (``KILL``)."""
    env = subprocess_env(tmp_path, **hook)
    cmd = [sys.executable, "-c", KILL, *argv]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 137, res.stdout + res.stderr


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob("*.partial"))


def test_a_killed_chunk_write_leaves_nothing_after_the_rerun(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    tok = r"/features/[^/]+/tokens/c/.*\.[0-9a-f]{32}\.partial$"
    killed(tmp_path, [*EXTRACT, "--cache", str(root)], KILL_CALL="replace", KILL_PAT=tok)
    (left,) = partials(root)
    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(root))
    assert "1 temporary file(s) of killed writes" in out and left.name in out, out
    cli_ok(*EXTRACT, "--cache", str(root))  # the rerun, alone in the entry, sweeps it
    assert partials(root) == []
    out = cli_ok("cache", "verify", "--cache", str(root))
    assert f"✓ {ENTRY}: ok" in out, out


def _plant(cache: Path) -> tuple[Path, Path, Path]:
    """A chunk temporary and an old metadata one (killed writes), and a metadata temporary
    written a moment ago (a live write outside the lock may rename it yet)."""
    entry = cache / ENTRY
    chunk = sorted(p for p in entry.rglob("tokens/c/*/*/*/0") if p.is_file())[0]
    leftover = chunk.with_name(f"0.{'a' * 32}.partial")
    shutil.copy(chunk, leftover)
    old = entry / "labels" / f"zarr.{'b' * 32}.partial"
    old.write_text("{}")
    os.utime(old, (time.time() - 60, time.time() - 60))
    fresh = entry / "images" / f"zarr.{'c' * 32}.partial"
    fresh.write_text("{}")
    return leftover, old, fresh


def test_verify_names_them_and_repair_deletes_them_unless_a_writer_is_in(cache: Path) -> None:
    leftover, old, fresh = _plant(cache)
    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(cache))
    assert "2 temporary file(s) of killed writes" in out and "`--repair` deletes" in out, out
    fd = os.open(cache / ENTRY, os.O_RDONLY)  # what a live writer in another process holds
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        out = cli_refused(
            CacheError.exit_code, "cache", "verify", "--repair", "--cache", str(cache)
        )
        assert "being written by another process" in out, out
    finally:
        os.close(fd)
    assert leftover.exists() and old.exists()
    out = cli_ok("cache", "verify", "--repair", "--cache", str(cache))
    assert f"repaired {ENTRY}: deleted 2 temporary file(s) of killed writes" in out, out
    assert not leftover.exists() and not old.exists() and fresh.exists()


def test_a_writer_sweeps_only_when_it_is_alone_in_the_entry(cache: Path) -> None:
    leftover, old, fresh = _plant(cache)
    group = DatasetEntry.open(str(cache), ENTRY).group
    fd = os.open(cache / ENTRY, os.O_RDONLY)  # another writer, in another process
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with entry_writer(group):  # not alone: sweeps nothing
            pass
    finally:
        os.close(fd)
    assert leftover.exists() and old.exists()
    with entry_writer(group):
        pass
    assert not leftover.exists() and not old.exists() and fresh.exists()


def test_a_writer_waits_out_a_brief_exclusive_hold_and_is_refused_after_writer_wait(
    cache: Path, monkeypatch
) -> None:
    """README: a writer that finds the entry locked exclusively waits up to 5 s
    (``WRITER_WAIT``: a check or a sweep holds it an instant) before it is refused as during a
    `cache rm`. The hold is another process's (flock is per open file description)."""
    import repackctl.cache.creation as creation

    assert creation.WRITER_WAIT == 5.0
    group = DatasetEntry.open(str(cache), ENTRY).group
    hold = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
    hold += (
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )

    def holder(seconds: float) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", hold, str(cache / ENTRY), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "held"
        return proc

    brief = holder(1.0)  # a check: released within the wait
    start = time.monotonic()
    with entry_writer(group):
        waited = time.monotonic() - start
    brief.wait(timeout=30)
    assert 0.5 < waited < creation.WRITER_WAIT, waited

    monkeypatch.setattr(creation, "WRITER_WAIT", 0.5)
    long = holder(30.0)  # a removal: held past the wait
    try:
        start = time.monotonic()
        try:
            with entry_writer(group):
                raise AssertionError("a writer started in an entry held exclusively")
        except CacheError:
            pass
        assert time.monotonic() - start >= 0.5
    finally:
        long.kill()
        long.wait(timeout=30)
