"""`evaluate probe` on an entry that was removed and extracted again under the same name.

The table ``probe-<entry>.json`` is named after the held-out entry only (the training entry is
the pack run's). A user who removed the entry (`cache rm`) and extracted it again from other
images reran `evaluate probe`: the earlier table was replaced without a word, as `evaluate
recon`'s report was. The report now records the identity of both entries it read
(``train_entry_sha256``, ``eval_entry_sha256`` and their ``*_entry_source``); a rerun on other
images keeps the earlier table as ``probe-<entry>-earlier-<train sha12>-<eval sha12>.json``,
marked ``superseded``, and says so; a rerun on the same images replaces its own as before.

Real Zarr cache, real pack run, the CLI in-process (tests/support).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.caches import PATCHPIX, cli_pack_stack, random_image_folder
from support.cli import cli_ok

pytestmark = pytest.mark.usefixtures("one_thread")


def _extract(folder: Path, cache: list[str]) -> str:
    """Extract ``folder`` (patchpix, 32 px); the entry's name."""
    cli_ok("extract", *PATCHPIX, "--data", f"imagefolder:{folder}", *cache)
    (entry,) = [p.name for p in Path(cache[1]).iterdir() if p.name.startswith("folder-")]
    return entry


def _reports(ckpt: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(ckpt.glob("probe-*.json"))}


def test_a_rerun_on_a_re_extracted_entry_keeps_the_earlier_table(tmp_path):
    cache, runs = cli_pack_stack(tmp_path, val=None)
    imgs = random_image_folder(tmp_path / "imgs")
    entry = _extract(imgs, cache)
    probe = ["evaluate", "probe", "--run", "pk", "--entry", entry, "--epochs", "1"]
    probe += ["--device", "cpu", *cache, *runs]
    cli_ok(*probe)
    (ckpt,) = (tmp_path / "runs" / "pk" / "checkpoints").glob("step-*")
    name = f"probe-{entry}-epochs1.json"  # --epochs 1 is not the default
    first = _reports(ckpt)[name]
    assert first["eval_entry"] == entry and first["n_eval"] == 6

    # the same images: the same table recomputed, nothing kept aside
    cli_ok(*probe)
    assert list(_reports(ckpt)) == [name]

    # the entry removed and extracted again from other images under the same name
    shutil.rmtree(imgs)
    random_image_folder(imgs, classes=("cat", "dog", "eel"), per=2)
    cli_ok("cache", "rm", entry, "--yes", *cache)
    assert _extract(imgs, cache) == entry
    out = cli_ok(*probe)
    assert len(_reports(ckpt)) == 2, "the earlier entry's table was replaced"
    assert first["eval_entry_source"]["source"] == "imagefolder"
    assert isinstance(first["train_entry_sha256"], str) and first["train_entry_source"]

    sha12 = f"{first['train_entry_sha256'][:12]}-{first['eval_entry_sha256'][:12]}"
    kept = f"probe-{entry}-epochs1-earlier-{sha12}.json"
    said = f"{name} held the report of an earlier entry of the same name: {entry} was extracted"
    flat = "".join(out.split())  # the console wraps long lines, names included
    assert "".join(said.split()) in flat and f"itwaskeptas{kept}" in flat, out
    reports = _reports(ckpt)
    assert sorted(reports) == sorted([name, kept])
    now, old = reports[name], reports[kept]
    assert now["eval_entry_sha256"] != first["eval_entry_sha256"] and "superseded" not in now
    assert now["train_entry_sha256"] == first["train_entry_sha256"]  # the run's, unchanged
    assert now["eval_entry_source"]["classes"] == 3 and now["n_eval"] == 6
    assert any(kept in note for note in now["notes"])  # the report says it too
    assert {k: v for k, v in old.items() if k != "superseded"} == first
    assert old["superseded"].startswith("not the current report") and entry in old["superseded"]
    assert "grid" not in old  # a table has no grid
