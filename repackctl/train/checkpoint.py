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
  most a temporary folder, which ``latest_checkpoint`` ignores.
* The step is read from the folder name ``step-%07d`` only, and must agree with ``state.json``
  (the official code parsed it from arbitrary file names, ``reference/methods.md``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from repackctl.errors import CheckpointError
from repackctl.files import TMP_PREFIX, _fsync_dir

CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{7})$")
REQUIRED = ("model.safetensors", "ema.safetensors", "optim.pt", "state.json")
RESERVED = {"ema", "optim", "state", "config"}


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


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 0,
) -> Path:
    """Write ``checkpoints/step-%07d`` atomically and prune to the newest ``keep_last``.

    ``weights`` maps a file stem ("model", "ema", "disc", …) to a state dict; ``optim`` is saved to
    ``optim.pt`` and must hold only tensors, numbers, strings and containers of them.
    """
    for name in ("model", "ema"):
        if name not in weights:
            raise CheckpointError(f"checkpoint needs {name!r} weights", "pass them to save")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = {"format": "pt", "step": str(step)}
    for name, sd in weights.items():
        save_file(_safe_tensors(sd), str(tmp / f"{name}.safetensors"), metadata=meta)
    torch.save(optim, tmp / "optim.pt")
    state = dict(state, step=step, modules=sorted(k for k in weights if k != "ema"))
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f)
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. the final step of an extended run): swap
        trash = root / f"{TMP_PREFIX}old-{step_dir_name(step)}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left by killed writers; returns what was removed."""
    root = checkpoints_dir(run_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------- reading


def _step_of(folder: Path) -> int | None:
    m = STEP_RE.match(folder.name)
    return int(m.group(1)) if m else None


def is_complete(folder: Path) -> bool:
    """All files present and ``state.json`` readable with the step of the folder name."""
    step = _step_of(folder)
    if step is None or not folder.is_dir():
        return False
    if not all((folder / f).is_file() for f in REQUIRED):
        return False
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("step") != step:
        return False
    modules = state.get("modules", [])
    return all((folder / f"{m}.safetensors").is_file() for m in modules)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _require(ckpt_dir: Path, name: str) -> Path:
    path = Path(ckpt_dir) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing",
            "pass a complete checkpoint folder (runs/<name>/checkpoints/step-NNNNNNN)",
        )
    return path


def read_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a checkpoint (step, data position, resolved config, task extra, …)."""
    path = _require(Path(ckpt_dir), "state.json")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}", "use another checkpoint") from e


def load_weights(ckpt_dir: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The state dict stored as ``<name>.safetensors`` (on the CPU)."""
    return load_file(str(_require(Path(ckpt_dir), f"{name}.safetensors")))


def load_model_weights(ckpt_dir: str | os.PathLike, which: str = "ema") -> dict[str, torch.Tensor]:
    """Model weights for sampling: ``which="ema"`` (the averaged ones) or ``"model"`` (raw)."""
    if which not in ("ema", "model"):
        raise CheckpointError(f"unknown weights {which!r}", "use which='ema' or which='model'")
    return load_weights(ckpt_dir, which)


def load_optim(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``optim.pt`` without unpickling code (``weights_only=True``)."""
    path = _require(Path(ckpt_dir), "optim.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal means an unsafe/corrupt file
        raise CheckpointError(f"cannot load {path} safely: {e}", "use another checkpoint") from e
