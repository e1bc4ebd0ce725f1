"""The crash tests' kill switch: ``REPACKCTL_TEST_CRASH_AFTER=<step>`` makes the process exit at
once with status 137, as ``kill -9`` would, at the point of the code named ``<step>`` (cache
creation steps, ``cache-rm``, ``runs-rm``, refiner PNGs, ``train-step-<N>`` after a
training step …). Without the variable it does nothing.
No imports of the package: any module may call it."""

from __future__ import annotations

import os

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "REPACKCTL_TEST_CRASH_AFTER"


def crash_point(step: str) -> None:
    """Exit at once (status 137, like a kill) when the crash test asks for ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)
