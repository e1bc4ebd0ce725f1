"""A cached group records the package versions that made its numbers, and a run that would add
rows made under other versions is refused before it writes anything.

Features (`extract`), caption features (`captions`) and packed latents (`pack encode`) are
written shard by shard; a rerun, or a resume days later, writes the pending shards. After an
upgrade of torch or transformers in between, one array held rows of two implementations,
silently. Each group now records the versions it was created under (``package_versions``):
with a shard pending, a run under other versions is refused (nothing written, the hint names
the version to install and the `cache rm` of the group); with nothing pending it reads as
before; a group made before the record is accepted.

Real components: extract (patchpix, 32 px), pack train / encode and captions (the built-in
MiniLM) through the CLI, on a real Zarr cache in temporary folders. A "pending shard" is what a
killed run (or `cache verify --repair`) leaves: its ``done`` rows 0 again.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from support.caches import shared_packed_cache
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry, list_entries
from repackctl.cache.versions import (
    RECORD,
    image_packages,
    installed_version,
    text_packages,
    versions_now,
)
from repackctl.encoders.builtin import ARCH as BUILTIN_ARCH
from repackctl.errors import CacheError

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

N, SHARD, LEN = 32, 16, 8  # two shards of 16 rows; the second one is made pending
FAKE = "0.0.1+other"
#: per kind of group: the package a test records another version of, and the packages recorded
KINDS = {
    "features": ("torch", ("torch", "repackctl")),
    "text": ("transformers", ("torch", "repackctl", "transformers", "tokenizers")),
    "latents": ("torch", ("torch", "repackctl")),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ (N built-in images, patchpix 32 px, shards of 16; the latents of the pack run
    ``pk``; the MiniLM caption features) and runs/."""
    root = tmp_path_factory.mktemp("versions")
    shared_packed_cache(tmp_path_factory, root / "cache", N)
    with one_torch_thread():
        cli_ok(*_args("text", root))
    return root


def _cache(root: Path) -> list[str]:
    return ["--cache", str(root / "cache"), "--device", "cpu"]


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A private copy of ``base``'s cache/ and runs/."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def _args(kind: str, root: Path) -> list[str]:
    """The command that writes the group of ``kind`` (as the fixture ran it)."""
    entry = _entry(root).name
    if kind == "features":
        src = ["--encoder", "patchpix", "--resolution", "32", "-n", str(N), "--chunk", "8"]
        return ["extract", *src, "--shard", str(SHARD), "--num-workers", "0", *_cache(root)]
    if kind == "text":
        return ["captions", "--entry", entry, "--max-length", str(LEN), *_cache(root)]
    return ["pack", "encode", "--run", "pk", "--runs", str(root / "runs"), *_cache(root)]


def _entry(root: Path) -> DatasetEntry:
    (name,) = list_entries(str(root / "cache"))
    return DatasetEntry.open(str(root / "cache"), name)


def _group(kind: str, root: Path):
    """(the group of ``kind`` as a zarr group, its name)."""
    entry = _entry(root)
    (name,) = {"features": entry.feature_ids, "text": entry.text_ids, "latents": entry.latent_ids}[
        kind
    ]()
    return entry.group[kind][name], name


def _make_pending(group) -> None:
    """The second shard pending again, as a run killed before it (or a repair) leaves it."""
    group["done"][SHARD:] = np.full(N - SHARD, PENDING, np.uint8)
    group.attrs["complete"] = False


def _recorded(kind: str, root: Path) -> dict[str, str]:
    """The group's record, checked to be the installed versions of its packages."""
    group, _ = _group(kind, root)
    assert group.attrs[RECORD] == versions_now(KINDS[kind][1]), dict(group.attrs)
    return dict(group.attrs[RECORD])


@pytest.mark.parametrize("kind", list(KINDS))
def test_pending_rows_under_other_versions_are_refused_before_anything_is_written(kind, work):
    package = KINDS[kind][0]
    record = _recorded(kind, work)
    group, name = _group(kind, work)
    group.attrs[RECORD] = record | {package: FAKE}  # as another installation recorded it
    _make_pending(group)
    before = folder_files(work)

    out = cli_refused(CacheError.exit_code, *_args(kind, work))
    entry = _entry(work).name
    assert f"{kind}/{name} of {entry} were written with {package} {FAKE}" in out, out
    assert f"{package} {installed_version(package)}" in out and "nothing was written" in out
    assert f"pip install {package}=={FAKE}" in out, out  # the version to install …
    assert f"repackctl cache rm {entry} --{kind} {name}" in out, out  # … or the removal
    assert folder_files(work) == before  # not a byte written

    # the recorded versions installed again (here: recorded as installed): the run finishes it
    group.attrs[RECORD] = record
    cli_ok(*_args(kind, work))
    group, _ = _group(kind, work)
    assert (group["done"][:] == WRITTEN).all()
    assert group.attrs[RECORD] == record


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_group_with_nothing_pending_is_read_whatever_is_installed(kind, work):
    package = KINDS[kind][0]
    record = _recorded(kind, work)
    if kind == "latents":  # the copy's stats name the shared build's root: written here first
        cli_ok(*_args(kind, work))
    group, _ = _group(kind, work)
    group.attrs[RECORD] = record | {package: FAKE}
    before = folder_files(work)
    out = cli_ok(*_args(kind, work))  # a rerun that finds everything done: nothing to mix
    assert "Error" not in out and "already done" in out, out
    assert folder_files(work) == before  # and writes nothing, the record included


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_group_made_before_the_record_is_finished_as_before(kind, work):
    _recorded(kind, work)
    group, _ = _group(kind, work)
    rows = np.asarray(group["done"][:]).copy()
    del group.attrs[RECORD]  # as versions before the record wrote it
    _make_pending(group)
    cli_ok(*_args(kind, work))
    group, _ = _group(kind, work)
    np.testing.assert_array_equal(group["done"][:], rows)
    assert RECORD not in group.attrs  # what wrote its first rows is not known: not made up


def test_a_damaged_null_caption_is_not_rewritten_under_other_versions(work):
    """The null caption's features are written ones too: with nothing pending, a rerun that
    would rewrite a lost chunk of them under another transformers is refused."""
    record = _recorded("text", work)
    group, name = _group("text", work)
    group.attrs[RECORD] = record | {"transformers": FAKE}
    folder = work / "cache" / _entry(work).name / "text" / name / "null_tokens" / "c"
    (chunk,) = [p for p in folder.rglob("*") if p.is_file()]
    chunk.unlink()  # as `cache verify --repair` leaves a damaged chunk: removed
    before = folder_files(work)
    out = cli_refused(CacheError.exit_code, *_args("text", work))
    assert f"transformers {FAKE}" in out and "nothing was written" in out, out
    assert folder_files(work) == before
    group.attrs[RECORD] = record
    assert f"rewrote text/{name}/null_tokens" in cli_ok(*_args("text", work))


def test_the_packages_follow_the_encoder():
    """timm is recorded for an encoder that is a timm model (by its architecture, once timm is
    loaded), never for the built-in one; transformers and tokenizers for a Hugging Face text
    encoder, not for a plugin's own."""
    import timm  # noqa: F401  (loaded, as building a timm encoder loads it)

    assert "timm" in sys.modules
    assert image_packages({"arch": "vit_tiny_patch16_dinov3_qkvb"}) == (
        "torch",
        "repackctl",
        "timm",
    )
    assert image_packages({"arch": BUILTIN_ARCH}) == ("torch", "repackctl")
    assert image_packages({"id": "enc"}) == ("torch", "repackctl")

    class Own:  # a plugin's text encoder of its own (no Hugging Face parts)
        def __init__(self) -> None:
            self.model, self.tokenizer = object(), str.split

    assert text_packages(Own()) == ("torch", "repackctl")


def test_cache_info_shows_the_versions_each_group_was_written_with(base):
    """`cache info` names them per group, and its JSON holds them."""
    entry = _entry(base).name
    text = " ".join(cli_ok("cache", "info", entry, *_cache(base)[:2]).split())
    shown = json.loads(cli_ok("cache", "info", entry, *_cache(base)[:2], "--json"))
    for kind, (_, packages) in KINDS.items():
        _, name = _group(kind, base)
        assert shown[kind][name]["versions"] == versions_now(packages), shown[kind]
        made = ", ".join(f"{p} {installed_version(p)}" for p in packages)
        assert f"(written with {made})" in text, text


def test_refiner_triplets_record_versions_and_refuse_a_resume_under_others(work):
    """`refine train`'s triplets (decodings of the pack model) are torch's numbers too."""
    from repackctl.pack.load import load_pack
    from repackctl.refine.triplets import build_triplets

    pack = load_pack("pk", runs=str(work / "runs"))
    entry = _entry(work)
    with one_torch_thread():
        build_triplets(entry, pack.features_id, pack, batch_size=8)
    (name,) = entry.complete_groups("triplets")
    group = _entry(work).group["triplets"][name]
    assert dict(group.attrs[RECORD]) == versions_now(("torch", "repackctl"))
    group.attrs[RECORD] = dict(group.attrs[RECORD]) | {"torch": FAKE}
    _make_pending(group)
    before = folder_files(work)
    with pytest.raises(CacheError, match=f"triplets/{name} of .* torch {re.escape(FAKE)}"):
        build_triplets(_entry(work), pack.features_id, pack, batch_size=8)
    assert folder_files(work) == before
