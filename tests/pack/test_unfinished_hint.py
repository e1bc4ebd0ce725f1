"""The hint for unfinished features names the extract that finishes them.

`pack train --entry E --features ID` (and `pack encode` of another entry) over features with
pending rows was refused with a hint built from the settings given now, not from the entry: the
defaults (`repackctl extract --encoder builtin --data builtin`), which writes another entry (the
built-in encoder, 64 px, 2000 images) and leaves these features unfinished. Now the hint is the
extract the features were made with, as `cache verify` names it; running it lets the run start.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from support.cli import cli_ok, cli_refused

ENTRY = "builtin-n16--train--32px"
FID = "patchpix--final--32px--c1fa138fdb"
SRC = ["--encoder", "patchpix", "--resolution", "32", "-n", "16", "--num-workers", "0"]


def test_unfinished_features_hint_names_their_extract(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cli_ok("extract", *SRC, "--chunk", "8", "--shard", "8", "--cache", str(cache))
    (cache / ENTRY / "features" / FID / "tokens" / "c" / "0" / "0" / "0" / "0").unlink()
    cli_ok("cache", "verify", ENTRY, "--repair", "--cache", str(cache))  # rows pending now
    roots = ["--cache", str(cache), "--runs", str(tmp_path / "runs"), "--device", "cpu"]
    train = ["pack", "train", "--entry", ENTRY, "--features", FID, "--steps", "1", *roots]
    train += ["--batch-size", "4", "-c", "4", "--ch", "8", "--name", "pk", "--image-every", "0"]

    out = cli_refused(6, *train)
    assert "unfinished (8 samples pending)" in out, out
    hint = out.split("Hint: run `", 1)[1].split("`", 1)[0]
    assert "--encoder patchpix" in hint and "-n 16" in hint and "--resolution 32" in hint, hint

    args = shlex.split(hint)[1:]  # the hint, as the user runs it
    assert "written now │ 8" in cli_ok(*args, "--num-workers", "0", "--cache", str(cache))
    cli_ok(*train)
