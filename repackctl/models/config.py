"""What every model config shares: the latent grid it tokenises and an exact JSON round trip.

Model configs are frozen dataclasses with ``input_size`` (latent side h = w) and ``patch_size``;
checkpoints store ``to_dict()`` and rebuild the network from ``from_dict()`` (DiT ``models.py``
keeps sizes in code; here a checkpoint folder can rebuild its own model from its JSON).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from repackctl.errors import ConfigError


class GridConfig:
    """Mixin of model configs: token grid sizes and a checked ``from_dict``."""

    KIND: ClassVar[str] = "model"  # shown in errors ("unknown DiT config keys: …")
    input_size: int
    patch_size: int

    @property
    def grid_size(self) -> int:
        """Image tokens per side, h / p."""
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """T = (h / p)² image tokens."""
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The config of ``data``; unknown or missing keys are a ``ConfigError``."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.KIND} config keys: {', '.join(unknown)}",
                hint=f"known keys: {', '.join(sorted(known))} (written by another version?)",
            )
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise ConfigError(
                f"incomplete {cls.KIND} config: {exc}",
                hint="the checkpoint's model config is damaged",
            ) from exc
