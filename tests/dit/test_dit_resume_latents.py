"""`train dit` keeps the latents it started on, and decodes its sample grid with its pack model.

* A run started without ``--latents`` stored ``latents: None``: after a later `pack encode` on
  the same data its resume picked the newest latents and was refused ("this run was trained on
  latents …"), with a hint to pass its own latents under ``--allow-change latents`` (a recorded
  change that is none). The run now records the latents and entry it resolved when it started
  (as `train t2i` records its caption group); a run that stored None resumes on the latents of
  its checkpoint.
* The latents record their pack checkpoint as ``attrs["pack_checkpoint"]``; the DiT read
  ``attrs["pack"]["checkpoint"]``: every grid was a latent colour block ("pack checkpoint not
  found: latent-space grid") and state.json recorded ``pack.checkpoint: null``.

Real components: extract → pack train → pack encode (``support.caches.packed_cache``), a second
tiny pack run encoded later, real tiny DiT runs through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.caches import shared_packed_cache, use_stack
from support.cli import cli_ok, cli_refused

from repackctl.cache.store import DatasetEntry, list_entries
from repackctl.errors import ResumeConflict
from repackctl.run_files import CONFIG_SHA256, json_sha256
from repackctl.train import latest_checkpoint, read_state

CPU = ["--device", "cpu"]
DIT = ["train", "dit", "--size", "tiny", "-b", "8", "--log-every", "1", "--ckpt-every", "2"]
DIT += ["--repa-weight", "0", *CPU]
RES = 32  # the packed cache's image side (patchpix, 32 px)

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cache/ (16 images, latents of the 4-step pack run ``pk``) and runs/pk."""
    root = tmp_path_factory.mktemp("resume-latents")
    shared_packed_cache(tmp_path_factory, root / "cache", 16)
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A private copy of ``base`` as this test's cache, runs and samples roots."""
    return use_stack(base, tmp_path, monkeypatch)


def _state(run: Path) -> dict:
    return read_state(latest_checkpoint(run))


def _newer_latents(work: Path) -> str:
    """A second tiny pack run, trained and encoded after the DiT started: the newest latents."""
    src = ["--encoder", "patchpix", "--resolution", str(RES), "-n", "16"]
    pack = ["pack", "train", *src, "--steps", "2", "--batch-size", "8", "--ch", "16", "-c", "4"]
    cli_ok(*pack, "--name", "pk2", "--image-every", "0", *CPU)
    cli_ok("pack", "encode", "--run", "pk2", *CPU)
    (entry,) = list_entries(str(work / "cache"))
    ids = DatasetEntry.open(str(work / "cache"), entry).latent_ids()
    (newer,) = [i for i in ids if "--pk2-" in i]
    return newer


def _forget_latents(run: Path) -> None:
    """``config.json`` as a run started before the latents were recorded wrote it (resealed)."""
    path = run / "config.json"
    doc = json.loads(path.read_text())
    record = doc["extra"]["settings"]
    for key in ("latents", "entry"):
        record["values"]["dit"][key] = None
        record["sources"].pop(f"dit.{key}", None)
    doc[CONFIG_SHA256] = json_sha256(doc, CONFIG_SHA256)
    path.write_text(json.dumps(doc))


@pytest.mark.slow
@pytest.mark.parametrize("started", ["recorded", "before-recording"])
def test_a_resume_after_a_newer_pack_encode_trains_on_its_own_latents(work, started):
    run = work / "runs" / "d"
    cli_ok(*DIT, "--steps", "2", "--image-every", "0", "--name", "d")
    own = _state(run)["extra"]["cache"]["latents"]
    assert "--pk-" in own
    record = json.loads((run / "config.json").read_text())["extra"]["settings"]
    assert record["values"]["dit"]["latents"] == own  # resolved at the start, kept
    if started == "before-recording":
        _forget_latents(run)
    newer = _newer_latents(work)
    assert newer != own
    out = cli_ok(*DIT, "--steps", "4", "--image-every", "0", "--name", "d")
    assert "trained on latents" not in out
    state = _state(run)
    assert state["step"] == 4 and state["extra"]["cache"]["latents"] == own
    # no allowed change was recorded (there was none); "replaced" lines keep the old configs
    history = (run / "config_history.jsonl").read_text().splitlines()
    assert history and not [line for line in history if "changes" in json.loads(line)]
    # a new run still takes the newest latents
    cli_ok(*DIT, "--steps", "2", "--image-every", "0", "--name", "e")
    assert _state(work / "runs" / "e")["extra"]["cache"]["latents"] == newer


def test_other_latents_on_resume_are_refused_with_a_hint_that_works(work):
    """Naming other latents is refused, allowed or not, before any model is built (audit s37
    B finding 3: it was refused by the checkpoint); the hint is to drop them (it named
    ``--latents OWN --allow-change latents``)."""
    run = work / "runs" / "d"
    cli_ok(*DIT, "--steps", "2", "--image-every", "0", "--name", "d")
    own = _state(run)["extra"]["cache"]["latents"]
    newer = _newer_latents(work)
    again = [*DIT, "--steps", "4", "--image-every", "0", "--name", "d"]
    out = cli_refused(
        ResumeConflict.exit_code, *again, "--latents", newer, "--allow-change", "latents"
    )
    assert f"dit.latents: '{own}' → '{newer}'" in out and "drop the flag" in out, out
    assert "dit.latents cannot change on resume" in out, out
    assert "--allow-change" not in out[out.index("Hint:") :], out
    assert _state(run)["step"] == 2
    cli_ok(*again)  # as the hint says
    assert _state(run)["extra"]["cache"]["latents"] == own and _state(run)["step"] == 4


def test_the_grid_is_decoded_and_the_pack_checkpoint_recorded(work):
    run = work / "runs" / "g"
    out = cli_ok(*DIT, "--steps", "2", "--image-every", "2", "--name", "g")
    assert "latent-space grid" not in out
    extra = _state(run)["extra"]
    ckpt = Path(extra["pack"]["checkpoint"])
    assert ckpt.parts[-3:] == ("pk", "checkpoints", "step-0000004") and ckpt.is_dir()
    # the grid of decoded images: RES-pixel cells (a latent preview has 64-pixel ones)
    from repackctl.metrics.recon import save_grid

    k = min(extra["num_classes"], 8)
    names = extra["class_names"] or [str(i) for i in range(k)]
    cells = [np.zeros((4, RES, RES, 3), np.uint8) for _ in range(k)]
    want = save_grid(cells, work / "want.png", labels=[str(n) for n in names[:k]])
    with Image.open(run / "images" / "step-0000002.png") as got, Image.open(want) as ref:
        assert got.size == ref.size
