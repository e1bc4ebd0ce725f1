"""`evaluate recon` on an entry that was removed and extracted again under the same name.

The report ``recon-<entry>.json`` is named after the held-out entry only. A user who removed
the entry (`cache rm`) and extracted it again from other images (the folder's files changed,
another folder of the same name) reran `evaluate recon`: the earlier report was replaced
without a word, and one holding an rFID refused the run ("would replace it with none") as if
it were the same result. The report now records the identity of the images it scored
(``entry_sha256``, ``entry_source``); a rerun on other images keeps the earlier report (and its
grid) as ``recon-<entry>-earlier-<sha12>.json``, marked ``superseded``, and says so; a rerun
on the same images replaces its own report as before.

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

CPU = ["--device", "cpu"]


def _extract(folder: Path, cache: list[str]) -> str:
    """Extract ``folder`` (patchpix, 32 px); the entry's name."""
    cli_ok("extract", *PATCHPIX, "--data", f"imagefolder:{folder}", *cache)
    (entry,) = [p.name for p in Path(cache[1]).iterdir() if p.name.startswith("folder-")]
    return entry


def _reports(ckpt: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(ckpt.glob("recon-*.json"))}


def test_a_rerun_on_a_re_extracted_entry_keeps_the_earlier_report(tmp_path, inception_file):
    cache, runs = cli_pack_stack(tmp_path, val=None)
    imgs = random_image_folder(tmp_path / "imgs")
    entry = _extract(imgs, cache)
    recon = ["evaluate", "recon", "--run", "pk", "--entry", entry, *CPU, *cache, *runs]
    cli_ok(*recon, "--inception-weights", str(inception_file), "--fd-method", "cholesky")
    (ckpt,) = (tmp_path / "runs" / "pk" / "checkpoints").glob("step-*")
    name = f"recon-{entry}.json"
    first = _reports(ckpt)[name]
    assert first["rfid"] is not None
    first_grid = (ckpt / f"recon-{entry}.png").read_bytes()

    # the same images: the same report recomputed, nothing kept aside
    cli_ok(*recon, "--inception-weights", str(inception_file), "--fd-method", "cholesky")
    assert list(_reports(ckpt)) == [name]

    # the entry removed and extracted again from other images under the same name
    shutil.rmtree(imgs)
    random_image_folder(imgs, classes=("cat", "dog", "eel"), per=2)
    cli_ok("cache", "rm", entry, "--yes", *cache)
    assert _extract(imgs, cache) == entry
    out = cli_ok(*recon)  # no --inception-weights: the earlier rFID was another entry's

    kept = f"recon-{entry}-earlier-{first['entry_sha256'][:12]}.json"
    said = f"{name} held the report of an earlier entry of the same name: {entry} was extracted"
    assert said in out and f"it was kept as {kept}" in out, out
    reports = _reports(ckpt)
    assert sorted(reports) == sorted([name, kept])
    now, old = reports[name], reports[kept]
    assert now["entry_sha256"] != first["entry_sha256"] and "superseded" not in now
    assert now["rfid"] is None and now["n"] == 6
    assert now["entry_source"]["source"] == "imagefolder" and now["entry_source"]["classes"] == 3
    assert {k: v for k, v in old.items() if k not in ("superseded", "grid")} == {
        k: v for k, v in first.items() if k != "grid"
    }
    assert old["superseded"].startswith("not the current report")
    assert Path(old["grid"]).read_bytes() == first_grid  # its grid went with it
    assert Path(now["grid"]) == ckpt / f"recon-{entry}.png"
