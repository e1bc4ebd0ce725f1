"""What `extract`, `cache ls` and `cache verify --repair` say about damaged features.

- A `done` chunk of an entry (or of its features) that fails its checksum stopped `extract`
  (and `extract --strict`) with zarr's ``ValueError`` traceback, while `cache ls` and `cache info`
  counted its rows pending and named that same extract as the command that finishes them. Now
  extract refuses it with an `Error:` naming the chunk and `cache verify --repair`, and the
  listing names the repair before the extract.
- The extract command that `cache verify --repair` (and `cache ls`) names for features of a timm
  encoder said `--encoder dinov3-vitt16-qkvb` (the features' spec id), which no `--encoder`
  takes: it names the `--encoder` they were made with.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from support.caches import patchpix_fixtures
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry

ENTRY = "builtin-n16--train--32px"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16", "--num-workers", "0"]

base_cache, cache = patchpix_fixtures("audit7-done")


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[2] ^= 0xFF
    path.write_bytes(data)


def _finish_commands(out: str) -> list[str]:
    """The commands `cache ls` names after "finish with" (each in backticks)."""
    return re.findall(r"`(repackctl [^`]+)`", out.split("finish with", 1)[-1])


def _run_named(cmd: str, cache: Path) -> str:
    args = shlex.split(cmd)[1:]
    return cli_ok(*args, "--cache", str(cache), *(["--num-workers", "0"] * (args[0] == "extract")))


def test_corrupt_done_chunk_is_an_error_and_listed_with_its_repair(cache: Path) -> None:
    roots = ["--cache", str(cache), "--device", "cpu"]
    (fid,) = DatasetEntry.open(str(cache), ENTRY).feature_ids()
    for group, label in (("", "done"), (f"features/{fid}", f"features/{fid}/done")):
        chunk = cache / ENTRY / group / "done" / "c" / "1"  # rows 8–15
        _flip_bytes(chunk)
        kept = chunk.read_bytes()
        for strict in ([], ["--strict"]):
            out = cli_refused(6, "extract", *SRC, *strict, *roots)
            assert f"{label}: corrupt chunk c/1 (rows 8–15)" in out, out
            assert f"repackctl cache verify {ENTRY} --repair" in out, out
        assert chunk.read_bytes() == kept  # nothing written on the way
        listed = cli_ok("cache", "ls", "--cache", str(cache))
        cmds = _finish_commands(listed)
        assert cmds[0] == f"repackctl cache verify {ENTRY} --repair", listed
        info = cli_ok("cache", "info", ENTRY, "--cache", str(cache))
        assert f"finish with `repackctl cache verify {ENTRY} --repair`" in info, info
        for cmd in cmds:  # as listed: the repair, then the extract
            _run_named(cmd, cache)
        assert "unfinished" not in cli_ok("cache", "ls", "--cache", str(cache))
        cli_ok("cache", "verify", "--cache", str(cache))


def test_repair_names_the_encoder_flag_of_timm_features(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    encoder = "timm:vit_tiny_patch16_dinov3_qkvb"
    src = ["--encoder", encoder, "--weights", "random", "--resolution", "32", "-n", "8"]
    cli_ok(
        "extract", *src, "--chunk", "4", "--shard", "4", "--num-workers", "0", "--cache", str(root)
    )
    entry = DatasetEntry.open(str(root), "builtin-n8--train--32px")
    (fid,) = entry.feature_ids()
    tokens = root / entry.name / "features" / fid / "tokens" / "c"
    shard = sorted(p for p in tokens.rglob("*") if p.is_file())[0]  # rows 0–3
    _flip_bytes(shard)
    out = cli_ok("cache", "verify", "--repair", "--cache", str(root))
    (cmd,) = [c for c in re.findall(r"`(repackctl extract [^`]+)`", out)][:1]
    assert f"--encoder {encoder} " in cmd, out
    listed = cli_ok("cache", "ls", "--cache", str(root))
    assert _finish_commands(listed) == [cmd], listed
    done = _run_named(cmd, root)  # the command as named finishes the features
    assert "written now │ 4" in done and "already done │ 4" in done, done
    assert entry.features(fid).complete()
    cli_ok("cache", "verify", "--cache", str(root))


def test_features_made_without_recorded_settings_name_a_runnable_extract(tmp_path: Path) -> None:
    """Features written through ``run_extract`` without the CLI's settings record (the demo's
    pipeline does so) are named from their encoder record: its weights tag ``random:3`` is
    `--weights random --seed 3`, its spec id the timm encoder it is."""
    from repackctl.cache.commands import features_extract_command
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    root = tmp_path / "cache"
    flags = {"cache": str(root), "num_workers": 0, "seed": 3, "extract.weights": "random"}
    flags |= {"extract.encoder": "timm:vit_tiny_patch16_dinov3_qkvb", "extract.num": 4}
    flags |= {"extract.resolution": 32, "extract.chunk": 4, "extract.shard": 4}
    run_extract(resolve_settings(None, flags, environ={}).settings)
    entry = DatasetEntry.open(str(root), "builtin-n4--train--32px")
    (fid,) = entry.feature_ids()
    cmd = features_extract_command(entry, fid)
    assert "--encoder timm:vit_tiny_patch16_dinov3_qkvb " in cmd and "--weights random " in cmd
    assert cmd.endswith("--seed 3"), cmd
    out = _run_named(cmd, root)  # the same features: nothing to write
    assert "already done │ 4" in out and f"features │ {fid}" in out, out
