"""The commands that write what a cache entry lacks, for error hints (DESIGN.md §8).

An error about missing or unfinished cache contents ends with the exact command that creates
them. For encoder features that is a ``repackctl extract`` line: :func:`extract_command` builds it
from the user-level extract settings, :func:`entry_source` recovers those settings from what an
entry records (dataset name, image source, split, resolution), and :func:`entry_extract_command`
combines both for an entry that exists.
"""

from __future__ import annotations

import re
from typing import Any

from repackctl.cache.store import DatasetEntry


def extract_command(
    encoder: str = "builtin",
    data: str = "builtin",
    split: str = "train",
    resolution: int | None = None,
    num: int | str | None = None,
    weights: str | None = None,
    layer: int | str | None = None,
) -> str:
    """The ``repackctl extract`` command line that writes these features (defaults left out)."""
    parts = ["repackctl extract", f"--encoder {encoder}", f"--data {data}"]
    if split != "train":
        parts.append(f"--split {split}")
    if resolution is not None:
        parts.append(f"--resolution {resolution}")
    if num is not None:
        parts.append(f"-n {num}")
    if weights is not None:
        parts.append(f"--weights {weights}")
    if layer is not None:
        parts.append(f"--layer {layer}")
    return " ".join(parts)


def dataset_base(dataset: str) -> str:
    """Dataset name without the ``-nN`` subset suffix that extract adds for ``--num``."""
    head, sep, tail = dataset.rpartition("-n")
    return head if sep and tail.isdigit() else dataset


def entry_source(entry: DatasetEntry) -> dict[str, Any]:
    """The extract settings an entry records: ``data``, ``split``, ``resolution``, ``num``."""
    attrs = entry.attrs
    dataset = str(attrs.get("dataset", "builtin"))
    src = attrs.get("source") or {}
    if src.get("source") == "imagefolder" and src.get("root"):
        data = f"imagefolder:{src['root']}"
    else:
        data = dataset_base(dataset)
    m = re.match(r"^(.*)-n(\d+)$", dataset)
    return {
        "data": data,
        "split": str(attrs.get("split") or "train"),
        "resolution": entry.resolution,
        "num": m.group(2) if m else None,
    }


def entry_extract_command(entry: DatasetEntry, encoder: str, layer: str | None = None) -> str:
    """The ``repackctl extract`` command that writes features of ``encoder`` for this entry.

    ``layer`` is the layer part of a features id (``l8`` → ``--layer 8``; ``final`` is the default).
    """
    src = entry_source(entry)
    digits = layer[1:] if layer and layer.startswith("l") and layer[1:].isdigit() else None
    return extract_command(
        encoder, src["data"], src["split"], src["resolution"], src["num"], layer=digits
    )
