"""`train dit` on an entry of unlabelled images (an image folder without class folders, whose
labels are -1) is refused with an `Error:` naming the entry, before a run folder is made: a
class-conditional DiT needs a class per image. It ended in a traceback from the class embedding
(``IndexError: index out of range in self``).

Real components: a flat folder of PNGs, `extract` (patchpix, 32 px), `pack train` (2 steps) and
`pack encode` in-process on a real Zarr cache, then `train dit` through the CLI.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from support.cli import cli_refused

from repackctl.errors import DataError
from repackctl.extract import run_extract
from repackctl.pack.encode import run_pack_encode
from repackctl.pack.task import run_pack_train
from repackctl.settings import resolve_settings


def test_train_dit_refuses_an_entry_without_classes(tmp_path, monkeypatch):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    common = {"cache": str(cache), "runs": str(runs), "device": "cpu", "num_workers": 0}
    data = {"data": f"imagefolder:{flat}", "encoder": "patchpix", "resolution": 32}
    run_extract(
        resolve_settings(None, common | {f"extract.{k}": v for k, v in data.items()}).settings
    )
    pack = data | {"steps": 2, "batch_size": 4, "latent_channels": 4, "ch": 8, "run": "pk"}
    pack |= {"disc_channels": 8, "ckpt_every": 2}
    settings = resolve_settings(None, common | {f"pack.{k}": v for k, v in pack.items()}).settings
    run_pack_train(settings)
    run_pack_encode(settings)
    monkeypatch.setenv("REPACKCTL_CACHE", str(cache))
    monkeypatch.setenv("REPACKCTL_RUNS", str(runs))
    msg = cli_refused(
        DataError.exit_code, "train", "dit", "--size", "tiny", "--steps", "2", "--pack-run", "pk",
        "--device", "cpu",
    )  # fmt: skip
    assert "8 of 8 images have no class" in msg and "class folders" in msg, msg
    assert sorted(p.name for p in runs.iterdir()) == ["pk"]  # no DiT run folder was made
