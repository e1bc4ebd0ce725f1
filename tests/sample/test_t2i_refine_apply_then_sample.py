"""Text-to-image samples folders: `sample --refiner R` after `refine apply --refiner R`, and the
device a folder is made on.

- `sample --refiner R` of a t2i run on the folder `refine apply --refiner R` wrote from the
  same samples (the default folder of the default prompts, or ``--out``) was refused as one of
  "other settings", listing null values (the class-conditional path was fixed in s28b). It is
  now the same result: nothing made, nothing changed; one of other prompts is refused by what
  differs.
- A t2i folder records the device type it is made on; `sample` on another is refused by name,
  nothing changed.

A real toy stack (tests/support/caches.py ``t2i_stack``) and a refiner in the `refine train`
contract (tests/support/stack.py ``save_refiner_run``); real CLI calls and folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, cli_refused
from support.snapshot import folder_files
from support.stack import save_refiner_run

from repackctl.errors import ConfigError
from repackctl.paths import SETTINGS_JSON
from repackctl.run_lock import SAMPLES_LOCK

CPU = ["--device", "cpu"]
PROMPTS = ["--prompt", "a red star", "--prompt", "a blue ring"]
SAMPLE = ["sample", "-r", "tA", "--steps", "2", "-n", "4", "--grid", "0", *CPU]
REFINER = "refine-32"

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process runs as in a subprocess


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("s29-t2i") / "w")
    save_refiner_run(str(work / "runs"), REFINER, 32)  # the samples' side: 32 px
    return work


@pytest.fixture
def work(stack, tmp_path, monkeypatch) -> Path:
    return use_stack(stack, tmp_path, monkeypatch)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return folder_files(folder, skip=(SAMPLES_LOCK,))


def _apply(src: Path) -> None:
    cli_ok("refine", "apply", str(src), "--refiner", REFINER, *CPU)


def test_t2i_sample_with_the_refiner_after_refine_apply_is_the_same_result(work):
    cli_ok(*SAMPLE)  # the default prompts: the default folder
    (src,) = (work / "samples").iterdir()
    _apply(src)
    refined = src.parent / f"{src.name}--{REFINER}"
    before = _snapshot(refined)

    out = cli_ok(*SAMPLE, "--refiner", REFINER)  # the same folder name: already there
    assert "4 (0 now, 4 already done)" in out, out
    assert _snapshot(refined) == before
    assert sorted(p.name for p in (work / "samples").iterdir()) == [src.name, refined.name]

    # other samples (given prompts) into that folder: refused by what differs, nothing changed
    out = cli_refused(
        ConfigError.exit_code, *SAMPLE, *PROMPTS, "--refiner", REFINER, "--out", str(refined)
    )
    assert "refine apply" in out and "other prompts" in out and "null" not in out, out
    assert _snapshot(refined) == before


def test_t2i_sample_with_the_refiner_finds_the_refine_apply_folder_of_given_prompts(work, tmp_path):
    # default folders: `sample` names the given prompts' folder <…>--p<hash>, `refine apply` its
    # refined folder <…>--p<hash>--refine-32, `sample --refiner` its own <…>--refine-32--p<hash>
    cli_ok(*SAMPLE, *PROMPTS)
    (src,) = (work / "samples").iterdir()
    _apply(src)
    refined = src.parent / f"{src.name}--{REFINER}"
    before = _snapshot(refined)
    out = cli_ok(*SAMPLE, *PROMPTS, "--refiner", REFINER)
    assert "4 (0 now, 4 already done)" in out, out
    assert _snapshot(refined) == before
    assert sorted(p.name for p in (work / "samples").iterdir()) == [src.name, refined.name]

    # and through --out
    cli_ok(*SAMPLE, *PROMPTS, "--out", str(tmp_path / "plain"))
    _apply(tmp_path / "plain")
    out = cli_ok(
        *SAMPLE, *PROMPTS, "--refiner", REFINER, "--out", str(tmp_path / f"plain--{REFINER}")
    )
    assert "4 (0 now, 4 already done)" in out, out


def test_t2i_sample_refuses_a_folder_started_on_another_device(work, tmp_path):
    folder = tmp_path / "s"
    cli_ok(*SAMPLE, *PROMPTS, "--out", str(folder))
    settings = json.loads((folder / SETTINGS_JSON).read_text())
    assert settings["device_type"] == "cpu"
    (folder / SETTINGS_JSON).write_text(json.dumps({**settings, "device_type": "cuda"}))
    (folder / "000003.png").unlink()  # something to make on the CPU
    before = _snapshot(folder)

    out = cli_refused(ConfigError.exit_code, *SAMPLE, *PROMPTS, "--out", str(folder))
    assert "started on cuda" in out and "computes on cpu" in out, out
    assert "--device cuda" in out and "another --out" in out, out
    assert _snapshot(folder) == before


def test_refine_apply_of_a_t2i_folder_shows_its_grid_as_the_source(work, tmp_path):
    from PIL import Image

    src = tmp_path / "plain"
    cli_ok(*SAMPLE[:-4], "--grid", "4", *CPU, *PROMPTS, "--out", str(src))  # one row per prompt
    _apply(src)
    refined = tmp_path / f"plain--{REFINER}"
    with Image.open(src / "grid.png") as a, Image.open(refined / "grid.png") as b:
        assert a.size == b.size  # the same labelled rows, not a square of 4
    assert json.loads((refined / "protocol.json").read_text())["grid"] == 4
