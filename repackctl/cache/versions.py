"""The package versions a cached group was written under, and the refusal to mix two of them.

A group (``features/<id>``, ``text/<id>``, ``latents/<id>``) is filled shard by shard, and a
rerun, a second process or a resume days later writes its pending shards. An upgrade of torch,
timm or transformers in between would leave one array whose rows come from two
implementations, silently. So a group records, when it is created, the versions of the packages
that decide its numbers (``RECORD``: ``{"torch": "2.14.1", ...}``), and a run that would write
new rows into a group recorded under other versions is refused before it writes anything
(``check_versions``). Reading a group (nothing pending) is never refused: its rows were all
written under one set of versions, whichever is installed now.

Which packages: torch and repackctl (the writer tag ``repackctl_version`` every group records;
its preprocessing and pack models are its own code) for every group; timm for features of an
encoder that is a timm model; transformers and tokenizers for text features of a Hugging Face
encoder. Groups made before the record have none and are accepted, as the fingerprint check
accepts entries made before fingerprints.

The versions are read by ``repackctl.versions.installed_version``, once per process and
package, as the protocol card and cached reference statistics read theirs (that module imports
no scipy or torch: this one is imported by every extract). The card's list
(``metrics.protocol.package_versions``) is another one: it does not name timm, transformers or
tokenizers, and names torch-fidelity, numpy and scipy, which decide no cached row.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from repackctl.cache.commands import remove_command
from repackctl.errors import CacheError
from repackctl.versions import NOT_INSTALLED as NOT_INSTALLED  # re-exported: read here too
from repackctl.versions import installed_version as installed_version

#: the group attribute holding the versions it was written under (package → version)
RECORD = "package_versions"
#: packages that decide the numbers of every group
BASE_PACKAGES = ("torch", "repackctl")
#: and of text features of a Hugging Face text encoder
HF_TEXT_PACKAGES = ("transformers", "tokenizers")


def versions_now(packages: Iterable[str]) -> dict[str, str]:
    """``{package: installed version}`` of ``packages``, in their order."""
    return {p: installed_version(p) for p in packages}


def image_packages(spec_attrs: dict[str, Any]) -> tuple[str, ...]:
    """The packages that decide an image encoder's features: ``BASE_PACKAGES``, and timm when
    the encoder's architecture (``spec_attrs["arch"]``) is a timm model. timm is asked only if
    it is loaded already: an encoder that is a timm model loaded it to be built, and another
    encoder's extract does not pay for its import."""
    timm = sys.modules.get("timm")
    arch = spec_attrs.get("arch")
    is_timm = bool(timm and isinstance(arch, str) and arch and timm.is_model(arch))
    return (*BASE_PACKAGES, "timm") if is_timm else BASE_PACKAGES


def _from_package(obj: Any, package: str) -> bool:
    return type(obj).__module__.split(".")[0] == package


def text_packages(encoder: Any) -> tuple[str, ...]:
    """The packages that decide a text encoder's features: ``BASE_PACKAGES``, and transformers
    and tokenizers when its model or tokenizer is a Hugging Face one (a plugin's own encoder
    without them is not refused when they are upgraded)."""
    parts = (getattr(encoder, "model", None), getattr(encoder, "tokenizer", None))
    hf = any(p is not None and _from_package(p, "transformers") for p in parts)
    return (*BASE_PACKAGES, *HF_TEXT_PACKAGES) if hf else BASE_PACKAGES


def differences(recorded: dict[str, Any], now: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(package, recorded version, installed version)`` of each recorded package whose
    installed version differs. Packages only one side names are no difference: a record made
    before a package was added to the list is compared on the ones it has."""
    return [(p, str(v), now[p]) for p, v in recorded.items() if p in now and str(v) != now[p]]


def check_versions(
    attrs: dict[str, Any],
    now: dict[str, str],
    what: str,
    remove: str,
    pending: Callable[[], bool],
) -> None:
    """Refuse (``CacheError``) to write rows into a group whose ``RECORD`` names other
    versions than ``now`` while it has rows to write (``pending()``, asked only when the
    versions differ). ``what`` names the group (``features/ID of ENTRY``), ``remove`` is the
    `repackctl cache rm` command that removes it.

    Not refused: a group with nothing pending (reading it, or a rerun that finds everything
    done, mixes nothing) and a group made before the record (no ``RECORD``)."""
    recorded = attrs.get(RECORD)
    if not isinstance(recorded, dict):
        return
    differ = differences(recorded, now)
    if not differ or not pending():
        return
    was = ", ".join(f"{p} {old}" for p, old, _ in differ)
    has = ", ".join(f"{p} {new}" if new != NOT_INSTALLED else f"no {p}" for p, _, new in differ)
    pins = " ".join(f"{p}=={old}" for p, old, _ in differ)
    raise CacheError(
        f"{what} were written with {was}, but this environment has {has}: rows written now would "
        "come from another implementation than the rows already there; nothing was written",
        f"install what it was written with (`pip install {pins}`) to finish it, or "
        f"remove it with `{remove}` and run again",
    )


def check_group_versions(
    attrs: dict[str, Any],
    now: dict[str, str],
    entry: str,
    kind: str,
    gid: str,
    pending: Callable[[], bool],
) -> None:
    """:func:`check_versions` for the group ``kind/gid`` of cache entry ``entry``: the refusal
    names it (``text/ID of ENTRY``) and the `repackctl cache rm ENTRY --KIND ID` that removes
    it, alike for the pending rows of any group (``DatasetEntry._check_versions``) and the null
    caption a text group rewrites (``captions_cache.heal_null_caption``)."""
    what = f"{kind}/{gid} of {entry}"
    check_versions(attrs, now, what, remove_command(entry, kind, gid), pending)
