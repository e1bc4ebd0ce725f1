"""An image-folder entry stays usable after its `captions.jsonl` is written into the folder.

`repackctl captions` reads a folder entry's captions from ``captions.jsonl`` (or ``.csv``) in
the folder itself. The listing passes over that file (not in a class folder) and the entry's
source record lists what it passed over, so once the file was there every later extract of the
entry (another encoder for REPA, a resume of a killed extract, the same command again) was
refused "made from another source (skipped_in_listing: None vs [...])", its hint removing the
entry with its features, latents and caption features. Files of the entry that changed are
still refused.
"""

from __future__ import annotations

import json
import re

from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok, cli_refused


def test_a_captions_file_in_the_folder_keeps_the_entry(tmp_path) -> None:
    folder = random_image_folder(tmp_path / "pets")
    cache = ["--cache", str(tmp_path / "cache")]
    base = ["extract", "--data", f"imagefolder:{folder}", *cache]
    cli_ok(*base, *PATCHPIX)
    rows = [{"file": f"{c}/{i}.png", "caption": f"a {c}"} for c in ("cat", "dog") for i in range(3)]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    again = cli_ok(*base, *PATCHPIX)  # the same command: everything already done
    assert "resuming: 6 samples" in again and "another source" not in again, again
    other = PATCHPIX[:1] + ["builtin"] + PATCHPIX[2:]  # another encoder over the same entry
    out = cli_ok(*base, *other)
    assert re.search(r"written now │ 6 ", out), out
    entry = re.search(r"entry │ (folder-pets-\w+--train--32px)", out)[1]
    info = cli_ok("cache", "info", entry, *cache)
    assert "features/patchpix--final" in info and "features/builtin--final" in info, info

    (folder / "cat" / "3.png").write_bytes((folder / "cat" / "0.png").read_bytes())
    refused = cli_refused(6, *base, *PATCHPIX)  # an image of a class folder added: refused
    assert "another source" in refused, refused
