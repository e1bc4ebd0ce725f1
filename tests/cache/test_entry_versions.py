"""A cache entry's images record the package versions that made their pixels, and an extract
that would add image rows made under other versions is refused before it writes anything.

The entry's ``images`` are written shard by shard by `repackctl extract`: the built-in dataset
draws them with numpy, an image folder decodes and resizes them with Pillow. An upgrade of
either between a killed extract and its rerun left one ``images`` array holding the pixels of
two implementations, silently (the features, text, latents and triplets groups were already
guarded: test_writer_versions.py). A new entry now records them (``package_versions``, as the
groups do); with image rows to write, a run under other versions is refused (nothing written,
the hint names the version to install and the `cache rm` of the entry); an entry whose images
are all written is read by another encoder's extract whatever is installed; an entry made
before the record is accepted.

Real components: extract (patchpix and the built-in encoder, 32 px) through the CLI, on a real
Zarr cache in temporary folders. A killed extract is simulated as its ``done`` rows left 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.caches import random_image_folder
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files
from test_writer_versions import FAKE, SHARD, N, _make_pending

from repackctl.cache.store import PENDING, WRITTEN, DatasetEntry, list_entries
from repackctl.cache.versions import NOT_INSTALLED, RECORD, installed_version, versions_now
from repackctl.data.base import DEFAULT_PACKAGES, source_packages
from repackctl.data.builtin import BuiltinSource
from repackctl.errors import CacheError
from repackctl.extract import run_extract
from repackctl.runtime import DistInfo
from repackctl.settings import resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess

BUILTIN = ("repackctl", "numpy")  # what draws the built-in dataset's pixels
FOLDER = ("repackctl", "pillow")  # what decodes and resizes an image folder's
DATA = ["--resolution", "32", "-n", str(N), "--chunk", "8", "--shard", str(SHARD)]


def _extract(cache: Path, encoder: str = "patchpix", *data: str) -> list[str]:
    """The `repackctl extract` of ``encoder`` on the built-in entry (or ``data``) of ``cache``."""
    return ["extract", "--encoder", encoder, *(data or DATA), "--num-workers", "0",
            "--cache", str(cache), "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/: N built-in images at 32 px (shards of 16) with their patchpix features."""
    cache = tmp_path_factory.mktemp("entry_versions") / "cache"
    cli_ok(*_extract(cache))
    return cache


@pytest.fixture
def cache(base, tmp_path) -> Path:
    """A private copy of ``base``'s cache."""
    shutil.copytree(base, tmp_path / "cache")
    return tmp_path / "cache"


def _entry(cache: Path) -> DatasetEntry:
    (name,) = list_entries(str(cache))
    return DatasetEntry.open(str(cache), name)


def _features(entry: DatasetEntry, encoder: str):
    """The features group of ``encoder`` (ids are ``<encoder>--<layer>--<res>px--<hash>``)."""
    (fid,) = [f for f in entry.feature_ids() if f.startswith(f"{encoder}--")]
    return entry.features(fid)


def _as_killed(cache: Path) -> None:
    """The second shard pending again, images and features, as an extract killed before it
    leaves the entry."""
    entry = _entry(cache)
    _make_pending(entry.group)
    _make_pending(_features(entry, "patchpix").group)


def _recorded_elsewhere(cache: Path) -> dict[str, str]:
    """Record another numpy in the entry, as an older installation wrote its images; returns
    the record it had."""
    entry = _entry(cache)
    record = dict(entry.attrs[RECORD])
    entry.group.attrs[RECORD] = record | {"numpy": FAKE}
    return record


def test_a_new_entry_records_the_versions_of_what_made_its_pixels(base, tmp_path):
    assert _entry(base).attrs[RECORD] == versions_now(BUILTIN)
    folder = random_image_folder(tmp_path / "imgs", per=2)
    data = ["--data", f"imagefolder:{folder}", "--resolution", "32", "--shard", "4", "--chunk", "2"]
    cli_ok(*_extract(tmp_path / "cache", "patchpix", *data))
    assert _entry(tmp_path / "cache").attrs[RECORD] == versions_now(FOLDER)
    assert installed_version("pillow") not in (NOT_INSTALLED, "")  # the name metadata knows
    assert source_packages(BuiltinSource(num=2)) == BUILTIN

    class Plugin:  # a plugin's source that names no packages: repackctl's code calls it
        pass

    assert source_packages(Plugin()) == DEFAULT_PACKAGES == ("repackctl",)

    # `cache info` names them on the samples row, as it names each group's, and its JSON too
    name = _entry(base).name
    text = cli_ok("cache", "info", name, "--cache", str(base))
    made = ", ".join(f"{p} {installed_version(p)}" for p in BUILTIN)
    assert f"pending of {N} (written with {made})" in text, text
    shown = json.loads(cli_ok("cache", "info", name, "--cache", str(base), "--json"))
    assert shown["versions"] == versions_now(BUILTIN), shown


def test_a_rerun_after_a_kill_under_other_versions_is_refused_before_anything_is_written(cache):
    record = _recorded_elsewhere(cache)
    _as_killed(cache)
    name = _entry(cache).name
    before = folder_files(cache)

    out = cli_refused(CacheError.exit_code, *_extract(cache))
    assert f"the images of {name} were written with numpy {FAKE}" in out, out
    assert f"numpy {installed_version('numpy')}" in out and "nothing was written" in out, out
    assert f"pip install numpy=={FAKE}" in out, out  # the version to install …
    assert f"repackctl cache rm {name}`" in out, out  # … or the removal of the entry
    assert folder_files(cache) == before  # not a byte written
    # another encoder would write the pending images too: refused before its group is made
    cli_refused(CacheError.exit_code, *_extract(cache, "builtin"))
    assert folder_files(cache) == before

    # the recorded versions installed again (here: recorded as installed): the rerun finishes
    _entry(cache).group.attrs[RECORD] = record
    cli_ok(*_extract(cache))
    entry = _entry(cache)
    assert (entry.done_mask() == WRITTEN).all() and entry.attrs[RECORD] == record


def test_every_process_refuses_when_another_ones_image_rows_are_pending(cache, monkeypatch):
    """Rank 0 of two owns the first shard, whose images are written; the pending images are
    rank 1's. Rank 0 refuses too, before it writes anything and before the barrier: judging its
    own shards alone, it would go on (recording its run in the features group) while rank 1
    refuses, and the job would stop half-way instead of refusing as one."""
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # a barrier fails at once
        monkeypatch.delenv(var, raising=False)
    _recorded_elsewhere(cache)
    _as_killed(cache)
    entry = _entry(cache)
    assert (entry.done_mask()[:SHARD] == WRITTEN).all()  # rank 0's shard: nothing to write
    flags = {"cache": str(cache), "num_workers": 0, "device": "cpu"}
    flags |= {"extract.encoder": "patchpix", "extract.num": N, "extract.resolution": 32}
    flags |= {"extract.chunk": 8, "extract.shard": SHARD}
    settings = resolve_settings(None, flags, environ={}).settings
    before = folder_files(cache)
    with pytest.raises(CacheError, match=f"the images of {entry.name} were written with"):
        run_extract(settings, dist=DistInfo(rank=0, world=2))
    assert folder_files(cache) == before


def test_images_all_written_are_read_by_another_encoder_whatever_is_installed(cache):
    """The other encoder's features are all pending, the entry's images all written: its
    extract reads the cached pixels (none written), so their versions refuse nothing."""
    record = _recorded_elsewhere(cache)
    images = folder_files(cache / _entry(cache).name / "images")
    out = cli_ok(*_extract(cache, "builtin"))
    assert "Error" not in out, out
    entry = _entry(cache)
    assert (_features(entry, "builtin").done_mask() == WRITTEN).all()
    assert folder_files(cache / entry.name / "images") == images  # the pixels as they were
    assert entry.attrs[RECORD] == record | {"numpy": FAKE}  # the record kept, not rewritten


def test_an_entry_made_before_the_record_is_finished_as_before(cache):
    entry = _entry(cache)
    rows = np.asarray(entry.done_mask()).copy()
    del entry.group.attrs[RECORD]  # as versions before the record made it
    _as_killed(cache)
    assert (_entry(cache).done_mask()[SHARD:] == PENDING).all()
    cli_ok(*_extract(cache))
    entry = _entry(cache)
    np.testing.assert_array_equal(entry.done_mask(), rows)
    assert RECORD not in entry.attrs  # what drew its first rows is not known: not made up
