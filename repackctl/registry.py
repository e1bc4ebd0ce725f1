"""Lazy entry-point registry for encoders, text encoders, models and datasets.

The entry name is the id users type; the value is a factory. Built-ins are declared through the
same entry points in our own ``pyproject.toml``. Names are read once per process; only the id
asked for is imported (like zarr's ``registry.py`` and timm's ``_registry.py``). A miss lists the
available ids; an id declared by two distributions is an error naming both.
``REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1`` keeps the built-ins (distribution ``repackctl``) only.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from repackctl.errors import RegistryError, RepackError

GROUPS = {
    "encoders": "repackctl.encoders",
    "models": "repackctl.models",
    "datasets": "repackctl.datasets",
    "text_encoders": "repackctl.text_encoders",
}
BUILTIN_DIST = "repackctl"
_PACKAGE_DIR = Path(__file__).resolve().parent  # our own modules live below it
_KIND_HINT = {
    "encoders": "pass --encoder with one of them, or install a plugin that registers it",
    # `train dit` also builds an id from --arch/--size/--patch; `train t2i` and `benchmark train`
    # take only --model
    "models": "pass --model with one of them (`train dit` also takes --arch/--size/--patch), "
    "or install a plugin that registers it",
    "datasets": "pass --data with one of them (e.g. builtin, imagefolder:PATH, imagenet)",
    "text_encoders": "pass --text-encoder with one of them (e.g. minilm, clip:PATH), or install a "
    "plugin that registers it",
}


@dataclass(frozen=True)
class PluginInfo:
    """One registered id, for `repackctl plugins`."""

    id: str
    group: str
    distribution: str
    version: str
    value: str
    status: str  # "not loaded", "loaded", "error: …", "duplicate of …", "disabled"


AUTOLOAD_ENV = "REPACKCTL_DISABLE_PLUGIN_AUTOLOAD"


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").lower() in {"1", "true", "yes"}


def _dist(ep: EntryPoint) -> tuple[str, str]:
    """(name, version) of the distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    read = getattr(dist, "read_text", None)  # a Distribution; anything else by its metadata
    text = (read("METADATA") or read("PKG-INFO")) if callable(read) else None
    if text is None:
        return dist.metadata["Name"] or "?", dist.version or "?"
    return _name_version(text)


@cache
def _name_version(metadata: str) -> tuple[str, str]:
    """``Name`` and ``Version`` from the header of a core-metadata file. importlib parses the
    whole file as an e-mail message on every ``metadata`` / ``version`` access (5 ms each,
    twice per entry point and lookup); the header fields are one ``Key: value`` line each,
    before the first blank line (core metadata specification), and the same text gives the
    same pair, so a reinstalled distribution is read afresh."""
    found = {"name": "?", "version": "?"}
    for line in metadata.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in found and found[key.strip().lower()] == "?":
            found[key.strip().lower()] = value.strip() or "?"
    return found["name"], found["version"]


def _is_builtin(ep: EntryPoint) -> bool:
    """An entry of this very package: our distribution name AND a module inside our own tree.

    A foreign package that calls itself ``repackctl`` does not get past the autoload switch.
    """
    if _dist(ep)[0] != BUILTIN_DIST or not ep.value.startswith("repackctl."):
        return False
    try:
        spec = importlib.util.find_spec(ep.value.split(":")[0])
    except (ImportError, ValueError):
        return False
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    return origin is not None and _PACKAGE_DIR in origin.parents


def _reporting(factory: Any, noun: str, name: str, dist: str) -> Any:
    """``factory`` whose unexpected exceptions become an error naming the plugin."""
    if not callable(factory):
        return factory

    @functools.wraps(factory)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except (RepackError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise RegistryError(
                f"{noun} {name!r} (from the distribution {dist}) failed: {type(e).__name__}: {e}",
                f"report it to the maintainers of {dist}; REPACKCTL_DEBUG=1 shows the traceback",
            ) from e

    return call


@cache
def _scan(group: str) -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in entry_points(group=group):
        dist_name, _ = _dist(ep)
        sig = (ep.name, ep.value, dist_name)
        if sig in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(sig)
        found.setdefault(ep.name, []).append(ep)
    return found


class Registry:
    """The ids of one entry-point group."""

    def __init__(self, kind: str) -> None:
        if kind not in GROUPS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self.group = GROUPS[kind]
        self.noun = kind[:-1].replace("_", " ")  # "text encoder", "model", ...
        self._loaded: dict[str, Any] = {}
        self._errors: dict[str, str] = {}

    def _entries(self) -> dict[str, list[EntryPoint]]:
        entries = _scan(self.group)
        if autoload_disabled():
            entries = {name: [ep for ep in eps if _is_builtin(ep)] for name, eps in entries.items()}
            entries = {name: eps for name, eps in entries.items() if eps}
        return entries

    def ids(self) -> list[str]:
        return sorted(self._entries())

    def split_id(self, ref: str) -> tuple[str, str | None]:
        """``imagefolder:/data`` → ("imagefolder", "/data"); a bare id has no argument."""
        name, sep, arg = ref.partition(":")
        return name, (arg if sep else None)

    def get(self, ref: str) -> Any:
        """Import and return the factory registered under ``ref`` (argument part ignored)."""
        name, _ = self.split_id(ref)
        if name in self._loaded:
            return self._loaded[name]
        entries = self._entries()
        if name not in entries:
            raise self._miss(name, entries)
        eps = entries[name]
        if len(eps) > 1:
            dists = " and ".join(f"{_dist(ep)[0]} ({ep.value})" for ep in eps)
            raise RegistryError(
                f"{self.noun} id {name!r} is registered twice: by {dists}",
                "uninstall one of the two distributions, or set REPACKCTL_DISABLE_PLUGIN_AUTOLOAD=1",
            )
        try:
            factory = eps[0].load()
        except Exception as e:  # a broken plugin must not look like a missing one
            self._errors[name] = f"{type(e).__name__}: {e}"
            raise RegistryError(
                f"{self.noun} {name!r} from {_dist(eps[0])[0]} failed to load: {e}",
                "reinstall the plugin; REPACKCTL_DEBUG=1 shows the traceback",
            ) from e
        factory = _reporting(factory, self.noun, name, _dist(eps[0])[0])
        self._loaded[name] = factory
        return factory

    def _miss(self, name: str, entries: dict[str, list[EntryPoint]]) -> RegistryError:
        """The error for an id that is not available: an installed plugin's id while
        ``REPACKCTL_DISABLE_PLUGIN_AUTOLOAD`` is on says so (installing it again would not help),
        other ids get the closest available one and the list."""
        disabled = _scan(self.group).get(name, []) if autoload_disabled() else []
        if disabled:
            by = " and ".join(f"{_dist(ep)[0]} ({ep.value})" for ep in disabled)
            return RegistryError(
                f"{self.noun} {name!r} is registered by the installed plugin {by}, but "
                f"{AUTOLOAD_ENV}={os.environ.get(AUTOLOAD_ENV)} keeps plugins from loading "
                f"(built-in {self.noun}s only: {', '.join(sorted(entries))})",
                f"unset {AUTOLOAD_ENV} to use it, or choose a built-in {self.noun}",
            )
        close = difflib.get_close_matches(name, entries, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        hint = _KIND_HINT[self.kind]
        if autoload_disabled():  # a plugin installed now would not be loaded either
            hint = hint.replace("install a plugin", f"unset {AUTOLOAD_ENV} and install a plugin")
            off = difflib.get_close_matches(name, _scan(self.group), n=1)
            if off and off[0] not in entries:
                guess = f" (did you mean {off[0]!r}? an installed plugin's, kept off by " + (
                    f"{AUTOLOAD_ENV})"
                )
        return RegistryError(
            f"unknown {self.noun} {name!r}{guess}; available: {', '.join(sorted(entries))}", hint
        )

    def info(self) -> list[PluginInfo]:
        disabled = autoload_disabled()
        rows = []
        for name, eps in sorted(_scan(self.group).items()):
            # a disabled plugin's id is no duplicate of the built-in that `get` then loads
            active = [ep for ep in eps if not disabled or _is_builtin(ep)]
            for ep in eps:
                dist, version = _dist(ep)
                if ep not in active:
                    status = "disabled"
                elif len(active) > 1:
                    others = ", ".join(_dist(o)[0] for o in active if o is not ep)
                    status = f"duplicate (also in {others})"
                elif name in self._loaded:
                    status = "loaded"
                elif name in self._errors:
                    status = f"error: {self._errors[name]}"
                else:
                    status = "not loaded"
                rows.append(PluginInfo(name, self.group, dist, version, ep.value, status))
        return rows

    def check(self, name: str) -> str:
        """Try to import ``name``; return its status (for `repackctl plugins --check`)."""
        try:
            self.get(name)
        except RegistryError as e:
            return f"error: {e.message}"
        return "loaded"


@cache
def registry(kind: str) -> Registry:
    """The process-wide registry of ``kind`` (encoders, text_encoders, models, datasets)."""
    return Registry(kind)


def clear_cache() -> None:
    """Forget scanned entry points (tests that install or disable plugins)."""
    _scan.cache_clear()
    registry.cache_clear()
