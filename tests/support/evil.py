"""A torch file whose full unpickling would run code (create a marker file)."""

from __future__ import annotations

from pathlib import Path

import torch


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_pickle(path: Path, marker: Path) -> Path:
    """A torch file whose full unpickling would create ``marker``."""
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    return path
