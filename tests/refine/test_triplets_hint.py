"""Unfinished refiner triplets are refused with the command that finishes them.

`open_triplets` refused a group with pending rows with "run `repackctl refine train` again to
finish them": run as written, that started a new default run (refine-<newest pack run>, noise
0, seed 0), which built another group and left these pending. The hint names `refine train
--name RUN` with the flags that pick this group (its pack run, entry, noise and seed), as `cache
verify` does (``cache.verify.triplets_command``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import one_torch_thread
from support.stack import shared_stack

from repackctl.cache.store import PENDING, DatasetEntry
from repackctl.errors import CacheError
from repackctl.pack.load import load_pack
from repackctl.refine.triplets import build_triplets, open_triplets, triplet_group_name


def test_unfinished_triplets_name_the_run_and_flags_that_finish_them(tmp_path, tmp_path_factory):
    stack = shared_stack(tmp_path_factory)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    shutil.copytree(stack["cache"], cache)
    shutil.copytree(stack["runs"], runs)
    pack = load_pack("pack-tiny", runs=str(runs))
    entry = DatasetEntry.open(str(cache), pack.extra["cache"]["entry"])
    with one_torch_thread():
        build_triplets(entry, pack.extra["cache"]["features"], pack, noise=0.1, seed=5)
    group = entry.group["triplets"][triplet_group_name(pack.pack_id, 0.1)]
    group["done"][8:16] = np.full(8, PENDING, np.uint8)  # the second shard never finished

    with pytest.raises(CacheError) as refused:
        open_triplets(entry, pack.pack_id, 0.1, 5)
    hint = refused.value.hint
    assert "again to finish them" not in hint, hint
    cmd = (
        f"`repackctl refine train --name RUN --pack-run pack-tiny --entry {entry.name} "
        "--noise 0.1 --seed 5`"
    )
    assert cmd in hint, hint
    assert "RUN: the refiner run that was building them, by default refine-pack-tiny" in hint
