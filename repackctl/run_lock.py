"""One training process per run folder: an advisory lock on ``<run>/train.lock``.

Two trainings of one run at once (a command started in two terminals, a job requeued while the
old one still runs) would both append to ``log.txt`` and ``metrics.jsonl``, rewrite
``config.json``, write checkpoints of the same steps, and the engine's clean-up of stale
temporaries at start could delete the other's checkpoint in flight. So every training stage takes
an exclusive ``flock`` on :data:`LOCK_FILE` before its first write into an existing run folder
(``repackctl.settings.resume.resume_settings``; for a folder it creates, the engine's start,
``repackctl.train.trainer``, or the PCA method's fit, which writes ``pca.json`` before the engine
starts: a second start of the same new run must not replace it) and gives it up when the stage or the training ends
(``released_after``, ``release_run``: a Python session that trained a run must not lock it out
for the rest of the session). The OS releases a flock when its process ends,
``kill -9`` included, so a lock is never left stale.
The holder writes its pid, host and start time into the file so that a refusal can name it.
``runs rm`` and ``demo --fresh`` ask :func:`lock_holder` (a try-lock released at once) and refuse
to delete a run that is being trained. ``import official`` holds ``<runs>/.import-<out>.lock``
while it converts and places its runs (:func:`hold_import_lock`), deleted when it ends.

Only the main process of a distributed job (``RANK`` 0, or no ``RANK``) takes the lock, so the
ranks of one job never refuse each other; the launcher (torchrun, accelerate) stops the other
ranks of a job whose main process was refused. Taking the lock again in the process that holds
it is a no-op (the demo trains several stages in one process). Without ``fcntl`` (Windows) there
is no lock: training goes on as before.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from repackctl.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, no refusals
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "train.lock"
# the same lock for a samples folder while `sample` or `refine apply` writes it
SAMPLES_LOCK = ".sample.lock"

# the open lock files of this process, by (device, inode) of the file: kept referenced so that
# they stay open (a closed file releases its flock) until the process ends
_HELD: dict[tuple[int, int], IO[bytes]] = {}


@dataclass(frozen=True)
class Holder:
    """What the process that holds a run's lock wrote into the lock file."""

    pid: int | None
    host: str | None
    since: str | None
    # the command that holds a run's lock without training it (``runs rm``); None: a training
    command: str | None = None

    def describe(self) -> str:
        """``pid 123, since 2025-01-02 03:04:05`` (and ``on HOST`` when another machine;
        prefixed by the command, ```repackctl runs rm`, pid 123``, for one that is not a training)."""
        if self.pid is None:
            return "pid unknown"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        by = f"`repackctl {self.command}`, " if self.command else ""
        return f"{by}pid {self.pid}{where}" + (f", since {self.since}" if self.since else "")

    def activity(self) -> str:
        """What the holder does to the run: ``being trained``, or ``being removed`` (runs rm)."""
        return "being trained" if self.command is None else "being removed"


def _main_process() -> bool:
    """True for the process of a distributed job that locks its run (rank 0), and a plain one."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _forget_removed() -> None:
    """Close the lock files of this process whose file was deleted (``runs rm``, ``demo
    --fresh``, a test's clean-up): their run is gone, and a new file may reuse the inode."""
    for key, f in list(_HELD.items()):
        if os.fstat(f.fileno()).st_nlink == 0:
            f.close()
            del _HELD[key]


def _held_here(path: Path) -> bool:
    """Whether this process holds the lock of the lock file at ``path``."""
    _forget_removed()
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _HELD


def _read_holder(f: IO[bytes]) -> Holder:
    """The holder the lock file names (fields it lacks are None)."""
    try:
        f.seek(0)
        data = json.loads(f.read(4096) or b"{}")
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    pid, command = data.get("pid"), data.get("command")
    return Holder(
        pid if isinstance(pid, int) else None,
        data.get("host"),
        data.get("since"),
        command if isinstance(command, str) else None,
    )


def _try_lock(f: IO[bytes], kind: int | None = None) -> bool | None:
    """Take ``f``'s exclusive flock without waiting: True when taken, False when another
    process holds it, None when the file system cannot lock (no refusal then)."""
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_EX if kind is None else kind) | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def lock_run(folder: str | os.PathLike, create: bool = False) -> None:
    """Hold the training lock of the run ``folder`` until this process ends.

    Refused with ``ConfigError`` (nothing written) when another process holds it. A folder that
    does not exist is left alone unless ``create`` (the engine, which creates it anyway): a
    start refused later for its settings leaves no folder behind. Where the lock file cannot
    be created or locked (a read-only folder, a file system without locks), nothing is locked:
    the write that follows reports a read-only folder as it always did."""
    _lock_folder(Path(folder).expanduser(), LOCK_FILE, _busy, create)


def lock_samples(folder: str | os.PathLike) -> None:
    """Hold the writer's lock of the samples ``folder`` (it exists) until this process ends or
    ``released_after`` gives it up: two processes that sample into one folder (the same
    command twice, two jobs of a sweep with one derived folder name) each checked the other's
    files against their own records and one stopped with a false "damaged" error."""
    _lock_folder(Path(folder).expanduser(), SAMPLES_LOCK, _samples_busy, False)


def _lock_folder(
    folder: Path, name: str, busy: Callable[[Path, Holder], ConfigError], create: bool
) -> None:
    """The lock file ``name`` of ``folder``, taken (see ``lock_run``); ``busy`` words the
    refusal when another process holds it."""
    path = folder / name
    if fcntl is None or not _main_process() or _held_here(path):
        return
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            return
        f = open(path, "a+b")  # creates it; writes nothing before the lock is taken
    except OSError:
        return
    taken = _try_lock(f)
    if not taken:
        holder = _other_holder(f) if taken is False else None
        f.close()
        if holder is None:
            return
        raise busy(folder, holder)
    st = os.fstat(f.fileno())
    _HELD[(st.st_dev, st.st_ino)] = f
    _write_record(f)


def _other_holder(f: IO[bytes]) -> Holder:
    """The record of the process that holds ``f``'s lock (read again after a moment when it
    took the lock an instant ago and has not written its record yet)."""
    holder = _read_holder(f)
    if holder.pid is None:
        time.sleep(0.2)
        holder = _read_holder(f)
    return holder


def _write_record(f: IO[bytes], command: str | None = None) -> None:
    """This process's record (pid, host, start time; ``command``: one that holds a run's lock
    without training it) in the lock file ``f`` it holds."""
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    record: dict[str, object] = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    if command is not None:
        record["command"] = command
    f.truncate(0)
    f.write((json.dumps(record) + "\n").encode())
    f.flush()


def lock_holder(folder: str | os.PathLike) -> Holder | None:
    """The other process that trains the run ``folder`` now, or None (none, or this one).

    A try-lock released at once; the lock file is only read."""
    path = Path(folder).expanduser() / LOCK_FILE
    if fcntl is None or not path.is_file() or _held_here(path):
        return None
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:  # a shared try-lock: it conflicts with the holder's, and NFS grants it read-only
        taken = _try_lock(f, fcntl.LOCK_SH)
        if taken is False:
            return _read_holder(f)
        if taken:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


@contextmanager
def hold_run_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[bool]:
    """The training lock of the run ``folder`` (it exists) held while the block runs, so that
    no training starts in it (``runs rm``): yields True; False, without waiting, when another
    process holds it. Where nothing can be locked, True without a lock.

    With ``command`` (``runs rm``) its record (the command, this process's pid) replaces the
    last training's in the lock file: `runs info`, a training refused meanwhile and a second
    `runs rm` named that training's pid (long ended) as training the run."""
    path = Path(folder).expanduser() / LOCK_FILE
    if fcntl is None or _held_here(path):
        yield True
        return
    try:
        f = open(path, "a+b")
    except OSError:
        yield True
        return
    with f:
        taken = _try_lock(f)
        if not taken:  # False: another process holds it; None: nothing can be locked here
            yield taken is None
            return
        if command is not None:
            _write_record(f, command)
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino)
        _HELD[key] = f  # this process's own: lock_holder does not name it
        try:
            yield True
        finally:
            _HELD.pop(key, None)


def import_lock_name(out: str) -> str:
    """The lock file, in the runs root, of ``import official --out OUT`` (``out`` checked)."""
    return f".import-{out}.lock"


@contextmanager
def hold_import_lock(root: str | os.PathLike, out: str) -> Iterator[None]:
    """The lock of ``import official --out OUT`` into the runs root ``root`` (it exists), held
    while the block runs (converting and placing ``OUT-pack`` …). Two imports of one ``--out``
    at once each found no run in place, converted, and one stopped with a traceback when it
    renamed its run onto the other's: the second is now refused at once, naming the first
    (``ConfigError``), as a second training of a run is.

    The lock file is deleted when the block ends (an import that fails leaves nothing in the
    runs folder), while it is still held; a process that opened it before then and takes it
    after finds it deleted and locks the new file instead (:func:`_same_file`). A killed import
    leaves it, unlocked: the next import of that ``--out`` takes it and deletes it."""
    path = Path(root).expanduser() / import_lock_name(out)
    f = _taken_import_lock(path, out) if fcntl is not None else None
    try:
        yield
    finally:
        if f is not None:
            path.unlink(missing_ok=True)  # still held: see the docstring
            f.close()


def _taken_import_lock(path: Path, out: str) -> IO[bytes] | None:
    """The open lock file ``path``, locked, with this process's record in it; None where
    nothing can be locked (the import goes on, as a training does); ``ConfigError`` when
    another process holds it."""
    while True:
        try:
            f = open(path, "a+b")
        except OSError:
            return None
        taken = _try_lock(f)
        if taken is None:
            f.close()
            return None
        if taken is False:
            holder = _other_holder(f)
            f.close()
            raise ConfigError(
                f"another `repackctl import official --out {out}` is importing into "
                f"{path.parent} ({holder.describe()}); nothing was written there",
                "wait for it to finish, then run the same command again (runs it placed from "
                "the same files are kept as they are); or pass another --out",
            )
        if _same_file(f, path):
            break
        f.close()  # deleted by the import that held it: lock the file in its place
    _write_record(f)
    return f


def _same_file(f: IO[bytes], path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not deleted or replaced)."""
    try:
        st = path.stat()
    except OSError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class _FolderHandle:
    """An open folder (``os.open``) kept in ``_HELD`` like a lock file: the lock of a pipeline
    folder is a flock on the folder itself, so that it adds no file to the folder."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


def lock_pipeline(folder: str | os.PathLike, command: str) -> None:
    """Hold the lock of the pipeline folder ``folder`` (it exists; ``command``: the command that
    writes it, ``repackctl demo`` …) until this process ends or ``released_after`` gives it
    up. A second ``repackctl demo`` into the same folder went through the stages the first had
    finished, started a refiner beside the first's (both writing ``refine.log``) and stopped
    only at the run the first was training; one that came later could rewrite the report the
    first was writing. It is refused at once.
    """
    path = Path(folder).expanduser()
    if fcntl is None or not _main_process() or _held_here(path):
        return
    try:
        handle = _FolderHandle(os.open(path, os.O_RDONLY))
    except OSError:
        return
    taken = _try_lock(handle)  # type: ignore[arg-type]
    if not taken:  # None: a file system without locks, nothing is held (as for a run's lock)
        handle.close()
        if taken is None:
            return
        raise ConfigError(
            f"{path} is in use by another `{command}` (it holds the folder's lock); "
            "nothing was written there",
            "wait for it to finish (or stop it), then run the command again; or pass another --out",
        )
    st = os.fstat(handle.fd)
    _HELD[(st.st_dev, st.st_ino)] = handle  # type: ignore[assignment]


def _busy(folder: Path, holder: Holder) -> ConfigError:
    return ConfigError(
        f"run {folder} is {holder.activity()} by another process ({holder.describe()}); "
        "nothing was written there",
        "wait for it to finish, or stop it, then run the command again; or pass another "
        "--name to start a separate run",
    )


def _samples_busy(folder: Path, holder: Holder) -> ConfigError:
    return ConfigError(
        f"samples folder {folder} is being written by another process ({holder.describe()}); "
        "nothing was written there",
        "wait for it to finish, then run the same command again (it takes the finished "
        "folder as it is); or pass another --out",
    )


def release_run(folder: str | os.PathLike) -> None:
    """Give up this process's lock of the run ``folder`` (a training ended): a Python session
    that trained a run in-process must not keep other processes from it. The file stays."""
    path = Path(folder).expanduser() / LOCK_FILE
    if fcntl is None or not _held_here(path):
        return
    st = path.stat()
    _release((st.st_dev, st.st_ino))


def _release(key: tuple[int, int]) -> None:
    """Unlock and close the lock file this process holds under ``key``."""
    f = _HELD.pop(key)
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    f.close()


@contextmanager
def released_after() -> Iterator[None]:
    """Give up, when the block ends however it ends, every run lock this process took in it: a
    stage holds its run's lock from its first write (``resume_settings``) to its end, also when
    it ends without training (nothing to train, a refusal). Also a decorator of a stage's
    function (``@released_after()``)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in set(_HELD) - before:
            _release(key)
