"""The commands that the cache's hints name make what was asked for.

* "entry not found" for ``builtin-n300--val--64px`` named ``extract --split val --resolution
  64``, which makes ``builtin--val--64px``: the ``-n 300`` that the name records is named too.
* after `cache verify --repair` of refiner triplets the flagless `repackctl refine train --name
  RUN` was printed, which, run, trained with the defaults and built (or found) another triplets
  group; now the command of the group, as `cache verify` names it (pack run, entry, noise).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import one_torch_thread
from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused
from support.stack import shared_stack

from repackctl.cache.store import DatasetEntry
from repackctl.errors import CacheError
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets, triplet_group_name

base_cache, cache = patchpix_fixtures("kill-hints", 16)


def test_the_entry_not_found_hint_names_its_size(cache: Path) -> None:
    out = cli_refused(
        CacheError.exit_code, "cache", "info", "builtin-n300--val--64px", "--cache", str(cache)
    )
    assert "run `repackctl extract -n 300 --split val --resolution 64` for it" in out, out


def test_the_repair_of_triplets_names_their_group_s_command(
    tmp_path, tmp_path_factory, monkeypatch
):
    stack = shared_stack(tmp_path_factory)
    root, runs = str(tmp_path / "cache"), str(tmp_path / "runs")
    shutil.copytree(stack["cache"], root)
    shutil.copytree(stack["runs"], runs)
    monkeypatch.setenv("REPACKCTL_CACHE", root)
    pack = load_pack("pack-tiny", runs=runs)
    entry = DatasetEntry.open(root, pack.extra["cache"]["entry"])
    with one_torch_thread():
        build_triplets(entry, pack.extra["cache"]["features"], pack, batch_size=8)
    gid = triplet_group_name(pack.pack_id, 0.0)
    folder = Path(root) / entry.name / "triplets" / gid / "latent" / "c"
    chunk = sorted(p for p in folder.rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated

    out = cli_ok("cache", "verify", entry.name, "--repair")
    assert "now run" in out and "`repackctl refine train --name RUN --pack-run pack-tiny " in out
    assert f"--entry {entry.name}` (RUN: the refiner run that was building them" in out, out
