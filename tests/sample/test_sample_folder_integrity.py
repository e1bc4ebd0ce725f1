"""A samples folder's files are verifiable: nothing swapped, edited or damaged in it is scored,
refined or assembled silently.

- `sample` records the sha256 and size of samples.npz and latents.npy in protocol.json;
  `evaluate fid` and `refine apply` refuse a file that does not match (Error + Hint naming it),
  and a rerun of `sample` rebuilds a swapped samples.npz from the PNGs. Cards written before
  they recorded their files keep working.
- On resume, a per-sample file damaged after it was written is made again (with a ``Warning:``
  naming it), so the folder equals an uninterrupted run's byte for byte.
- A user's file named like one of our temporaries is never taken for one.

The shared toy stack (patchpix, 32 px, pack ``pack-tiny``, DiT ``dit-tiny``) and a refiner
checkpoint written with the real ``save_checkpoint`` (random weights, the `refine train`
contract).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread
from support.kill import kill_after_pngs
from support.stack import (
    FD_SCORE,
    _images,
    _settings,
    stack_env,
    stack_with_refiner,
)
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import DataError
from repackctl.sample.run import run_sample

runner = CliRunner()
SCORE = FD_SCORE


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, str]:
    return stack_with_refiner(tmp_path_factory, "integrity-refine")


@pytest.fixture
def env(stack, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    yield from stack_env(stack, tmp_path, monkeypatch)


def _sample(stack: dict[str, str], out: Path, seed: int = 3) -> Path:
    settings = _settings(stack, run="dit-tiny", num=6, steps=2, out=str(out))
    settings = settings.model_copy(update={"seed": seed})
    return run_sample(settings).out_dir


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


def _refused(code: int, out: str, *words: str) -> None:
    assert code == DataError.exit_code, out
    assert "Traceback" not in out and "Error:" in out and "Hint:" in out, out
    for word in words:
        assert word in out, out


def _card(folder: Path) -> dict:
    return json.loads((folder / "protocol.json").read_text())


def _pair(env: dict[str, str], tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two finished samples folders of seeds 3 and 4, then a copy of the first to edit."""
    good, other = _sample(env, tmp_path / "good"), _sample(env, tmp_path / "other", seed=4)
    assert not np.array_equal(_images(good), _images(other))
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    return good, other, edited


def test_the_card_records_the_files_sample_wrote(env, tmp_path):
    folder = _sample(env, tmp_path / "s")
    files = _card(folder)["files"]
    for name in ("samples.npz", "latents.npy"):
        data = (folder / name).read_bytes()
        assert files[name]["size"] == len(data)
        assert files[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (folder / "latents").exists()  # the per-sample files and manifests are gone


def test_evaluate_refuses_a_swapped_npz_and_sample_rebuilds_it(env, tmp_path):
    good, other, edited = _pair(env, tmp_path)
    shutil.copy(other / "samples.npz", edited / "samples.npz")
    code, out = _cli("evaluate", "fid", str(edited), *SCORE)
    _refused(code, out, f"{edited / 'samples.npz'}", "sha256", "--out")
    assert not (edited / "metrics.json").exists()  # nothing written before the refusal

    # the hint's repair: the same `sample` command rebuilds samples.npz from the PNGs
    _sample(env, edited)
    assert np.array_equal(_images(edited), _images(good))
    code, out = _cli("evaluate", "fid", str(edited), *SCORE)
    assert code == 0, out


def test_evaluate_refuses_a_swapped_card(env, tmp_path):
    _, other, edited = _pair(env, tmp_path)
    shutil.copy(other / "protocol.json", edited / "protocol.json")
    code, out = _cli("evaluate", "fid", str(edited), *SCORE)
    _refused(code, out, "samples.npz", "protocol.json")
    # nor does `sample` rebuild anything from a card that is not the folder's
    with pytest.raises(DataError, match="latents.npy"):
        _sample(env, edited)


def test_refine_apply_refuses_swapped_or_cut_latents(env, tmp_path):
    _, other, edited = _pair(env, tmp_path)
    shutil.copy(other / "latents.npy", edited / "latents.npy")
    code, out = _cli("refine", "apply", str(edited), "--refiner", "integrity-refine")
    _refused(code, out, f"{edited / 'latents.npy'}", "sha256")
    assert not (tmp_path / "edited--refine-integrity-refine").exists()

    with open(edited / "latents.npy", "r+b") as f:  # cut short
        f.truncate(1000)
    code, out = _cli("refine", "apply", str(edited), "--refiner", "integrity-refine")
    _refused(code, out, "latents.npy", "1000 bytes")

    # a card without recorded files (older folders): the cut file is still refused cleanly
    card = _card(edited)
    del card["files"]
    (edited / "protocol.json").write_text(json.dumps(card))
    code, out = _cli("refine", "apply", str(edited), "--refiner", "integrity-refine")
    _refused(code, out, "latents.npy", "cut short")
    assert not (tmp_path / "edited--refine-integrity-refine").exists()


def test_refine_apply_records_its_own_files(env, tmp_path):
    folder = _sample(env, tmp_path / "s")
    code, out = _cli("refine", "apply", str(folder), "--refiner", "integrity-refine")
    assert code == 0, out
    refined = tmp_path / "s--refine-integrity-refine"
    files = _card(refined)["files"]
    assert set(files) == {"samples.npz"}
    assert files["samples.npz"]["size"] == (refined / "samples.npz").stat().st_size
    code, out = _cli("evaluate", "fid", str(refined), *SCORE)
    assert code == 0, out
    shutil.copy(folder / "samples.npz", refined / "samples.npz")  # the unrefined images
    code, out = _cli("evaluate", "fid", str(refined), *SCORE)
    _refused(code, out, f"{refined / 'samples.npz'}")


def test_a_folder_whose_card_records_no_files_works_as_before(env, tmp_path):
    folder = _sample(env, tmp_path / "old")
    card = _card(folder)
    del card["files"]
    (folder / "protocol.json").write_text(json.dumps(card))
    code, out = _cli("evaluate", "fid", str(folder), *SCORE)
    assert code == 0, out
    code, out = _cli("refine", "apply", str(folder), "--refiner", "integrity-refine")
    assert code == 0, out
    _sample(env, folder)  # sampled again: the card now records its files
    assert set(_card(folder)["files"]) == {"samples.npz", "latents.npy"}


def test_a_user_file_named_like_a_temporary_is_kept(env, tmp_path):
    out = tmp_path / "user"
    out.mkdir()
    (out / ".backup.99999.tmp").write_text("hi")
    code, text = _cli("sample", "-r", "dit-tiny", "-n", "2", "--steps", "2", "--device", "cpu",
                      "--out", str(out))  # fmt: skip
    assert code != 0 and "Error:" in text and ".backup.99999.tmp" in text, text
    assert sorted(p.name for p in out.iterdir()) == [".backup.99999.tmp"]

    # in a folder `sample` started, too: only temporaries of its own files are removed
    folder = _sample(env, tmp_path / "s")
    (folder / ".backup.99999.tmp").write_text("hi")
    (folder / ".samples.npz.99999.tmp").write_text("ours")  # a dead writer's temporary
    _sample(env, folder)
    assert (folder / ".backup.99999.tmp").read_text() == "hi"
    assert not (folder / ".samples.npz.99999.tmp").exists()


def test_a_user_file_in_latents_is_never_deleted(env, tmp_path):
    """`sample` deletes its ``latents/`` folder once latents.npy holds its files: it deleted the
    folder whole, so a file of the user's there went with it. Now it deletes only the files it
    writes there; anything else is refused, and nothing is deleted."""
    folder = _sample(env, tmp_path / "s")
    (folder / "latents").mkdir()
    (folder / "latents" / "notes.txt").write_text("mine")
    code, out = _cli("sample", "-r", "dit-tiny", "-n", "6", "--steps", "2", "--seed", "3",
                     "--device", "cpu", "--out", str(folder))  # fmt: skip
    assert code != 0 and "Traceback" not in out and "Hint:" in out, out
    assert "notes.txt" in out and "nothing was deleted" in " ".join(out.split()), out
    assert (folder / "latents" / "notes.txt").read_text() == "mine"
    (folder / "latents" / "notes.txt").unlink()
    _sample(env, folder)  # only files of ours left: deleted
    assert not (folder / "latents").exists() and (folder / "latents.npy").is_file()


def _args(stack: dict[str, str], out: Path) -> list[str]:
    return ["sample", "-r", "dit-tiny", "-n", "8", "--steps", "60", "--batch-size", "1",
            "--device", "cpu", "--seed", "3", "--runs", stack["runs"], "--out", str(out)]  # fmt: skip


def _env(stack: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPACKCTL_")}
    return env | {"REPACKCTL_CACHE": stack["cache"], "REPACKCTL_RUNS": stack["runs"],
                  "OMP_NUM_THREADS": "1", "REPACKCTL_NUM_WORKERS": "0"}  # fmt: skip


@pytest.mark.slow
def test_resume_makes_damaged_per_sample_files_again(stack, tmp_path):
    """A real kill, then per-sample files damaged from outside: the rerun warns, makes them
    again, and ends with the files of an uninterrupted run, byte for byte."""
    with one_torch_thread():  # in-process, as the subprocesses run
        res = runner.invoke(app, _args(stack, tmp_path / "ref"))
    assert res.exit_code == 0, res.output
    out = tmp_path / "killed"
    kill_after_pngs(_args(stack, out), _env(stack), out, pngs=3, poll=0.05)
    assert not (out / "samples.npz").exists()
    png, npy = out / "000000.png", out / "latents" / "000001.npy"
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the image data
    png.write_bytes(bytes(data))
    with open(npy, "r+b") as f:
        f.truncate(100)  # cut inside its header

    cmd = [sys.executable, "-m", "repackctl", *_args(stack, out)]
    again = subprocess.run(cmd, env=_env(stack), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    text = again.stdout + again.stderr
    assert f"Warning: {png} was damaged" in text and f"Warning: {npy} was damaged" in text, text
    for name in ("latents.npy", "000000.png", "000001.png"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert np.array_equal(_images(out), _images(tmp_path / "ref"))


def test_a_refined_png_that_does_not_decode_is_restored_from_the_recorded_npz(env, tmp_path):
    """A damaged PNG in a finished folder assembled without manifests (`refine apply`'s output)
    is rewritten from the samples.npz its card records, with a warning naming it, as `sample`
    restores its own (it was an Error: the folder could not be finished again)."""
    folder = _sample(env, tmp_path / "s")
    code, out = _cli("refine", "apply", str(folder), "--refiner", "integrity-refine")
    assert code == 0, out
    refined = tmp_path / "s--refine-integrity-refine"
    before, png = (refined / "samples.npz").read_bytes(), (refined / "000002.png").read_bytes()
    (refined / "000002.png").write_bytes(png[:100])
    code, out = _cli("refine", "apply", str(folder), "--refiner", "integrity-refine")
    assert code == 0 and "000002.png: does not decode" in out and "rewritten" in out, out
    assert (refined / "samples.npz").read_bytes() == before
    assert (refined / "000002.png").read_bytes() == png
