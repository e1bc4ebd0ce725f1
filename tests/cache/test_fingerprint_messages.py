"""What an extract rerun says about the files of an image folder entry is what is true.

1. An input skipped on the first extract and fixed since was still reported "corrupt or
   truncated" by every rerun, and `--strict` told the user to fix a file that read fine: a rerun
   now says the skip was recorded by an earlier extract (with the reason found then), that it is
   not retried, and how to include it (`cache rm` and extract again, which this test follows).
2. A damaged ``fingerprints`` chunk of a shard whose recorded rows are all skips was refused on
   every rerun, naming `cache verify --repair`, which does not look at such a chunk (it holds no
   written row) and said ok: a loop. Where such a shard was partly pending, the write read it
   unguarded (zarr's traceback). Skipped rows hold no fingerprint: the chunk is not read, and a
   shard written again overwrites it; a damaged chunk of written rows is still an ``Error:``
   naming the repair, which fixes it.
3. A shard another extract recorded a moment ago from files that changed since was left pending
   with "run the same extract again to encode the recorded images", but that rerun is refused:
   the warning names the files and says so.
4. A refusal of replaced files named 3 of them and "N more": every one is listed now (one
   ``Warning:`` line each), the ``Error:`` stays one line, and nothing is written.

Real image folders in ``tmp_path``, real Zarr caches, the CLI in-process; the race runs the other
extract as a real process while this one holds its first shard.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused, runner
from support.replaced import extract_args, folder_bytes, only_entry, replace_image

from repackctl.cache.store import FINGERPRINTS, PENDING, WRITTEN, DatasetEntry
from repackctl.cli.app import app
from repackctl.errors import CacheError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


def _lines(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


# ------------------------------------------------------------ 1. a recorded skip, fixed since
def test_skip_fixed_since_is_said_recorded_and_the_advice_includes_it(tmp_path, cache_root):
    folder = random_image_folder(tmp_path / "data")
    good = (folder / "cat" / "1.png").read_bytes()
    (folder / "cat" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    out = cli_ok(*extract_args(folder))
    assert "skipped cat/1.png: corrupt or truncated" in out, out
    assert "earlier extract" not in out, out  # found by this extract: true as it is
    name = only_entry(cache_root).name

    (folder / "cat" / "1.png").write_bytes(good)  # the user fixes the file
    for encoder in ("patchpix", "builtin"):  # a rerun, and another encoder's extract
        out = cli_ok(*extract_args(folder, encoder))
        assert (
            "skipped cat/1.png: corrupt or truncated when an earlier extract read it "
            "(not retried)" in out
        ), out
        assert "holds 1 input(s) that an earlier extract skipped" in out, out
        assert "never retries a recorded skip" in out, out
        assert f"`repackctl cache rm {name}`" in out, out

    res = runner.invoke(app, [*extract_args(folder), "--strict"])
    assert res.exit_code == DataError.exit_code, res.output
    (error,) = _lines(res.output, "Error:")
    assert (
        f"cache entry {name} recorded 1 input(s) as skipped when an earlier extract read them: "
        "cat/1.png (corrupt or truncated); nothing written" in error
    ), error
    hint = " ".join(res.output.split("Hint:")[1].split())
    assert "never retries a recorded skip" in hint and f"repackctl cache rm {name}" in hint
    assert "remove or fix those files" not in hint, hint  # the file reads: nothing to fix

    # the advice, as given: remove the entry, extract again: the fixed file is in
    cli_ok("cache", "rm", name, "--yes")
    out = cli_ok(*extract_args(folder), "--strict")
    assert "skipped" not in out.replace("skipped inputs", ""), out
    entry = only_entry(cache_root)
    assert (np.asarray(entry.done[:]) == WRITTEN).all()


def test_strict_names_unreadable_and_recorded_inputs_apart():
    from repackctl.extract import _strict_refusal

    message, hint = _strict_refusal("E", (1, ["a.png (empty file)"]), (2, ["b.png (too large)"]))
    assert message == (
        "--strict: 1 unreadable input(s): a.png (empty file); cache entry E recorded 2 input(s) "
        "as skipped when an earlier extract read them: b.png (too large); nothing written"
    )
    assert hint.startswith("remove or fix those files") and "`repackctl cache rm E`" in hint
    message, hint = _strict_refusal("E", (1, ["a.png (empty file)"]), (0, []))
    assert "recorded" not in message and "cache rm" not in hint


# ------------------------------------------------------------ 2. damaged fingerprints chunks
def _half_skipped_folder(root: Path) -> Path:
    """``a/`` (4 files, the first shard) that are no images, ``b/`` 4 images."""
    folder = random_image_folder(root, classes=("a", "b"), per=4)
    for path in (folder / "a").iterdir():
        path.write_bytes(b"not an image")
    return folder


def _damage(entry: DatasetEntry, chunk: int) -> None:
    path = Path(entry.group.store_path.store.root) / entry.name / FINGERPRINTS / "c" / str(chunk)
    (path / "0").write_bytes(b"garbage")


def test_damaged_chunk_of_skipped_rows_only_is_no_refusal_loop(tmp_path, cache_root):
    folder = _half_skipped_folder(tmp_path / "data")
    cli_ok(*extract_args(folder))
    entry = only_entry(cache_root)
    _damage(entry, 0)  # rows 0–3: all skipped (no fingerprint)
    # refused before, naming `cache verify --repair`, which found nothing to repair: for good
    out = cli_ok(*extract_args(folder))
    assert "already done │ 8" in out, out
    cli_ok(*extract_args(folder, "builtin"))
    assert "ok" in cli_ok("cache", "verify", entry.name)
    replace_image(folder / "b" / "2.png", seed=3)  # the written rows are still checked
    out = cli_refused(CacheError.exit_code, *extract_args(folder))
    assert "'b/2.png'" in out, out


def test_damaged_chunk_of_written_rows_names_the_repair_that_fixes_it(tmp_path, cache_root):
    folder = _half_skipped_folder(tmp_path / "data")
    cli_ok(*extract_args(folder))
    entry = only_entry(cache_root)
    reference = np.asarray(entry.fingerprints[:])
    _damage(entry, 1)  # rows 4–7: images
    out = cli_refused(CacheError.exit_code, *extract_args(folder))
    assert "fingerprints: corrupt or truncated chunk" in out, out
    assert f"repackctl cache verify {entry.name} --repair" in out, out
    cli_ok("cache", "verify", entry.name, "--repair")
    cli_ok(*extract_args(folder))
    np.testing.assert_array_equal(only_entry(cache_root).fingerprints[:], reference)
    assert "ok" in cli_ok("cache", "verify", entry.name)


def test_shard_partly_pending_with_a_damaged_chunk_of_skips_is_written(tmp_path, cache_root):
    """A shard whose recorded rows are skips and whose other rows are pending (an entry left so
    by other means: the commands mark whole shards): its write read the damaged chunk for the
    skips' rows, unguarded. They hold no fingerprint: it is written anew."""
    folder = random_image_folder(tmp_path / "data", classes=("a", "b"), per=4)
    for i in (2, 3):
        (folder / "a" / f"{i}.png").write_bytes(b"not an image")
    cli_ok(*extract_args(folder))
    entry = only_entry(cache_root)
    reference = np.asarray(entry.fingerprints[:])
    done = np.asarray(entry.done[:])
    assert done.tolist() == [WRITTEN] * 2 + [4] * 2 + [WRITTEN] * 4
    for codes in [entry.done, *(entry.features(f).done for f in entry.feature_ids())]:
        codes[:] = np.where(done == WRITTEN, PENDING, done).astype(np.uint8)
    _damage(entry, 0)
    out = cli_ok(*extract_args(folder))
    assert "written now │ 6" in out, out
    entry = only_entry(cache_root)
    np.testing.assert_array_equal(entry.fingerprints[:], reference)
    np.testing.assert_array_equal(entry.done[:], done)
    assert "ok" in cli_ok("cache", "verify", entry.name)


# ------------------------------------------------------------ 3. a shard recorded meanwhile
@pytest.mark.slow
def test_shard_recorded_meanwhile_from_a_changed_file_says_the_rerun_refuses(
    tmp_path, cache_root, monkeypatch
):
    """Another encoder's extract (a real process) records the entry's images while this one
    holds its first shard, then ``cat/1.png`` is replaced: this extract decodes the new file,
    its shard is left pending, and the rerun is refused until the file is restored."""
    import repackctl.extract as extract

    folder = random_image_folder(tmp_path / "data")
    original = (folder / "cat" / "1.png").read_bytes()
    other = [sys.executable, "-m", "repackctl", *extract_args(folder, "builtin")]
    calls = []

    def other_extract_then_replace() -> None:  # the hook of the concurrency tests
        if calls:
            return
        calls.append(1)
        res = subprocess.run(other, env=subprocess_env(tmp_path), capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        replace_image(folder / "cat" / "1.png", seed=5)

    with monkeypatch.context() as patched:  # (the sandbox's variables stay set)
        patched.setattr(extract, "test_delay", other_extract_then_replace)
        out = cli_ok(*extract_args(folder))
    assert calls and "samples 0..3 decoded otherwise than another extract" in out, out
    assert "1 of their files changed since it read them ('cat/1.png'" in out, out
    assert "run again refuses the entry until those files are restored" in out, out
    assert "to encode the images it recorded" not in out, out

    out = cli_refused(CacheError.exit_code, *extract_args(folder))  # as the warning said
    assert "'cat/1.png' (" in out, out
    (folder / "cat" / "1.png").write_bytes(original)  # restored (new times, same bytes)
    out = cli_ok(*extract_args(folder))
    assert "written now │ 4" in out and "already done │ 2" in out, out
    entry = only_entry(cache_root)
    for fid in entry.feature_ids():
        assert (np.asarray(entry.features(fid).done[:]) == WRITTEN).all(), fid
    assert "ok" in cli_ok("cache", "verify", entry.name)


# ------------------------------------------------------------ 4. every changed file is listed
def test_every_replaced_file_is_listed_and_the_error_is_one_line(tmp_path, cache_root):
    folder = random_image_folder(tmp_path / "data", per=4)
    cli_ok(*extract_args(folder))
    entry_dir = Path(cache_root) / only_entry(cache_root).name
    before = folder_bytes(entry_dir)
    replace_image(folder / "dog" / "0.png", seed=1)
    res = runner.invoke(app, extract_args(folder))
    assert res.exit_code == CacheError.exit_code and not _lines(res.output, "Warning: changed")
    changed = ["cat/0.png", "cat/3.png", "dog/1.png", "dog/2.png"]  # and dog/0.png: 5 of 8
    for i, key in enumerate(changed):
        replace_image(folder / key, seed=10 + i)
    res = runner.invoke(app, extract_args(folder))
    assert res.exit_code == CacheError.exit_code, res.output
    listed = _lines(res.output, f"Warning: changed since cache entry {entry_dir.name}")
    assert sorted(line.split(": ", 2)[2].split(" (")[0] for line in listed) == sorted(
        repr(k) for k in [*changed, "dog/0.png"]
    ), res.output
    (error,) = _lines(res.output, "Error:")  # one line, whatever the count
    assert "5 of 8 files" in error and "2 more: all 5 are listed above" in error, error
    assert "nothing was written" in error and "Hint:" in res.output
    assert folder_bytes(entry_dir) == before  # a refusal writes nothing
