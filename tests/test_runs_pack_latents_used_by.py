"""`runs info` and `runs rm` of a pack run name the cached latents groups `pack encode` wrote
with its checkpoints: those latents decode only with that run's decoder, so removing it leaves
latents (and any DiT trained on them) that nothing can decode. `runs info` named only the runs
that use it, and `runs rm` asked "Delete run pk …?" as if nothing needed it.

Real extract → pack train → pack encode through the command line (``support.caches``), a real
Zarr cache; the cache root is found from --cache / REPACKCTL_CACHE and from what the run's
checkpoints record they were trained from.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from support.caches import packed_cache
from support.cli import cli_ok, runner

from repackctl.cli.app import app


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    packed_cache(tmp_path / "cache", 16)
    # the settings' cache root is another (empty) one: the run's own record still finds it
    monkeypatch.setenv("REPACKCTL_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(tmp_path / "samples"))
    return tmp_path


def _group(cache: Path) -> str:
    entry = next(p for p in cache.iterdir() if p.is_dir())
    (gid,) = [p.name for p in (entry / "latents").iterdir() if p.is_dir()]
    return f"latents {entry.name}/{gid}"


def test_info_and_rm_name_the_latents_encoded_with_a_pack_run(work):
    cache, run = work / "cache", work / "runs" / "pk"
    group = _group(cache)
    named = f"{group} in {cache.resolve()} (encoded with step-0000004)"

    out = cli_ok("runs", "info", "pk")
    assert f"used by {named}" in out, out
    data = json.loads(cli_ok("runs", "info", "pk", "--json", "--cache", str(cache)))
    assert data["used_by_latents"] == [named] and data["used_by"] == [], data

    res = runner.invoke(app, ["runs", "rm", "pk"], input="n\n")
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "nothing removed" in said, said
    assert "1 cached latents group was encoded with pack run pk and cannot be decoded" in said
    assert named in said and "anyway?" in said, said
    assert run.is_dir()

    res = runner.invoke(app, ["runs", "rm", "pk", "--yes"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and not run.exists(), said
    assert "Warning: 1 cached latents group was encoded with pack run pk" in said, said
    assert named in said and (cache / group.split()[1].split("/")[0]).is_dir()  # not deleted


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs would reach S3")
def test_a_cache_root_that_cannot_be_read_is_named_not_a_traceback(work, monkeypatch):
    """An s3:// cache root without s3fs: the other roots are still looked in, and the one not
    read is named (`latents not checked`), not taken for holding no latents."""
    monkeypatch.setenv("REPACKCTL_CACHE", "s3://no-bucket/cache")
    out = cli_ok("runs", "info", "pk")
    assert f"used by {_group(work / 'cache')}" in out, out
    assert "latents not checked cache s3://no-bucket/cache could not be read" in out, out
    data = json.loads(cli_ok("runs", "info", "pk", "--json"))
    assert len(data["latents_not_checked"]) == 1 and len(data["used_by_latents"]) == 1, data
