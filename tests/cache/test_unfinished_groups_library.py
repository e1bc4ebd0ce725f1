"""What a cache entry's unfinished groups are, and the command that finishes each, is library
logic: ``repackctl.cache.verify.unfinished_groups`` (beside ``describe_entry``), importable
without the command line (it lived in ``repackctl.cli.cache``). `cache ls --json` and `cache info
--json` list exactly what it returns, and their text output is unchanged.

Real components: a patchpix cache on a real Zarr store in a temporary folder whose ``done``
arrays mark some rows pending (as a killed extract leaves them), the CLI in-process, and a real
``python`` subprocess for the import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.caches import patchpix_fixtures
from support.cli import cli_ok

from repackctl.cache.store import PENDING, DatasetEntry, list_entries

pytestmark = pytest.mark.usefixtures("one_thread")
base_cache, cache = patchpix_fixtures("s29-unfinished", num=16)


def test_unfinished_groups_is_the_cache_library_s_and_the_listings_show_it(cache: Path) -> None:
    (name,) = list_entries(str(cache))
    entry = DatasetEntry.open(str(cache), name)
    (fid,) = entry.feature_ids()
    # rows 8–15 as a killed extract leaves them: the entry's own rows and so its features' rows
    # (an extract marks a features row only after the entry's; an entry row pending under a
    # written features row is a lost done chunk, whose finish is `cache verify --repair`)
    entry.done[8:16] = PENDING
    entry.features(fid).done[8:16] = PENDING

    code = (
        "import json, sys\n"
        "from repackctl.cache.store import DatasetEntry\n"
        "from repackctl.cache.verify import describe_entry, unfinished_groups\n"
        f"e = DatasetEntry.open({str(cache)!r}, {name!r})\n"
        "print(json.dumps(unfinished_groups(e, describe_entry(e))))\n"
        "cli = sorted(m for m in sys.modules if m.startswith('repackctl.cli'))\n"
        "assert not cli, cli\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)
    assert [(g["group"], g["pending"], g["n"]) for g in groups] == [
        ("images", 8, 16),
        (f"features/{fid}", 8, 16),
    ]
    assert all(g["finish"].startswith("`repackctl extract --encoder patchpix") for g in groups)

    roots = ["--cache", str(cache)]
    (listed,) = json.loads(cli_ok("cache", "ls", *roots, "--json"))["entries"]
    assert listed["unfinished"] == groups
    assert json.loads(cli_ok("cache", "info", name, *roots, "--json"))["unfinished"] == groups
    text = cli_ok("cache", "ls", *roots)
    for g in groups:
        line = f"unfinished: {name} {g['group']}: 8 of 16 rows pending; finish with {g['finish']}"
        assert line in text, text
    info = cli_ok("cache", "info", name, *roots)
    assert info.count("unfinished: 8 of 16 rows pending, finish with `repackctl extract") == 2
