"""The installed version of a package: the one reader that everything recording versions uses.

Three records name package versions and are compared against later: the protocol card
(``metrics.protocol.package_versions``), the versions a cache group was written under
(``cache.versions``) and the software a cached reference statistics file depends on
(``evaluate.generative.software_versions``). They read a version the same way here, so a
package is named alike in all three (``NOT_INSTALLED`` when absent; repackctl run from a source
checkout, which has no metadata, by its ``__version__``).

This module imports nothing but the standard library and ``repackctl`` itself (no torch, numpy
or scipy): ``cache.versions`` is imported by every extract, where loading scipy through
``metrics.protocol`` cost ~0.4 s, and ``runtime`` imports torch.
"""

from __future__ import annotations

import functools

NOT_INSTALLED = "not installed"


@functools.cache
def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist`` (``NOT_INSTALLED`` when absent), read
    once per process: a process runs one installation, and ``importlib.metadata`` parses the
    package's metadata file on every call. repackctl from a source checkout (no metadata)
    reports its ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        if dist == "repackctl":
            from repackctl import __version__

            return __version__
        return NOT_INSTALLED
