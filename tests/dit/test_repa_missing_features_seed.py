"""The command `train dit` names for REPA features that are not in the cache, on an image folder.

An image-folder entry records no seed (its images are files, not drawn), but the features of an
encoder whose weights the seed draws (``patchpix``: weights tag ``seeded:<seed>``) depend on it.
The hint was built from the entry alone and named no ``--seed``: run as printed, it drew other
weights and wrote another features group, and `train dit` asked for the same command again.
Now the seed (and ``--weights``) come from the encoder record the packed latents keep, and the
command as printed writes the very group the latents were packed from.

Real components: an image folder, a real Zarr cache, the CLI in-process.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from support.caches import PATCHPIX, random_image_folder
from support.cli import cli_ok, cli_refused


def test_the_hint_for_missing_repa_features_names_the_seed_that_drew_them(tmp_path: Path) -> None:
    images = random_image_folder(tmp_path / "images")
    cache, runs = ["--cache", str(tmp_path / "cache")], ["--runs", str(tmp_path / "runs")]
    data = ["--data", f"imagefolder:{images}", "--seed", "3"]
    cli_ok("extract", *PATCHPIX, *data, *cache)
    pack = ["pack", "train", *PATCHPIX[:4], *data, "--batch-size", "4", "-c", "4", "--ch", "8"]
    cli_ok(*pack, "--steps", "1", "--name", "pk", "--image-every", "0", *cache, *runs)
    cli_ok("pack", "encode", "--run", "pk", "--device", "cpu", *cache, *runs)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("folder-")]
    (fid,) = [p.name for p in (entry / "features").iterdir() if p.is_dir()]
    cli_ok("cache", "rm", entry.name, "--features", fid, "--yes", *cache)

    dit = ["train", "dit", "--size", "tiny", "--steps", "1", "-b", "4", "--device", "cpu"]
    dit += ["--pack-run", "pk", "--name", "d", "--image-every", "0", *cache, *runs]
    out = cli_refused(6, *dit)
    assert f"REPA needs the encoder features {fid} of entry {entry.name}" in out, out
    (command,) = [c for c in out.split("`") if c.startswith("repackctl extract")]
    assert "--seed 3" in command, command
    cli_ok(*shlex.split(command)[1:], "--num-workers", "0", "--device", "cpu", *cache)
    assert [p.name for p in (entry / "features").iterdir() if p.is_dir()] == [fid]
    cli_ok(*dit)  # REPA reads the features the latents were packed from
