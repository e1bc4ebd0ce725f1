"""A samples folder is made on one device type, and `refine apply` shows the source's grid.

- A folder started on CUDA and finished on the CPU (or the reverse) mixed two devices' kernels
  in one folder (they round differently: latents by ~1e-6, pixels by ±1/255); nothing recorded
  the device. A folder now records ``device_type``, and `sample` / `refine apply` on another
  device type is refused by name (``--device``), nothing changed; a folder made before it was
  recorded goes on as before. `refine apply` that recomputes a source's latents on another
  device type than the samples were made on is refused before anything is written.
- `refine apply` wrote a 64-image grid.png whatever the source folder's grid showed; it now
  shows as many as the source's (its card's ``grid``), or ``--grid N``.

The shared toy stack (tests/support/stack.py) with a 32 px refiner; real CLI calls and folders.
The folders are made on the CPU, then their settings file says "cuda" as a GPU run left it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files
from support.stack import refiner_env

from repackctl.errors import ConfigError, DataError
from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK

REFINER = "refine-s29"
SAMPLE = ["sample", "-r", "dit-tiny", "-n", "4", "--steps", "2", "--device", "cpu"]


env = refiner_env(REFINER)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return folder_files(folder, skip=(SAMPLES_LOCK,))


def _set_device(folder: Path, device: str | None) -> dict:
    """Record ``device`` as the folder's device type (None: as an earlier version, none)."""
    settings = json.loads((folder / SETTINGS_JSON).read_text())
    settings.pop("device_type", None)
    if device is not None:
        settings["device_type"] = device
    (folder / SETTINGS_JSON).write_text(json.dumps(settings))
    return settings


def _apply(src: Path, *extra: str) -> list[str]:
    return ["refine", "apply", str(src), "--refiner", REFINER, "--device", "cpu", *extra]


def test_sample_refuses_a_folder_started_on_another_device(env):
    cli_ok(*SAMPLE)
    (folder,) = Path(env["samples"]).iterdir()
    assert json.loads((folder / SETTINGS_JSON).read_text())["device_type"] == "cpu"
    _set_device(folder, "cuda")  # as a GPU run left it
    (folder / "000001.png").unlink()  # something to make on the CPU
    before = _snapshot(folder)

    out = cli_refused(ConfigError.exit_code, *SAMPLE)
    assert "started on cuda" in out and "computes on cpu" in out, out
    assert "--device cuda" in out and "--out" in out, out
    assert _snapshot(folder) == before  # nothing lost, nothing written

    started = _set_device(folder, None)  # made before the device was recorded: as before
    cli_ok(*SAMPLE)
    assert (folder / "000001.png").is_file()
    assert json.loads((folder / SETTINGS_JSON).read_text()) == started  # left as it was


def test_refine_apply_refuses_a_refined_folder_started_on_another_device(env):
    cli_ok(*SAMPLE)
    (src,) = Path(env["samples"]).iterdir()
    cli_ok(*_apply(src))
    refined = src.parent / f"{src.name}--{REFINER}"
    assert json.loads((refined / SETTINGS_JSON).read_text())["device_type"] == "cpu"
    _set_device(refined, "cuda")
    (refined / "000002.png").unlink()
    before = _snapshot(refined)

    out = cli_refused(ConfigError.exit_code, *_apply(src))
    assert "started on cuda" in out and "--device cuda" in out, out
    assert _snapshot(refined) == before


def test_refine_apply_recomputes_no_latents_on_another_device(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE, "--out", str(src))
    shutil.move(src / "latents.npy", tmp_path / "latents.npy")  # recomputed from the DiT
    _set_device(src, "cuda")  # the samples were made on a GPU
    before = _snapshot(src)

    out = cli_refused(DataError.exit_code, *_apply(src))
    assert "made on cuda" in out and "--device cuda" in out and "latents.npy" in out, out
    assert not (tmp_path / f"s--{REFINER}").exists()  # nothing written
    assert _snapshot(src) == before

    _set_device(src, "cpu")  # made where they are recomputed: refined
    assert "regenerated from the DiT" in cli_ok(*_apply(src))


def test_refine_apply_shows_as_many_images_in_its_grid_as_the_source(env, tmp_path):
    src = tmp_path / "s"
    cli_ok(*SAMPLE[:4], "8", *SAMPLE[5:], "--grid", "4", "--out", str(src))  # -n 8, grid of 4
    cli_ok(*_apply(src))
    refined = tmp_path / f"s--{REFINER}"
    with Image.open(src / "grid.png") as a, Image.open(refined / "grid.png") as b:
        assert a.size == b.size  # 2 × 2 cells, not 3 × 3 (8 of 64)
    assert json.loads((src / "protocol.json").read_text())["grid"] == 4
    assert json.loads((refined / "protocol.json").read_text())["grid"] == 4

    shutil.move(refined, tmp_path / "kept")
    cli_ok(*_apply(src, "--grid", "0"))  # or as many as asked
    assert not (refined / "grid.png").exists()
    assert json.loads((refined / "protocol.json").read_text())["grid"] == 0
