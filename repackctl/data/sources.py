"""Image sources by id (builtin, imagefolder:PATH, imagenet[:PATH]) and their cache names."""

from __future__ import annotations

import inspect

from repackctl.data.base import ImageSource
from repackctl.errors import ConfigError
from repackctl.registry import registry


def default_resolution(data: str) -> int:
    """64 px for the built-in dataset, 256 px (the papers' setting) for real images."""
    return 64 if data.split(":")[0] == "builtin" else 256


def make_source(
    data: str,
    split: str,
    num: int | None,
    seed: int,
    imagenet_root: str | None,
    val_fraction: float | None = None,
) -> ImageSource:
    """Build the image source named by ``data`` (``builtin``, ``imagefolder:PATH``, …).

    ``val_fraction`` (a held-out split of a folder without split folders) goes to sources that
    take it; for any other source it is an error rather than silently ignored.
    """
    reg = registry("datasets")
    name, arg = reg.split_id(data)
    factory = reg.get(name)
    params = inspect.signature(factory).parameters
    kwargs: dict = {"path": arg, "split": split, "num": num, "seed": seed}
    if "root" in params:
        kwargs["root"] = imagenet_root
    if val_fraction is not None:
        if "val_fraction" not in params:
            raise ConfigError(
                f"--val-fraction only applies to image folders without split folders, not to "
                f"--data {data}",
                "drop --val-fraction (this source has its own splits: pass --split val)",
            )
        kwargs["val_fraction"] = val_fraction
    return factory(**kwargs)


def dataset_label(source: ImageSource, num: int | None) -> str:
    """The dataset part of the entry name: the source name, plus ``-nN`` for a chosen size."""
    if num is None or source.name.endswith(f"-n{len(source)}"):
        return source.name
    return f"{source.name}-n{len(source)}"
