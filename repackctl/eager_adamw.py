"""AdamW whose eager calls do not import ``torch._dynamo``.

``torch.optim`` imports ``torch._dynamo`` (3.4 s of CPU on a 2-core AMD EPYC, more than
importing torch itself) the first time an optimizer is used, although nothing is compiled:

- ``add_param_group`` (called by the constructor), ``zero_grad``, ``state_dict`` and
  ``load_state_dict`` are wrapped by ``torch._disable_dynamo``, which imports it on the first
  call to build the disabled version of the method;
- ``step`` is wrapped by ``torch.optim.optimizer._use_grad_for_differentiable``, which imports
  it on every call to mark graph breaks, and runs the update under ``no_grad``.

Outside ``torch.compile`` both wrappers only call the method. ``EagerAdamW`` calls the methods
``functools.wraps`` keeps under ``__wrapped__`` directly, and goes through torch's wrappers
while a graph is being compiled, or where a torch version has no ``__wrapped__``. The update,
the state and ``state_dict()`` are those of ``torch.optim.AdamW``: a checkpoint written by one
loads into the other, and both give the same weights bit for bit
(``tests/train/test_eager_adamw.py``). Every training process, and every `evaluate` that
trains a probe or a judge, starts about 3 s sooner.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import AdamW, Optimizer


def _unwrapped(method: Callable[..., Any]) -> Callable[..., Any] | None:
    """The function under torch's wrappers, or None where the wrappers must run: while a graph
    is compiled, or where this torch version keeps no ``__wrapped__``."""
    if torch.compiler.is_compiling():
        return None
    inner = inspect.unwrap(method)
    return None if inner is method else inner


def _call(method: Callable[..., Any], optimizer: Optimizer, *args: Any) -> Any:
    """``method(optimizer, *args)``, past torch's wrapper where :func:`_unwrapped` allows (AdamW
    does not override the four ``Optimizer`` methods, so this is what ``super()`` would call)."""
    return (_unwrapped(method) or method)(optimizer, *args)


class EagerAdamW(AdamW):
    """``torch.optim.AdamW`` without the ``torch._dynamo`` import of its eager calls."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _call(Optimizer.add_param_group, self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _call(Optimizer.zero_grad, self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _call(Optimizer.state_dict, self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _call(Optimizer.load_state_dict, self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        inner = _unwrapped(AdamW.step)
        if inner is None:
            return super().step(closure)
        # what torch's wrapper does besides the import: grad mode off unless differentiable
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return inner(self, closure)
