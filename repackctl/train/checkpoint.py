"""Checkpoint folders of a run (DESIGN.md §6): atomic writes, newest complete one, safe loading.

```
runs/<name>/config.json
runs/<name>/checkpoints/step-0000020/  model.safetensors  ema.safetensors  <other>.safetensors
                                       optim.pt  state.json
```

* Weights are safetensors; ``optim.pt`` holds only tensors and numbers (optimizers, schedulers,
  GradScaler) so it loads with ``torch.load(weights_only=True)``; RNG states are JSON lists in
  ``state.json``. Nothing is ever unpickled.
* A checkpoint is written into ``checkpoints/.tmp-step-…`` and renamed: a killed process leaves at
  most a temporary folder, which ``latest_checkpoint`` ignores. Re-saving a step that has a folder
  (a newer checkpoint that resume skipped) moves the old folder aside to ``.tmp-old-step-…``
  first; a kill between the two renames leaves no ``step-…`` folder, and the next run's
  ``remove_stale_temporaries`` puts back the new folder (when it verifies) or else the old one
  before it deletes temporaries. Rotation renames a folder to ``.tmp-pruned-…`` before deleting
  it, so a kill never leaves a half-deleted ``step-…`` folder, and always keeps the checkpoint
  just written (a newer, skipped folder may outnumber ``keep_last``). Rotation counts and
  deletes intact folders only (every file of the size and sha256 ``state.json`` records): a
  damaged or incomplete ``step-…`` folder neither takes a ``keep_last`` slot nor is deleted
  (it is left as it is, for the user to repair or remove). A re-save of its step keeps it too:
  it is renamed ``damaged-step-…-<n>`` (not a ``step-…`` folder: never listed, loaded or
  rotated; `runs info` shows it, `runs rm` deletes it with the run) with a warning naming both
  paths, and only an intact folder is swapped out and deleted (``_resave``).
  Folders in use elsewhere (``protect``: a pack checkpoint other runs decode with) are never
  deleted and take no slot.
* ``REPACKCTL_TEST_CKPT_KILL=<point>[@<step>]`` (crash tests only) SIGKILLs the process at a
  point of ``save_checkpoint``: ``written`` (temporary folder complete, nothing renamed),
  ``aside`` (re-save: old folder moved aside or kept, new one not in place), ``swapped``
  (re-save: new folder in place, old one not deleted), ``pruning`` (rotation: a folder
  renamed, not deleted).
* The step is read from the folder name ``step-%07d`` only, and must agree with ``state.json``
  (the official code parsed it from arbitrary file names, ``reference/methods.md``).
* ``state.json`` lists every other file's sha256 (``files``) and size (``sizes``), carries the
  sha256 of its own content (``state_sha256``: its latent stats, data position or config edited
  or damaged is a bad checkpoint, not other samples) and is validated (``checkpoint_state``); loading a file checks its size and hash first (the hash once
  per process), so corrupt or swapped weights are never used. ``verify_checkpoint`` is the one
  check of a folder (``checkpoint_problem`` says its verdict in a few words for ``repackctl
  runs``); without ``checksums`` it reads names, sizes and ``state.json`` only. Resume takes
  the newest checkpoint that verifies and says which newer ones it skipped and why; sampling,
  refining, evaluation and import refuse a run whose newest ``step-…`` folder fails, naming the
  bad file and the newest intact checkpoint (``checkpoint_for_loading``), never falling back.
* A checkpoint can be marked bad (``good: false``, e.g. saved after non-finite steps); rotation
  (``keep_last``) always keeps the newest good one, and resume skips bad ones. A folder marked
  bad but intact counts toward ``keep_last`` like a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from repackctl.errors import CheckpointError, RepackError
from repackctl.files import (
    TMP_PREFIX,
    _fsync_dir,
    ensure_writable_dir,
    is_no_space,
    save_safetensors,
    sha256_file_cached,
)
from repackctl.progress import warn as progress_warn
from repackctl.run_files import (
    KEPT_PREFIX,
    KEPT_STEP_DIR,
    STATE_SHA256,
    TMP_STEP_DIR,
    json_sha256,
)
from repackctl.train.checkpoint_state import CheckpointState, validate_state

CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{7})$")
REQUIRED = ("model.safetensors", "ema.safetensors", "optim.pt", "state.json")
RESERVED = {"ema", "optim", "state", "config"}
OLD_PREFIX = f"{TMP_PREFIX}old-"  # a step folder moved aside while it is re-saved
PRUNED_PREFIX = f"{TMP_PREFIX}pruned-"  # a step folder rotation is deleting
TMP_STEP_RE = re.compile(rf"^{re.escape(TMP_PREFIX)}(old-)?(step-\d{{7}})-(\d+)$")
KEPT_RE = re.compile(rf"^{KEPT_STEP_DIR.pattern}$")  # a damaged folder a re-save kept
KILL_ENV = "REPACKCTL_TEST_CKPT_KILL"
# sha256 of the files this process wrote, by (path, size, mtime) in their step folder, as
# ``sha256_file_cached`` keeps them: the rename of the folder would otherwise hash them again
_WRITTEN: dict[tuple[str, int, int], str] = {}


def _kill_point(point: str, step: int) -> None:
    """SIGKILL this process when the crash test asks for ``point`` (of ``step``, if it says one)."""
    want = os.environ.get(KILL_ENV)
    if want and want in (point, f"{point}@{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT_DIR


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + current CUDA device) RNG states as JSON-safe lists."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


# --------------------------------------------------------------------------- writing


def _safe_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no shared storage (tied weights are stored twice; safetensors refuses aliases)."""
    out, seen = {}, set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape))
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    """True when every floating tensor holds only finite numbers."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_floating_point(v))


def _nbytes(obj: Any) -> int:
    """Bytes of every tensor inside ``obj`` (nested dicts/lists): the size a checkpoint needs."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _write_files(
    tmp: Path,
    weights: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """All files of one checkpoint into ``tmp``; ``state.json`` last, with the others' sha256."""
    meta = {"format": "pt", "step": str(state["step"])}
    for name, sd in weights.items():
        save_safetensors(_safe_tensors(sd), tmp / f"{name}.safetensors", meta)
    torch.save(optim, tmp / "optim.pt")
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    written = sorted(tmp.iterdir())
    state["files"] = {p.name: sha256_file_cached(p) for p in written}
    state["sizes"] = {p.name: p.stat().st_size for p in written}  # checked without hashing
    doc = json.loads(json.dumps(state))  # as a reader parses it (tuples, int keys)
    doc[STATE_SHA256] = json_sha256(doc, STATE_SHA256)  # its own content (checked on reading)
    with open(tmp / "state.json", "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def _full_state(step: int, weights: dict, state: dict[str, Any], good: bool) -> dict[str, Any]:
    full = {"epoch": 0, "offset": 0, "rng": [], "extra": {}, "config": {}}
    full.update(state)
    full.update(step=step, modules=sorted(k for k in weights if k != "ema"), good=bool(good))
    return full


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 0,
    *,
    good: bool = True,
    protect: Collection[str] = (),
) -> Path:
    """Write ``checkpoints/step-%07d`` atomically and prune to the newest ``keep_last``.

    ``weights`` maps a file stem ("model", "ema", "disc", …) to a state dict; ``optim`` is saved to
    ``optim.pt`` and must hold only tensors, numbers, strings and containers of them.
    ``good=False`` marks the checkpoint bad (resume skips it; rotation never keeps it in place of
    the newest good one). ``protect``: step folders rotation keeps beyond ``keep_last``
    (:func:`rotate`). A full disk is a ``CheckpointError`` naming the path and the space the
    checkpoint needs; earlier checkpoints are untouched.
    """
    for name in ("model", "ema"):
        if name not in weights:
            raise CheckpointError(f"checkpoint needs {name!r} weights", "pass them to save")
    root = checkpoints_dir(run_dir)
    ensure_writable_dir(root, "checkpoint folder")
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        full = _full_state(step, weights, state, good)
        _write_files(tmp, weights, optim, full)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        need = _nbytes(weights) + _nbytes(optim)
        if is_no_space(e):
            raise CheckpointError(
                f"no space left on the device while writing checkpoint {final} (it needs about "
                f"{need / 2**20:.1f} MiB); earlier checkpoints are intact",
                "free disk space (or lower --keep-last) and run the same command again to resume",
            ) from None
        raise CheckpointError(f"cannot write checkpoint {tmp}: {e.strerror or e}", None) from None
    _kill_point("written", step)
    if final.exists():  # re-saving a step (a newer one that resume skipped)
        _resave(root, tmp, final, step)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    _remember_hashes(final, full["files"])
    if keep_last > 0:
        rotate(run_dir, keep_last, keep=final, protect=protect)
    return final


def _resave(root: Path, tmp: Path, final: Path, step: int) -> None:
    """Put the new folder ``tmp`` of ``step`` in place of the existing ``final``. An intact one
    (a checkpoint marked bad, re-saved) is swapped out and deleted: the new one replaces it. One
    that does not verify (damaged, edited, incomplete: resume skipped it) is kept, renamed to
    ``damaged-step-…-<n>`` (:func:`kept_damaged_name`), with a warning: it may be what other
    runs were made from, or what the user wants to repair or look into, and no command deletes
    what it did not write. No rename swaps two folders: a kill between the two leaves no step
    folder, and ``remove_stale_temporaries`` puts one back (``_restore_interrupted_resaves``);
    the kept folder is, at every instant, either at ``final`` or at its kept name."""
    intact = _verifies_as(final, step)
    problem = None if intact else checkpoint_problem(final) or "does not verify"
    trash = (
        root / f"{OLD_PREFIX}{step_dir_name(step)}-{os.getpid()}"
        if intact
        else kept_damaged_name(root, step)
    )
    os.replace(final, trash)
    _kill_point("aside", step)
    os.replace(tmp, final)
    _fsync_dir(root)
    _kill_point("swapped", step)
    if intact:
        shutil.rmtree(trash, ignore_errors=True)
        return
    progress_warn(
        f"checkpoint {final} did not verify ({problem}), so resume skipped it; it is kept as "
        f"{trash} (not a checkpoint: never loaded, counted or rotated; `repackctl runs rm` "
        f"deletes it with the run) and step {step} is saved anew at {final}"
    )


def kept_damaged_name(root: Path, step: int) -> Path:
    """A free name in the checkpoints folder ``root`` for a damaged folder of ``step`` that a
    re-save keeps: ``damaged-step-%07d-<n>``, ``n`` one more than any kept there already. Not a
    ``step-…`` name (never listed, loaded or rotated as a checkpoint, nor matched by a
    ``step-*`` glob) nor a temporary one (never deleted as a killed writer's)."""
    prefix = f"{KEPT_PREFIX}{step_dir_name(step)}-"
    kept = [KEPT_RE.match(p.name) for p in root.iterdir() if p.name.startswith(prefix)]
    taken = [int(m.group(2)) for m in kept if m]
    return root / f"{prefix}{max(taken, default=0) + 1}"


def kept_damaged(run_dir: str | os.PathLike) -> list[Path]:
    """The damaged step folders that re-saves of ``run_dir`` kept (:func:`kept_damaged_name`),
    oldest step first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if KEPT_RE.match(p.name)]
    return sorted(found, key=lambda p: (p.name.split("-")[2], int(p.name.rsplit("-", 1)[1])))


class Rotation(NamedTuple):
    """What :func:`rotate` did: the folders it deleted, and those it kept only because
    ``protect`` names them (beyond the newest ``keep_last``: others decode with them)."""

    removed: list[Path]
    in_use: list[Path]


def rotate(
    run_dir: str | os.PathLike,
    keep_last: int,
    keep: str | os.PathLike | None = None,
    protect: Collection[str] = (),
) -> Rotation:
    """Delete all but the newest ``keep_last`` intact checkpoints, never the newest good one nor
    ``keep`` (the one just written: newer folders that resume skipped may fill ``keep_last``).
    ``protect`` names step folders (``step-0000020``) in use elsewhere (the decoder of a DiT
    trained on a pack run's latents): they are never deleted and take no ``keep_last`` slot,
    and the others rotate as usual.

    Intact: complete, every file of the size and sha256 ``state.json`` records (``keep`` is not
    hashed again). A damaged or incomplete ``step-…`` folder neither counts toward ``keep_last``
    nor is deleted: it would push the good checkpoints out, and it may be what the user wants to
    repair or look into. Each folder is renamed to a temporary name first and deleted after, so
    a kill leaves a temporary (which the next run removes), never a half-deleted checkpoint."""
    just = Path(keep).name if keep is not None else None
    found = [p for p in list_checkpoints(run_dir) if p.name == just or _intact(p)]
    kept = set([p for p in found if p.name not in protect][-keep_last:])
    good = [p for p in found if _marked_good(p)]
    if good:
        kept.add(good[-1])
    if keep is not None:
        kept.add(Path(keep))
    in_use = [p for p in found if p.name in protect and p not in kept]
    removed = [p for p in found if p not in kept and p.name not in protect]
    for old in removed:
        aside = old.with_name(f"{PRUNED_PREFIX}{old.name}-{os.getpid()}")
        try:
            os.replace(old, aside)
        except OSError:  # gone already, or not renamable here: delete what can be deleted
            shutil.rmtree(old, ignore_errors=True)
            continue
        _kill_point("pruning", _step_of(old) or 0)
        shutil.rmtree(aside, ignore_errors=True)
    return Rotation(removed, in_use)


def _intact(folder: Path) -> bool:
    """Whether the step folder ``folder`` is complete and every file is of the size and sha256
    its ``state.json`` records (marked bad or not)."""
    step = _step_of(folder)
    return step is not None and _verifies_as(folder, step)


def _verifies_as(folder: Path, step: int) -> bool:
    """Whether ``folder`` (of any name) holds a complete checkpoint of ``step``: structure, step
    and every file's size and sha256 (a ``good: false`` one counts: it is what was saved)."""
    try:
        state = _check_structure(folder)
        for name in state.files:
            _verify_file(folder, name, state)
    except RepackError:
        return False
    return state.step == step


def _restore_interrupted_resaves(root: Path) -> list[Path]:
    """Put back the step folder of each re-save killed between its two renames (an
    ``.tmp-old-step-…`` folder, or a kept ``damaged-step-…`` one, and no ``step-…`` one): the
    new folder when it verifies, else the old one (a kept damaged folder stays where it is).
    Returns the step folders restored."""
    temps: dict[tuple[str, bool], list[Path]] = {}
    kept = set()
    for p in sorted(root.iterdir()):
        m, k = TMP_STEP_RE.match(p.name), KEPT_RE.match(p.name)
        if m and p.is_dir():
            temps.setdefault((m.group(2), bool(m.group(1))), []).append(p)
        elif k and p.is_dir():
            kept.add(k.group(1))
    restored = []
    for name in sorted({k[0] for k in temps if k[1]} | (kept & {k[0] for k in temps})):
        final = root / name
        if final.exists():
            continue
        step = _step_of(final) or 0
        new = [p for p in temps.get((name, False), []) if _verifies_as(p, step)]
        found = new or temps.get((name, True), [])
        if found:
            os.replace(found[-1], final)
            restored.append(final)
    if restored:
        _fsync_dir(root)
    return restored


def restore_interrupted_resaves(run_dir: str | os.PathLike) -> list[Path]:
    """Put back the step folder of each re-save of ``run_dir`` killed between its two renames,
    with a warning each; returns them. The engine does it at its start; a stage calls it as soon
    as it holds the run's lock, before it reads the newest checkpoint (a run whose only
    checkpoint was being re-saved must not look like a run without one). Only the main process
    of a distributed job renames (the one that holds the lock)."""
    root = checkpoints_dir(run_dir)
    main = os.environ.get("RANK", "0") == "0"
    restored = _restore_interrupted_resaves(root) if main and root.is_dir() else []
    for final in restored:
        progress_warn(f"restored checkpoint {final.name}, whose re-save was interrupted")
    return restored


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Check the run folder can be written, put back step folders of re-saves killed between
    their renames, then delete the temporary folders of killed writers: only folders named as
    the checkpoint writer names them (:data:`repackctl.run_files.TMP_STEP_DIR`: a save, a
    re-save's old folder, a pruning). Any other ``.tmp-*`` path there is the user's and stays
    (every one was deleted, a user's ``.tmp-backup`` folder too, that `runs rm` calls theirs)."""
    ensure_writable_dir(run_dir, "run folder")
    root = checkpoints_dir(run_dir)
    removed = []
    restore_interrupted_resaves(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if TMP_STEP_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------- reading


def _step_of(folder: Path) -> int | None:
    m = STEP_RE.match(folder.name)
    return int(m.group(1)) if m else None


def _check_structure(folder: Path) -> CheckpointState:
    """Every file present, state valid, step agrees with the folder name (no hashing)."""
    folder = Path(folder)
    for name in REQUIRED:  # a missing file first: it is what a half-copied folder lacks
        _require(folder, name)
    path = folder / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:  # present a moment ago (``_require``)
        raise _vanished(path, e) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}", "use another checkpoint") from None
    recorded = data.get(STATE_SHA256) if isinstance(data, dict) else None
    if recorded is not None and recorded != json_sha256(data, STATE_SHA256):
        raise CheckpointError(
            f"{path} does not match the sha256 it was written with (edited or damaged)",
            "use another checkpoint",
        )
    state = validate_state(data, path)
    step = _step_of(folder)
    if step is not None and state.step != step:
        raise CheckpointError(
            f"{path}: field step is {state.step}, the folder says {step}", "use another checkpoint"
        )
    for name in (*(f"{m}.safetensors" for m in state.modules), *state.files):
        _require(folder, name)
    unlisted = [n for n in REQUIRED if n != "state.json" and n not in state.files]
    if unlisted:
        raise CheckpointError(f"{path}: field files lacks {unlisted[0]}", "use another checkpoint")
    return state


def _marked_good(folder: Path) -> bool:
    try:
        return _check_structure(folder).good
    except RepackError:
        return False


def is_complete(folder: Path) -> bool:
    """All files present and ``state.json`` valid with the step of the folder name."""
    if _step_of(folder) is None or not folder.is_dir():
        return False
    try:
        _check_structure(folder)
    except RepackError:
        return False
    return True


class _Refused(CheckpointError):
    """A ``CheckpointError`` that also says in a few words why (``runs`` listings show it)."""

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason


DAMAGED = "use another checkpoint of the run (a damaged copy, or a file replaced by hand)"


class _Vanished(CheckpointError):
    """A checkpoint file that was there a moment ago and is gone when read: another process
    removed or replaced the folder (a training pruning or re-saving it, a copy over it).
    Choosing a run's newest checkpoint chooses again (``checkpoint_for_loading``)."""


def is_vanished(e: BaseException) -> bool:
    """Whether ``e`` is the error of a checkpoint file removed while it was read (``_Vanished``):
    running the command again is its repair, whoever rewrites the error of a damaged file."""
    return isinstance(e, _Vanished)


def _vanished(path: Path, e: OSError) -> _Vanished:
    """The error of ``path`` gone while it was read (``e``), in place of the traceback of the
    ``FileNotFoundError``."""
    return _Vanished(
        f"{path} vanished while it was read ({e.strerror or e}): another process removed or "
        "replaced its checkpoint folder",
        "run the command again once that process (a training saving or pruning checkpoints, "
        "a copy or removal of the run) is done",
    )


def _verify_file(folder: Path, name: str, state: CheckpointState, checksum: bool = True) -> Path:
    """The file, present and listed in ``state.json``, of the size it records (when it records
    sizes) and, with ``checksum``, of the sha256 it records."""
    path = _require(folder, name)
    want = state.files.get(name)
    if want is None:
        raise CheckpointError(
            f"{folder / 'state.json'}: field files has no checksum of {name}",
            "use another checkpoint",
        )
    try:
        size, recorded = path.stat().st_size, state.sizes.get(name)
    except FileNotFoundError as e:  # present a moment ago (``_require``)
        raise _vanished(path, e) from None
    if recorded is not None and size != recorded:
        raise _Refused(
            f"{path} is corrupt: it has {size} bytes, state.json records {recorded}",
            DAMAGED,
            f"corrupt ({name}: {size} bytes, state.json records {recorded})",
        )
    if checksum and (got := _sha256(path)) != want:
        raise _Refused(
            f"{path} is corrupt: its sha256 {got[:12]}… differs from the one in state.json "
            f"({want[:12]}…)",
            DAMAGED,
            f"corrupt ({name})",
        )
    return path


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _remember_hashes(folder: Path, files: dict[str, str]) -> None:
    """Note the sha256 of the files of ``folder`` that this process just wrote and renamed."""
    for name, digest in files.items():
        with contextlib.suppress(OSError):
            _WRITTEN[_stat_key(folder / name)] = digest


def _sha256(path: Path) -> str:
    """``sha256_file_cached``, or the sha256 this process wrote the file with; a file gone
    meanwhile is a ``_Vanished`` error naming it."""
    try:
        known = _WRITTEN.get(_stat_key(path))
    except OSError:
        known = None
    if known is not None:
        return known
    try:
        return sha256_file_cached(path)
    except FileNotFoundError as e:
        raise _vanished(path, e) from None


def weights_sha256(ckpt_dir: str | os.PathLike, which: str = "ema") -> str:
    """The sha256 of a checkpoint's ``<which>.safetensors`` as it is on disk now (the digest a
    loaded model is identified by: pack ids, samples cards), or an error naming the file when
    another process removed it since it was loaded (no ``FileNotFoundError`` traceback)."""
    return _sha256(Path(ckpt_dir) / f"{which}.safetensors")


def _check_finite_file(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = f.get_tensor(key)
                if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
                    raise CheckpointError(
                        f"{path} holds non-finite values (tensor {key})",
                        "use an earlier checkpoint of the run",
                    )
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}", None) from None


def verify_checkpoint(
    folder: str | os.PathLike, check_finite: bool = False, *, checksums: bool = True
) -> CheckpointState:
    """The one check of a checkpoint folder before it is used or listed as complete (resume,
    sampling, import, ``repackctl runs``); a failure is a ``CheckpointError`` naming the file.

    Always (names, sizes and ``state.json`` only): ``state.json`` valid with the step of the
    folder name, every file present, the checkpoint not marked bad, and every file of the size
    ``state.json`` records (checkpoints written before sizes were recorded skip this).
    ``checksums`` (what loading does): every file's sha256 as well, which reads every byte.
    ``check_finite`` (resume): every weight file is read and holds only finite values.
    """
    folder = Path(folder)
    state = _check_structure(folder)
    if not state.good:
        raise _Refused(
            f"{folder} is marked bad (state.json good: false)",
            "use an earlier checkpoint",
            "marked bad (good: false)",
        )
    for name in sorted(state.files):
        path = _verify_file(folder, name, state, checksums)
        if check_finite and name.endswith(".safetensors"):
            _check_finite_file(path)
    return state


def checkpoint_problem(folder: str | os.PathLike, *, checksums: bool = True) -> str | None:
    """``verify_checkpoint``'s verdict in a few words, for listings: None when the folder passes,
    else e.g. ``optim.pt is missing``, ``marked bad (good: false)``, ``corrupt (ema.safetensors)``
    (sha256), ``corrupt (optim.pt: 10 bytes, state.json records 20)`` (size)."""
    folder = Path(folder)
    try:
        verify_checkpoint(folder, checksums=checksums)
    except _Refused as e:
        return e.reason
    except CheckpointError as e:
        return e.message.replace(f"{folder}{os.sep}", "")
    return None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (structure only; see ``verify_checkpoint``)."""
    return [p for p in _step_folders(run_dir) if is_complete(p)]


def _step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The run's ``step-…`` folders, oldest first (none when it has no checkpoints folder)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if _step_of(p) is not None and p.is_dir()), key=_step_of
    )


def latest_checkpoint(
    run_dir: str | os.PathLike,
    *,
    warn: Callable[[str], None] | None = progress_warn,
    check_finite: bool = True,
) -> Path | None:
    """The newest checkpoint that verifies, or None; each newer one skipped is reported to ``warn``."""
    for folder in reversed(_step_folders(run_dir)):
        try:
            verify_checkpoint(folder, check_finite=check_finite)
        except RepackError as e:
            if warn is not None:
                warn(f"skipping checkpoint {folder.name}: {e.message}")
            continue
        return folder
    return None


def checkpoint_to_resume(
    run_dir: str | os.PathLike, warn: Callable[[str], None] | None = progress_warn
) -> Path | None:
    """``latest_checkpoint`` for a resume: None only for a run without step folders.

    A run whose every ``step-…`` folder fails verification (a half-copied run, damaged files) is
    a ``CheckpointError``: training on from step 0 would truncate its metrics and re-save or
    rotate away the very folders a user could still repair or finish copying."""
    skipped: list[str] = []
    latest = latest_checkpoint(run_dir, warn=skipped.append)
    if latest is None and skipped:
        newest = skipped[0].removeprefix("skipping checkpoint ")
        raise CheckpointError(
            f"none of the {len(skipped)} checkpoint(s) of {run_dir} can be resumed from "
            f"(newest {newest}); training would start again at step 0 over them",
            "repair or finish copying its checkpoints/ folder, or move its step-… folders "
            "out of it to train the run again from step 0, or use a new --name",
        )
    if warn is not None:
        for message in skipped:
            warn(message)
    return latest


def checkpoint_for_loading(path: str | os.PathLike) -> Path | None:
    """For sampling, refining, evaluation and import: a checkpoint folder, or a run's newest
    checkpoint, verified; None when the run has no checkpoint.

    No fallback: a run's newest ``step-…`` folder that fails verification (``state.json``
    edited, cut or removed, a file missing or of another size or sha256) is an error naming
    it and the file, never silently replaced by an older checkpoint (resume falls back, with a
    warning: ``latest_checkpoint``). Such a folder was finished and damaged afterwards: a save
    writes ``.tmp-step-…`` and renames it complete, a re-save moves the old folder to
    ``.tmp-old-…``, a pruning renames to ``.tmp-pruned-…`` before it deletes: a kill leaves
    those temporaries, never a partial ``step-…`` folder, and they are skipped here (a folder
    half-deleted by an earlier version's pruning is older than the intact one it kept). A
    folder its writer marked bad (``good: false``) is skipped, as resume skips it."""
    path = Path(path)
    if (path / "state.json").exists() or _is_step_folder(path):
        verify_checkpoint(path)
        return path
    for _ in range(3):  # a folder pruned by a training while it was read: choose again
        newest = _newest_to_load(path)
        if newest is None:
            return None
        try:
            verify_checkpoint(newest)
        except (CheckpointError, OSError) as e:
            if isinstance(e, (_Vanished, FileNotFoundError)) or not newest.is_dir():
                continue  # removed or replaced while it was read: choose again
            raise _damaged_newest(path, newest, e) from None
        return newest
    raise CheckpointError(
        f"the checkpoints of {path} were removed while they were read (a training pruning it?)",
        "run the command again once the run's training has saved its next checkpoint",
    )


def _is_step_folder(path: Path) -> bool:
    """Whether ``path`` names a checkpoint folder of a run (``…/checkpoints/step-…``), with or
    without its ``state.json``: verified as a checkpoint, not read as a run without any."""
    return _step_of(path) is not None and path.parent.name == CKPT_DIR and path.is_dir()


def _newest_to_load(run_dir: Path) -> Path | None:
    """The run's newest ``step-…`` folder not marked bad by its writer, intact or not."""
    for folder in reversed(_step_folders(run_dir)):
        try:
            if not _check_structure(folder).good:
                continue
        except RepackError:
            pass  # damaged: verifying it names what
        return folder
    return None


def _damaged_newest(run_dir: Path, newest: Path, e: CheckpointError | OSError) -> CheckpointError:
    """The error of a run whose newest checkpoint ``newest`` fails verification (``e``): it
    names the folder and the file, and the newest intact checkpoint to name instead, with the
    flag that takes it for the run's kind (``_folder_example``)."""
    why = e.message if isinstance(e, CheckpointError) else f"{e.strerror or e}: {e.filename}"
    good = latest_checkpoint(run_dir, warn=None)  # newest fails: the newest intact older one
    fix = (
        f"restore {newest.name} from a copy, or move it out of {newest.parent} "
        f"(`repackctl runs info {run_dir.name}` lists the state of every checkpoint)"
    )
    hint = (
        f"{fix}; the run has no other intact checkpoint"
        if good is None
        else f"to use {good.name}, the newest intact checkpoint, pass its folder {good} in "
        f"place of the run{_folder_example(good)}; or {fix}"
    )
    return CheckpointError(
        f"checkpoint {newest.name}, the newest of run {run_dir.name}, is damaged: {why} "
        "(no older checkpoint is used in its place)",
        hint,
    )


#: how each stage's run is named to the commands that load it, for ``_folder_example``:
#: ``--checkpoint`` picks a checkpoint of the run ``sample --run`` names (a DiT or a
#: text-to-image run), never of a refiner or pack run given beside it
_FOLDER_FLAGS = {
    "dit": "`--run {good}` with `sample`, or `--checkpoint {name}` with `sample --run`",
    "t2i": "`--run {good}` with `sample`, or `--checkpoint {name}` with `sample --run`",
    "refine": "`--refiner {good}` with `sample` or `refine apply`",
    "pack": "`--run {good}` with `pack encode` or `evaluate recon`, `--pack-run {good}` with "
    "`refine train`",
}


def _folder_example(good: Path) -> str:
    """`` (e.g. …)``: the flag that takes ``good`` for the run kind at hand (its ``state.json``
    stage), so that the hint of a damaged refiner or pack run never names ``--checkpoint``,
    which would pick a checkpoint of the DiT given to ``sample --run``; empty for a stage not
    known here (the folder in place of the run always works)."""
    try:
        stage = (read_state(good).get("extra") or {}).get("stage")
    except (RepackError, OSError):
        return ""
    example = _FOLDER_FLAGS.get(str(stage))
    return f" (e.g. {example.format(good=good, name=good.name)})" if example else ""


def _require(ckpt_dir: Path, name: str) -> Path:
    path = Path(ckpt_dir) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing",
            "pass a complete checkpoint folder (runs/<name>/checkpoints/step-NNNNNNN)",
        )
    return path


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a checkpoint (step, data position, resolved config, task extra, …),
    validated; a malformed field is a ``CheckpointError`` naming it."""
    folder = Path(ckpt_dir)
    _check_structure(folder)
    path = folder / "state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise _vanished(path, e) from None


def _verified(ckpt_dir: str | os.PathLike, name: str) -> Path:
    """The file, its sha256 checked against ``state.json`` (a bare folder of weights files with
    no ``state.json`` is no checkpoint: nothing resumes or samples from it, so it is read as is)."""
    folder = Path(ckpt_dir)
    path = _require(folder, name)
    if not (folder / "state.json").exists():
        return path
    return _verify_file(folder, name, _check_structure(folder))


def load_weights(ckpt_dir: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The state dict stored as ``<name>.safetensors`` (on the CPU), checksum-verified and finite."""
    path = _verified(ckpt_dir, f"{name}.safetensors")
    try:
        sd = load_file(str(path))
    except FileNotFoundError as e:
        raise _vanished(path, e) from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}", None) from None
    bad = [k for k, v in sd.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite values (tensor {bad[0]})", "use an earlier checkpoint"
        )
    return sd


def load_model_weights(ckpt_dir: str | os.PathLike, which: str = "ema") -> dict[str, torch.Tensor]:
    """Model weights for sampling: ``which="ema"`` (the averaged ones) or ``"model"`` (raw)."""
    if which not in ("ema", "model"):
        raise CheckpointError(f"unknown weights {which!r}", "use which='ema' or which='model'")
    return load_weights(ckpt_dir, which)


def load_optim(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``optim.pt`` without unpickling code (``weights_only=True``), checksum-verified."""
    path = _verified(ckpt_dir, "optim.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal means an unsafe/corrupt file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"cannot load {path} safely: {first}", "use another checkpoint"
        ) from e
