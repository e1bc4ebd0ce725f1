"""Atomic file writes (JSON, .npy, PNG), safetensors with a canonical header, file hashes, writable roots, stale temporaries, and
uint8 ↔ [−1, 1] image conversion.

Temporary names (all ours, so that a later run can recognise and remove them):
``.tmp-<name>.<w>`` (JSON), ``.<name>.<w>.tmp`` (PNG, .npy), ``.<name>.<w>.<hex>.tmp``
(``metrics.frechet.atomic_path``), where ``<w>`` is ``<pid>-<host>`` (``temp_names.writer_tag``);
``.tmp-step-…`` folders (checkpoints); private scratch folders ``<prefix><w>-<random>``
(:func:`remove_stale_writer_dirs`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from repackctl.temp_names import HOST, TEXT_TEMP, temp_writer, writer_tag

# image files every reader of a folder accepts (image sources, samples and reference folders)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".jfif"}
)
TMP_PREFIX = ".tmp-"  # temporary files and folders start with this; never read as results


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(obj, indent=1))


#: folders whose stale temporaries this process has removed (``write_text_atomic``)
_SWEPT: set[tuple[int, str]] = set()


def _is_text_temp(name: str) -> bool:
    """``.tmp-<name>.<pid>-<host>``: a temporary of :func:`write_text_atomic`."""
    return TEXT_TEMP.fullmatch(name) is not None


def write_text_atomic(path: Path, text: str) -> None:
    """Write text (UTF-8) through a temporary file and a rename: a kill leaves the old file or
    the new one, never half of one. The first such write into a folder in a process removes the
    temporaries that killed writers of this machine left there (``.tmp-<name>.<pid>-<host>``),
    and no other file: once per folder, since a samples folder's manifests are written per batch
    beside thousands of files."""
    key = (os.getpid(), str(path.parent))
    if key not in _SWEPT:
        remove_stale_temp_files(path.parent, _is_text_temp)
        _SWEPT.add(key)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{writer_tag()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file only
        raise


def save_safetensors(
    tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` with a canonical header: the same tensors and metadata
    always give the same bytes (and so the same sha256).

    safetensors writes ``__metadata__`` in the iteration order of a Rust ``HashMap``, which is
    random per save, in one process as in another (safetensors/safetensors#584, open in 0.8):
    two saves of the same weights differed in their header, and so in their sha256 and in
    every name made from it (a pack's id, the cache folder of its latents). The header is
    rewritten in place with its metadata keys sorted, padded to its length with spaces as
    safetensors pads it; the tensors, their offsets and the header's length stay as written.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # not seen (safetensors writes this compact JSON): keep as written
            return
        f.seek(8)
        f.write(text.ljust(size, b" "))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_HASHES: dict[tuple[str, int, int, int, int, int], str] = {}


def sha256_file_cached(path: str | Path) -> str:
    """``sha256_file`` computed once per process for a given file: its path, device, inode,
    size, mtime and ctime. Size and mtime alone matched a file rewritten in place with as many
    bytes and its mtime set back (``touch -r``, ``os.utime``, a copy keeping times) or
    rewritten within the filesystem's mtime granularity: the old file's hash was returned. The
    ctime cannot be set back by a user and moves with every write; a file replaced by a rename
    has another inode."""
    st = os.stat(path)
    key = (
        str(Path(path).resolve()),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def ensure_writable_dir(path: str | Path, what: str = "folder") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; a clean error otherwise.

    Catches a root that is a file, a root under a file, and a read-only root before anything is
    written, so the user sees ``Error:`` naming the path instead of a traceback.
    """
    from repackctl.errors import ConfigError

    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        cause = "is a file" if probe == path else f"sits under {probe}, which is a file"
        raise ConfigError(f"the {what} {path} {cause}", "point the setting at a folder")
    if not probe.exists():
        raise ConfigError(f"the {what} {path} cannot be created ({probe} is a broken link)", None)
    if not os.access(probe, os.W_OK | os.X_OK):
        cause = "is read-only" if probe == path else f"cannot be created: {probe} is read-only"
        raise ConfigError(
            f"the {what} {path} {cause}", "point the setting at a folder you can write to"
        )
    return path


def refuse_foreign_output(
    path: Path,
    ours: Callable[[Path], bool],
    what: str,
    owner: str,
    hint: str = "pass a new file name, or move that file away first",
    folder_hint: str | None = None,
) -> None:
    """Refuse, before any work, an output ``path`` that is a folder, or an existing file (or
    link) that ``ours`` does not recognise as one this tool wrote: writing it would replace a
    user's file. ``what`` names the setting ("--out"), ``owner`` what ours are ("a GPU check
    result"); the message says the file is left as it is."""
    from repackctl.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; it is left as it is", folder_hint or hint)
    if (path.exists() or path.is_symlink()) and not ours(path):
        raise ConfigError(f"{what} {path} exists and is not {owner}; it is left as it is", hint)


def is_no_space(e: OSError) -> bool:
    """True for a full disk or an exceeded quota."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def writer_gone(name: str) -> bool:
    """True when ``name`` is one of our temporaries whose writer ran on this machine and is no
    longer running (:func:`gone_here`)."""
    found = temp_writer(name)
    return found is not None and gone_here(*found)


def gone_here(pid: int, host: str | None) -> bool:
    """Whether the writer ``pid`` of machine ``host`` (None: a name of an older version, taken
    as this machine's) ran on this machine and is no longer running. Another machine's writer (a
    multi-node job on a shared filesystem, or another container) is never judged gone: its pid
    means nothing here."""
    return host in (None, HOST) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts; one of another user
    too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a child process (a DataLoader worker, or ``preexec_fn`` of a side process): have the
    kernel kill it when ``parent``, the process that started it, dies, so a ``kill -9`` of the
    parent leaves no orphan working on. Linux only (``prctl``); elsewhere nothing changes. The
    signal is tied to the thread that forked the child. A parent gone before the call (or just
    before ``prctl``) kills the child at once; a child of a forkserver (its parent is not
    ``parent``) is left as it is while ``parent`` lives."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    if os.getppid() != parent:  # gone already, or a forkserver started it (its death would count)
        if not pid_alive(parent):
            os.kill(os.getpid(), signal.SIGKILL)
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died just before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temp_files(
    folder: str | Path, ours: Callable[[str], bool] | None = None
) -> list[Path]:
    """Delete our temporary files in ``folder`` whose writer is gone; nothing else is touched.

    ``ours`` narrows what counts as ours (e.g. only temporaries of the files a command writes
    there): a user's file that merely looks like a temporary is then kept."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if ours is not None and not ours(p.name):
            continue
        if p.is_file() and not p.is_symlink() and writer_gone(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_stale_writer_dirs(base: str | Path, prefix: str) -> list[Path]:
    """Delete the folders ``<prefix><pid>-<host>-<random>`` directly in ``base`` (what
    ``tempfile.mkdtemp(prefix=f"{prefix}{writer_tag()}-")`` names) whose writer ran on this
    machine and is gone (:func:`gone_here`: a kill skipped its cleanup). Never a link, another
    machine's folder, a live process's, or any other name; names without the machine count as
    this machine's. Returns the folders removed."""
    import glob
    import re
    import shutil

    base = Path(base)
    stale = re.compile(rf"{re.escape(prefix)}(\d+)-(?:([0-9a-f]{{8}})-)?\w+")
    removed: list[Path] = []
    for old in sorted(base.glob(f"{glob.escape(prefix)}*")) if base.is_dir() else ():
        m = stale.fullmatch(old.name)
        if m and not old.is_symlink() and old.is_dir() and gone_here(int(m[1]), m[2]):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def read_json_object(path: Path, hint: str) -> dict[str, Any]:
    """The JSON object in ``path``; a ``DataError`` naming the file (and ``hint``) when it cannot
    be read, is not JSON (cut short, edited) or holds another kind of value."""
    from repackctl.errors import DataError

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0][:200]}", hint) from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not an object", hint)
    return data


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [−1, 1] → uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # (B, 3, H, W)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def from_uint8(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, H, W, 3) → (B, 3, H, W) in [−1, 1] (what the refiner is trained on)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (B, H, W, 3)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write one PNG through a temporary name: an existing PNG is always complete."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{writer_tag()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, Ctrl-C) leaves the old file only
        raise


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write one .npy (no pickles) through a temporary name: an existing file is complete."""
    tmp = path.with_name(f".{path.name}.{writer_tag()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, Ctrl-C) leaves the old file only
        raise


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
