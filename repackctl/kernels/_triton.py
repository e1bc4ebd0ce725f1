"""Guarded access to Triton: import on demand, JIT-decorate kernels on first launch.

``triton.jit`` decides at decoration time whether a kernel is compiled for the GPU or run by
Triton's NumPy interpreter (it reads ``TRITON_INTERPRET`` then). Kernels are therefore written
as plain functions and decorated lazily, once per interpreter setting, so that setting
``TRITON_INTERPRET=1`` after ``import repackctl.kernels`` (as the tests do) still takes effect.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any


@functools.cache
def triton_module() -> ModuleType | None:
    """The ``triton`` module, or None when it is not installed or fails to import."""
    try:
        import triton
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None
    return triton


def interpret_enabled() -> bool:
    """Whether Triton would run kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_JITTED: dict[tuple[Callable, bool], Any] = {}


def jit(fn: Callable) -> Any:
    """``triton.jit(fn)``, cached per function and per interpreter setting."""
    key = (fn, interpret_enabled())
    if key not in _JITTED:
        triton = triton_module()
        assert triton is not None, "resolve_backend must have checked that triton imports"
        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


def next_pow2(n: int) -> int:
    """Smallest power of two ≥ n (block sizes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())


def rows_per_block(width: int, budget: int = 4096) -> int:
    """Rows per program so one tile of ``width`` (a power of two) holds about ``budget`` values."""
    return max(1, min(64, budget // width))
