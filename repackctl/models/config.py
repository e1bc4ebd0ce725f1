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

    def grid_problems(self, *widths: int) -> list[str]:
        """What is wrong with the transformer's shape: patch and latent side, depth, width and
        heads (and ``widths``, any other sizes that must be ≥ 1), RoPE and sin-cos positions.

        Needs the fields ``in_channels``, ``depth``, ``hidden_size``, ``num_heads``, ``rope``.
        """
        c: Any = self
        problems = []
        if c.patch_size not in (1, 2, 4, 8):
            problems.append(f"patch_size {c.patch_size} is not 1, 2, 4 or 8")
        elif c.input_size % c.patch_size:
            problems.append(f"input_size {c.input_size} is not divisible by patch {c.patch_size}")
        if min(c.in_channels, c.input_size, c.depth, c.hidden_size, c.num_heads, *widths) < 1:
            problems.append("in_channels, input_size, depth, hidden_size and num_heads must be ≥ 1")
        elif c.hidden_size % c.num_heads:
            problems.append(f"hidden_size {c.hidden_size} is not divisible by {c.num_heads} heads")
        elif c.rope and (c.hidden_size // c.num_heads) % 4:
            problems.append("2-D RoPE needs a head dimension divisible by 4")
        if c.hidden_size % 4:
            problems.append("the 2-D sin-cos position needs hidden_size divisible by 4")
        return problems

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
