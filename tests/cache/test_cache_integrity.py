"""Cache integrity: a kill at every creation step is followed by a clean rerun; checksums and
`cache verify --repair`; readers refuse missing chunks; two concurrent extracts share the work."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread, subprocess_env, use_sandbox
from typer.testing import CliRunner

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.crash import CRASH_ENV
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets

runner = CliRunner()
EXTRACT = ["extract", "--encoder", "patchpix", "--num", "24", "--resolution", "32"]
EXTRACT += ["--shard", "8", "--chunk", "4", "--batch-size", "4"]
PACK = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-c", "4", "--ch", "8"]
PACK += ["--batch-size", "8", "--log-every", "2", "--image-every", "0", "--steps", "2"]
PACK += ["--gan-start", "100", "--name", "enc"]


#: A python process that imports torch and the CLI once, then runs each request (a JSON line:
#: argv, environment changes, output files) in a forked child of its own, a real process that
#: exits (or dies at its crash point, status 137) on its own, and answers with its exit status.
#: The kill tests' runs cost one fork each instead of one torch import each (~3 s of CPU).
_FORK_SERVER = """
import json, os, sys, threading, traceback
import torch
import repackctl.cli.app, repackctl.cli.extract, repackctl.cli.pack, repackctl.cli.cache
import repackctl.extract, repackctl.pack.encode
assert threading.active_count() == 1, threading.enumerate()  # forking a threaded process hangs
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(req["set"])
            for name in req["unset"]:
                os.environ.pop(name, None)
            for fd, path in ((1, req["out"]), (2, req["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["repackctl", *req["argv"]]
            try:
                repackctl.cli.app.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class _Forks:
    """``python -m repackctl ARGS`` runs in the sandbox of ``tmp``, each a forked child of one
    :data:`_FORK_SERVER` (the environment of ``subprocess_env(tmp)``, as a test subprocess)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            env=subprocess_env(tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a child that hangs is killed with the server's group
        )

    def __call__(self, *args: str, crash: str | None = None) -> subprocess.CompletedProcess:
        out, err = self.tmp / "fork.out", self.tmp / "fork.err"
        req = {"argv": list(args), "out": str(out), "err": str(err)}
        req |= {"set": {CRASH_ENV: crash} if crash else {}, "unset": [] if crash else [CRASH_ENV]}
        assert self.server.stdin and self.server.stdout
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        if not select.select([self.server.stdout], [], [], 300)[0]:  # as `timeout=300` was
            os.killpg(self.server.pid, signal.SIGKILL)
            pytest.fail(f"repackctl {' '.join(args)}: no exit in 300 s")
        answer = self.server.stdout.readline()
        assert answer, f"the fork server ended: {self.server.wait()}"
        return subprocess.CompletedProcess(args, int(answer), out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.server.stdin
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture
def cli(tmp_path) -> Iterator[_Forks]:
    """`repackctl` runs of one test in the sandbox: one torch import, a real process per run."""
    forks = _Forks(tmp_path)
    try:
        yield forks
    finally:
        forks.close()


def _arrays(cache: Path) -> dict[str, np.ndarray]:
    """Every array of every (complete) group of the single entry, by path."""
    (name,) = list_entries(str(cache))
    e = DatasetEntry.open(str(cache), name)
    out = {k: e.group[k][:] for k in ("images", "labels", "keys", "done")}
    for kind in ("features", "latents", "triplets"):
        for gname in e.complete_groups(kind):
            for aname, arr in e.group[kind][gname].arrays():
                out[f"{kind}/{gname}/{aname}"] = arr[:]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted extract + pack train + pack encode (the arrays every rerun must equal)."""
    tmp = tmp_path_factory.mktemp("ref")
    # in-process, one thread and the environment of `cli`: the arrays of a subprocess, bit for bit
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, tmp)
        for args in (EXTRACT, PACK, ["pack", "encode", "--run", "enc"]):
            res = runner.invoke(app, args)
            assert res.exit_code == 0, res.output
            if args is EXTRACT:  # the cache as extract leaves it, for the encode tests
                shutil.copytree(tmp / "cache", tmp / "extracted")
    return tmp


def _no_traceback_listing(tmp: Path, said: str = "incomplete") -> None:
    """`cache ls` and `cache verify` describe the killed run's leftovers (in-process: a listing
    reads files only, it needs no process of its own)."""
    for args in (["cache", "ls"], ["cache", "verify"]):
        res = runner.invoke(app, [*args, "--cache", str(tmp / "cache")])
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert "Traceback" not in res.output and said in res.output, res.output


@pytest.mark.slow
def test_kill_while_extract_creates_then_rerun(tmp_path, reference, cli):
    # one kill after each creation step in turn, each run on what the killed ones left (every
    # step is reached: the earlier ones are done), then one clean rerun. "discard": the second
    # run, removing the unfinished entry the first left, is killed after moving it out of the
    # cache's tree (deleted in place, a kill left a folder without zarr.json that every later
    # extract refused as "not part of the cache")
    for step in ("entry", "discard", "images", "features", "tokens"):
        res = cli(*EXTRACT, crash=step)
        assert res.returncode == 137, step + res.stdout + res.stderr
        _no_traceback_listing(tmp_path, "" if step == "discard" else "incomplete")
    res = cli(*EXTRACT)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert not (tmp_path / "cache" / ".removing").exists()  # the killed discard's rest: gone
    ref = {k: v for k, v in _arrays(reference / "cache").items() if "latents/" not in k}
    _assert_same(_arrays(tmp_path / "cache"), ref)


@pytest.mark.slow
def test_kill_while_encode_creates_then_rerun(tmp_path, reference, cli):
    shutil.copytree(reference / "runs", tmp_path / "runs")
    shutil.copytree(reference / "extracted", tmp_path / "cache")
    for step in ("latents", "std"):  # as for extract: one kill after each step in turn
        res = cli("pack", "encode", "--run", "enc", crash=step)
        assert res.returncode == 137, step + res.stdout + res.stderr
        _no_traceback_listing(tmp_path)
    res = cli("pack", "encode", "--run", "enc")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    _assert_same(_arrays(tmp_path / "cache"), _arrays(reference / "cache"))


_TRIPLETS = """
import sys
from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.cli.app import app
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets
cache, runs = sys.argv[1:3]
pack = load_pack("enc", runs=runs)
entry = DatasetEntry.open(cache, list_entries(cache)[0])
build_triplets(entry, pack.features_id, pack, batch_size=4)
"""


@pytest.mark.slow
def test_kill_while_triplets_are_created_then_rerun(tmp_path, reference):
    shutil.copytree(reference / "runs", tmp_path / "runs")
    for sub in ("a", "b"):
        shutil.copytree(reference / "cache", tmp_path / sub)
    cmd = [sys.executable, "-c", _TRIPLETS, str(tmp_path / "a"), str(tmp_path / "runs")]
    env = subprocess_env(tmp_path)
    res = subprocess.run(cmd, env=env | {"REPACKCTL_TEST_CRASH_AFTER": "triplets"})
    assert res.returncode == 137
    (name,) = list_entries(str(tmp_path / "a"))
    assert DatasetEntry.open(str(tmp_path / "a"), name).incomplete_groups() == [
        "triplets/"
        + (DatasetEntry.open(str(tmp_path / "a"), name).group["triplets"].groups().__next__()[0])
    ]
    assert subprocess.run(cmd, env=env).returncode == 0
    with one_torch_thread():  # an uninterrupted run, in-process, one thread like `cmd`
        pack = load_pack("enc", runs=str(tmp_path / "runs"))
        b = str(tmp_path / "b")
        entry = DatasetEntry.open(b, list_entries(b)[0])
        build_triplets(entry, pack.features_id, pack, batch_size=4)
    _assert_same(_arrays(tmp_path / "a"), _arrays(tmp_path / "b"))
    assert any(k.startswith("triplets/") for k in _arrays(tmp_path / "a"))


# --------------------------------------------------------------------------- checksums, verify


def _copy_reference(reference: Path, tmp_path: Path) -> tuple[Path, str]:
    for sub in ("cache", "runs"):
        shutil.copytree(reference / sub, tmp_path / sub)
    (name,) = list_entries(str(tmp_path / "cache"))
    return tmp_path / "cache" / name, name


def _shard(folder: Path, k: int) -> Path:
    """The shard file ``k`` of a sample-indexed array folder (c/k/0/0/…)."""
    (path,) = [p for p in (folder / "c" / str(k)).rglob("*") if p.is_file()]
    return path


def _flat(res) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(res.output.split())


def _damage_three_ways(a: Path, b: Path, c: Path) -> None:
    a.unlink()  # missing
    data = b.read_bytes()
    b.write_bytes(data[: len(data) // 2])  # truncated
    data = bytearray(c.read_bytes())
    data[10] ^= 0xFF  # one flipped byte inside the first chunk
    c.write_bytes(bytes(data))


@pytest.mark.slow
def test_new_arrays_carry_crc32c(reference):
    (name,) = list_entries(str(reference / "cache"))
    e = DatasetEntry.open(str(reference / "cache"), name)
    (lid,) = e.latent_ids()
    for arr in (e.images, e.features(e.feature_ids()[0])["tokens"], e.latents(lid)["mean"]):
        (sharding,) = arr.metadata.codecs
        assert "Crc32cCodec" in repr(sharding.codecs) and "Crc32cCodec" in repr(
            sharding.index_codecs
        )


@pytest.mark.slow
def test_verify_reports_and_repair_rewrites_latents(tmp_path, reference):
    folder, name = _copy_reference(reference, tmp_path)
    (lat,) = [p for p in (folder / "latents").iterdir() if p.is_dir()]
    _damage_three_ways(_shard(lat / "mean", 0), _shard(lat / "mean", 1), _shard(lat / "std", 2))
    res = runner.invoke(app, ["cache", "verify"])
    out = _flat(res)
    assert res.exit_code != 0 and "Traceback" not in out
    assert re.search(r"mean: missing chunk c/0\S* \(rows 0–7\)", out), out
    assert re.search(r"mean: truncated chunk c/1\S* \(rows 8–15\)", out), out
    assert re.search(r"std: corrupt chunk c/2\S* \(rows 16–23\)", out), out
    res = runner.invoke(app, ["cache", "verify", name, "--repair"])
    assert res.exit_code == 0 and "24 rows marked pending" in _flat(res), res.output
    assert "repackctl pack encode --run enc" in _flat(res)
    res = runner.invoke(app, ["pack", "encode", "--run", "enc"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    _assert_same(_arrays(tmp_path / "cache"), _arrays(reference / "cache"))


@pytest.mark.slow
def test_verify_repair_then_extract_rewrites_images_and_tokens(tmp_path, reference):
    folder, name = _copy_reference(reference, tmp_path)
    (feat,) = [p for p in (folder / "features").iterdir() if p.is_dir()]
    _damage_three_ways(
        _shard(folder / "images", 1), _shard(feat / "tokens", 0), _shard(feat / "cls", 2)
    )
    res = runner.invoke(app, ["cache", "verify"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    for kind in ("images: missing", "tokens: truncated", "cls: corrupt"):
        assert kind in _flat(res), res.output
    assert runner.invoke(app, ["cache", "verify", "--repair"]).exit_code == 0
    with one_torch_thread():  # in-process, one thread, like the reference
        res = runner.invoke(app, EXTRACT)
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["cache", "verify"]).exit_code == 0
    _assert_same(_arrays(tmp_path / "cache"), _arrays(reference / "cache"))


TRAIN = ["train", "dit", "--size", "tiny", "--steps", "2", "-b", "8", "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["latents", "tokens"])
def test_training_on_a_lost_shard_is_an_error_not_zeros(tmp_path, reference, what):
    folder, name = _copy_reference(reference, tmp_path)
    if what == "latents":
        (lat,) = [p for p in (folder / "latents").iterdir() if p.is_dir()]
        _shard(lat / "mean", 1).unlink()
    else:
        (feat,) = [p for p in (folder / "features").iterdir() if p.is_dir()]
        _shard(feat / "tokens", 1).unlink()
    for mem in ("--in-memory", "--no-in-memory"):
        res = runner.invoke(app, [*TRAIN, mem, "--name", f"r-{what}{mem}"])
        out = _flat(res)
        assert res.exit_code != 0 and "Traceback" not in out, out
        assert "is missing" in out and "rows 8–15" in out
        assert f"repackctl cache verify {name} --repair" in out


# --------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_two_concurrent_extracts_share_the_shards(tmp_path, reference):
    env = subprocess_env(tmp_path, REPACKCTL_TEST_SHARD_DELAY="0.4")
    cmd = [sys.executable, "-m", "repackctl", *EXTRACT]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = []
    for out in outs:
        m = re.search(r"this process encoded (\d+) shard", out)
        assert m, out
        counts.append(int(m.group(1)))
    assert sum(counts) == 3, counts  # 24 samples in shards of 8: each shard encoded once
    ref = {k: v for k, v in _arrays(reference / "cache").items() if "latents/" not in k}
    _assert_same(_arrays(tmp_path / "cache"), ref)
    assert runner.invoke(app, ["cache", "verify"]).exit_code == 0


# --------------------------------------------------------------------------- fast, in process


@pytest.mark.parametrize("url", [False, True])
def test_incomplete_groups_are_recreated_and_lost_shards_refused(tmp_path, url):
    from zarr.core.sync import sync

    from repackctl.cache.creation import CREATING
    from repackctl.cache.integrity import GuardedArray, scan_array, store_key
    from repackctl.cache.store import open_root
    from repackctl.errors import CacheError

    root = f"memory://integrity-{tmp_path.name}" if url else str(tmp_path / "c")
    args = ("ds", "train", 16, 24, {"kind": "test"}, None, 4, 8)
    half = open_root(root).create_group("ds--train--16px", attributes={CREATING: True})
    half.create_array("images", shape=(24, 16, 16, 3), dtype="uint8")
    assert list_entries(root) == [] and list_entries(root, "incomplete") == ["ds--train--16px"]
    with pytest.raises(CacheError, match="incomplete"):
        DatasetEntry.open(root, "ds--train--16px")
    e = DatasetEntry.create_or_open(root, *args)
    assert list_entries(root) == ["ds--train--16px"] and CREATING not in e.attrs
    feats = e.create_or_open_features("enc", {"id": "enc"}, 1, 4, 2)
    feats["tokens"][:] = np.ones((24, 1, 4, 2), np.float16)
    feats.done[:] = np.ones(24, np.uint8)
    # a half-made latents group (marker still set) is listed, then recreated
    e.group.require_group("latents").create_group("lat", attributes={CREATING: True})
    assert e.latent_ids() == [] and e.incomplete_groups() == ["latents/lat"]
    grp, created = e.create_or_open_group("latents", "lat", {"a": 1})
    assert created and e.latent_ids() == ["lat"]
    # a lost shard of done rows: refused by readers, reported by the scan
    tokens = feats["tokens"]
    sync(tokens.store_path.store.delete(store_key(tokens, 1)))
    guarded = GuardedArray(tokens, feats.done[:] == 1, "entry tokens", "repair it")
    np.testing.assert_array_equal(guarded[0:8], 1)
    with pytest.raises(CacheError, match="rows 8–15 is missing"):
        guarded[4:12]
    with pytest.raises(CacheError, match="missing"):
        guarded[:]
    (d,) = scan_array(tokens, feats.done[:] == 1, "tokens")
    assert (d.kind, d.lo, d.hi) == ("missing", 8, 16)
