"""`pack encode` refuses features computed in another precision than the pack run trained on.

A pack run did not record the precision of its training features, so encoding a val entry
whose features were extracted in bf16 with a run trained on fp32 features (or the reverse) went
ahead with exit 0: the latents came from another input distribution than the model saw. Now
the run's checkpoint records it (``features_precision``), `pack encode` is an `Error:` naming
both precisions before anything is written, and its hint (remove, extract in the run's
precision) lets the encode run. Runs that recorded no precision encode as before.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from support.caches import cli_pack_stack
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry
from repackctl.pack.encode import FEATURES_PRECISION, target_features
from repackctl.pack.load import load_pack
from repackctl.settings import resolve_settings

VAL = "builtin-n3--val--32px"


def _stack(tmp_path: Path, train: str, val: str) -> tuple[list[str], list[str]]:
    """A 1-step pack run ``pk`` on 16 train images extracted in ``train`` precision, and 3 val
    images extracted in ``val``; returns the ``--cache`` and ``--runs`` flags."""
    return cli_pack_stack(tmp_path, precision=train, val_precision=val)


def test_encode_of_features_in_another_precision_is_refused(tmp_path: Path) -> None:
    cache, runs = _stack(tmp_path, "fp32", "bf16")
    encode = ["pack", "encode", "--run", "pk", "--split", "val", "--device", "cpu", *cache, *runs]
    out = cli_refused(6, *encode)
    assert "trained on features computed in fp32" in out and "computed in bf16" in out, out
    entry = DatasetEntry.open(cache[1], VAL)
    assert "latents" not in entry.group  # refused before anything was written
    assert load_pack("pk", runs=runs[1]).extra[FEATURES_PRECISION] == "fp32"

    # the hint, as the user runs it: remove the bf16 features, extract them in fp32
    rm, extract = out.split("Hint: ", 1)[1].split("`")[1:4:2]
    assert "--precision fp32" in extract and "--split val" in extract, extract
    cli_ok(*shlex.split(rm)[1:], *cache)
    cli_ok(*shlex.split(extract)[1:], "--num-workers", "0", "--device", "cpu", *cache)
    assert "written now │ 3" in cli_ok(*encode)


def test_the_reverse_is_refused_and_a_run_without_a_record_is_not_checked(
    tmp_path: Path,
) -> None:
    cache, runs = _stack(tmp_path, "bf16", "fp32")
    encode = ["pack", "encode", "--run", "pk", "--split", "val", "--device", "cpu", *cache, *runs]
    out = cli_refused(6, *encode)
    assert "trained on features computed in bf16" in out and "computed in fp32" in out, out
    from repackctl.pack.encode import check_features_precision

    handle = load_pack("pk", runs=runs[1])
    flags = {"cache": cache[1], "runs": runs[1], "pack.run": "pk", "pack.split": "val"}
    entry, feats = target_features(resolve_settings(None, flags).settings, handle)
    del handle.extra[FEATURES_PRECISION]  # as a checkpoint written before it was recorded
    check_features_precision(handle, entry, feats)  # no guess: encodes as before


def test_recon_and_probe_refuse_held_out_features_of_another_precision(tmp_path: Path) -> None:
    """`evaluate recon` and `evaluate probe` apply the pack model to the held-out features as
    `pack encode` does: features of another precision were scored without a word."""
    cache, runs = _stack(tmp_path, "fp32", "bf16")
    where = [*cache, *runs, "--device", "cpu"]
    for command in ("recon", "probe"):
        out = cli_refused(6, "evaluate", command, "--run", "pk", "--split", "val", *where)
        assert "trained on features computed in fp32" in out and "in bf16" in out, out
    assert not list((tmp_path / "runs" / "pk").rglob("recon-*"))  # nothing was written
    assert not list((tmp_path / "runs" / "pk").rglob("probe-*"))
