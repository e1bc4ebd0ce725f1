"""Two real processes of one distributed job, started with the environment torchrun gives its
workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, …).

Without the ``torch.distributed.run`` launcher in between: the launcher is a third process that
imports torch (about 2.5 s of CPU) before it starts the workers. The tests of the CLI under the
real launcher (``sample``, ``extract``) keep ``torchrun``; the others start the workers here.
As torchrun does, a worker that fails stops the other one (it would wait in a collective).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(env: dict[str, str], rank: int, world: int, port: int) -> dict[str, str]:
    return env | {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_RANK": "0",
    }


@dataclass
class Job:
    """Both workers of one job; ``wait`` returns once both have ended."""

    procs: list[subprocess.Popen]
    files: list[tuple[IO[str], IO[str]]] = field(default_factory=list)  # (stdout, stderr)

    def wait(self, timeout: float = 240) -> tuple[int, str, str]:
        """(first non-zero return code or 0, rank 0's stdout, both stderrs)."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            if (
                any(p.returncode not in (None, 0) for p in self.procs)
                or time.monotonic() > deadline
            ):
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
        texts = []
        for files in self.files:
            for f in files:
                f.seek(0)
            texts.append((files[0].read(), files[1].read()))
            for f in files:
                f.close()
        code = next((p.returncode for p in self.procs if p.returncode != 0), 0)
        return code, texts[0][0], "\n".join(f"[rank {r}] {t[1]}" for r, t in enumerate(texts))


def start_two(argv: list[str], env: dict[str, str]) -> Job:
    """``torchrun --nproc_per_node 2 <argv>`` without the launcher process (argv: script + args,
    or ``-m module`` + args)."""
    port = free_port()
    # files, not pipes: a worker that fills a pipe nobody reads yet would block
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env=worker_env(env, rank, 2, port),
            stdout=files[rank][0],
            stderr=files[rank][1],
            text=True,
        )
        for rank in range(2)
    ]
    return Job(procs, files)
