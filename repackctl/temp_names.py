"""The names of repackctl's temporary files: one table for every reader of them.

A write goes through a temporary beside its target and a rename (``repackctl.files``,
``repackctl.metrics.frechet.atomic_path``), so a killed writer leaves a temporary. Three readers
need to know these names: the sweeps that remove a dead writer's temporaries (the writer's pid),
the run-folder check that tells repackctl's files from a user's (the file a temporary becomes,
``repackctl.run_files``) and the samples folder's sweep (both). Free of imports, so that the
settings layer, which loads ``repackctl.run_files`` without torch, can use it.

A writer's pid means something on its own machine only: a process of another node (a
multi-node job on a shared filesystem) or of another container may have the same pid, or none
here. So the temporaries name the writer's machine too (``<pid>-<host>``, :func:`writer_tag`),
and a sweep judges only its own machine's; those of older versions, written without one, count
as this machine's (as before).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket

#: this machine, as temporaries name it: 8 hex digits of the sha256 of its host name (a
#: container has its own host name, and its own pids)
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_PID = r"(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?"


def writer_tag() -> str:
    """``<pid>-<host>``: the part of a temporary's name that names its writer."""
    return f"{os.getpid()}-{HOST}"


#: Each form names the file the temporary becomes (``name``) and, but for two forms written
#: without one, the writer's pid (``pid``) and machine (``host``; None in older names). The
#: more specific form comes first: a temporary of ``atomic_path`` whose eight hex digits happen
#: to be decimal ones also fits
#: ``.<name>.<pid>.tmp``, which would read those digits as the pid (a live writer's temporary
#: taken for a dead one's).
TEMP_FORMS = (
    re.compile(rf"\.(?P<name>.+)\.{_PID}\.[0-9a-f]{{8}}\.tmp"),  # frechet.atomic_path
    re.compile(rf"\.(?P<name>.+)\.{_PID}\.tmp"),  # write_png_atomic, write_npy_atomic
    re.compile(rf"\.tmp-(?P<name>.+)\.{_PID}"),  # write_text_atomic
    re.compile(r"\.tmp-(?P<name>.+)"),  # .tmp-curves.png (repackctl.train.logging)
    re.compile(r"\.(?P<name>.+)\.tmp"),  # .prompts.txt.tmp, .latents.npy.tmp (sample folders)
)
#: the form of ``write_text_atomic``'s temporaries, ``.tmp-<name>.<pid>-<host>``
TEXT_TEMP = TEMP_FORMS[2]


def _with_pid(name: str) -> re.Match[str] | None:
    """The first form of :data:`TEMP_FORMS` that fits ``name`` and names a pid."""
    for form in TEMP_FORMS:
        m = form.fullmatch(name)
        if m is not None and m.groupdict().get("pid") is not None:
            return m
    return None


def temp_parts(name: str) -> tuple[str, int] | None:
    """``(the file it becomes, the writer's pid)`` when ``name`` is one of our temporary names
    that carries a pid (the first form of :data:`TEMP_FORMS` that fits), else None."""
    m = _with_pid(name)
    return None if m is None else (m.group("name"), int(m.group("pid")))


def temp_writer(name: str) -> tuple[int, str | None] | None:
    """``(the writer's pid, its machine)`` when ``name`` is one of our temporary names that
    carries a pid; the machine is None for names written before they carried one."""
    m = _with_pid(name)
    return None if m is None else (int(m.group("pid")), m.group("host"))


def temp_targets(name: str) -> list[str]:
    """The names of the files that ``name`` can be a temporary of (every form of
    :data:`TEMP_FORMS` that fits, with or without a pid); none when it is no temporary name."""
    found = [m.group("name") for form in TEMP_FORMS if (m := form.fullmatch(name))]
    return [t for t in found if t not in (".", "..")]
