"""A small real cache for the pack tests: built-in images through the `patchpix` encoder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def patchpix_cache(cache: Path, num: int = 16, resolution: int = 32) -> Path:
    """Extract ``num`` built-in train images at ``resolution`` px into ``cache`` (patchpix
    tokens, chunks and shards of 8); returns ``cache``."""
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    flags = {"cache": str(cache), "num_workers": 0, "extract.encoder": "patchpix"}
    flags |= {"extract.num": num, "extract.resolution": resolution}
    flags |= {"extract.chunk": 8, "extract.shard": 8}
    run_extract(resolve_settings(None, flags, environ={}).settings)
    return cache


def private_copy(base: Path, tmp_path: Path) -> Path:
    """A copy of the module's cache ``base`` at ``tmp_path / "cache"`` (a test may change it)."""
    dst = tmp_path / "cache"
    shutil.copytree(base, dst)
    return dst


def patchpix_fixtures(label: str, num: int = 16) -> tuple[Any, Any]:
    """``base_cache, cache = patchpix_fixtures(label)`` at a test module's top: a module-scoped
    patchpix cache of ``num`` built-in train images at 32 px (``base_cache``), and a private
    copy of it at each test's cache root (``cache``)."""
    import pytest

    @pytest.fixture(scope="module")
    def base_cache(tmp_path_factory) -> Path:
        return patchpix_cache(tmp_path_factory.mktemp(label) / "cache", num)

    @pytest.fixture
    def cache(base_cache, tmp_path) -> Path:
        return private_copy(base_cache, tmp_path)

    return base_cache, cache


def packed_cache(root: Path, num: int) -> Path:
    """``root`` holding ``num`` built-in images (patchpix, 32 px) and the latents of a 4-step
    pack run ``pk`` (d = 4, in ``root.parent / "runs"``): extract → pack train → pack encode,
    through the command line."""
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    common = ["--cache", str(root), "--runs", str(root.parent / "runs"), "--device", "cpu"]
    src = ["--encoder", "patchpix", "--resolution", "32", "-n", str(num)]
    extract = ["extract", *src, "--chunk", "8", "--shard", "16", "--num-workers", "0"]
    pack = ["pack", "train", *src, "--steps", "4", "--batch-size", "8", "--ch", "16", "-c", "4"]
    for args in (
        [*extract, "--cache", str(root)],
        [*pack, "--name", "pk", "--image-every", "0", *common],
        ["pack", "encode", "--run", "pk", *common],
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    return root


def t2i_stack(work: Path, num: int = 32, max_length: int = 8) -> Path:
    """``work`` holding cache/ and runs/ of the text-to-image path at toy size: extract (train
    ``num`` + val 8, patchpix, 32 px) → pack train ``pack-tiny`` → pack encode → captions of
    both entries → a 2-step t2i run ``tA``, through the command line."""
    import pytest

    from repackctl.cache.store import list_entries
    from support.cli import cli_ok

    cpu = ["--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPACKCTL_CACHE", str(work / "cache"))
        mp.setenv("REPACKCTL_RUNS", str(work / "runs"))
        mp.setenv("REPACKCTL_NUM_WORKERS", "0")
        ext = ["extract", "--encoder", "patchpix", "--resolution", "32", "--chunk", "8"]
        cli_ok(*ext, "--shard", "16", "-n", str(num), *cpu)
        cli_ok(*ext, "--shard", "16", "-n", "8", "--split", "val", *cpu)
        pack = ["pack", "train", "--encoder", "patchpix", "--resolution", "32", "-n", str(num)]
        pack += ["--steps", "2", "--batch-size", "8", "--ch", "8", "-c", "4"]
        cli_ok(*pack, "--name", "pack-tiny", "--image-every", "0", *cpu)
        cli_ok("pack", "encode", "--run", "pack-tiny", *cpu)
        for entry in list_entries(str(work / "cache")):
            cli_ok("captions", "--entry", entry, "--max-length", str(max_length), *cpu)
        train = ["train", "t2i", "-b", "8", "--steps", "2", "--ckpt-every", "2"]
        cli_ok(*train, "--log-every", "2", "--image-every", "0", "--name", "tA", *cpu)
    return work


#: the folders the ``shared_*`` helpers built in this process, (kind, basetemp, arguments…) →
#: (folder, its snapshot as built)
_SHARED: dict[tuple, tuple[Path, dict]] = {}


def _shared_build(factory: Any, key: tuple, build: Callable[[Path], Path]) -> Path:
    """The folder ``build(factory.mktemp(key[0]) / "w")`` made the first time this process
    (pytest worker) asked for ``key``: in one torch thread and a sandbox of its own (no
    ``REPACKCTL_*`` setting of the test that happened to ask first), so every worker's build
    is the same whichever test and thread count it ran under; checked unchanged before it is
    returned.

    Tests get copies of it: a test that wrote there (through a path a copy's run or entry
    records) would change what every later module copies, so that is an error here."""
    import pytest
    from conftest import one_torch_thread, use_sandbox

    from support.snapshot import snapshot

    key = (key[0], Path(factory.getbasetemp()), *key[1:])
    if key not in _SHARED:
        folder = factory.mktemp(key[0])
        with pytest.MonkeyPatch.context() as mp, one_torch_thread():
            use_sandbox(mp, folder)
            built = build(folder / "w")
        _SHARED[key] = (built, snapshot(built))
    built, as_built = _SHARED[key]
    assert snapshot(built) == as_built, f"the shared {key[0]} {built} was changed by a test"
    return built


def shared_t2i_stack(factory: Any, work: Path, num: int = 32, max_length: int = 8) -> Path:
    """A copy at ``work`` of the :func:`t2i_stack` this process (pytest worker) built once in
    ``factory``'s (``tmp_path_factory``) base folder, in one torch thread; returns ``work``.

    The copy's runs and entries record the paths of that one build, never changed (as the
    copies ``use_stack`` makes record those of the module's stack): a test about the recorded
    root being its own folder calls :func:`t2i_stack` instead."""
    built = _shared_build(
        factory, ("t2i-shared", num, max_length), lambda w: t2i_stack(w, num, max_length)
    )
    shutil.copytree(built, work)
    return work


def shared_packed_cache(factory: Any, root: Path, num: int) -> Path:
    """What :func:`packed_cache` ``(root, num)`` makes (``root``, and the 4-step pack run ``pk``
    in ``root.parent / "runs"``), as a copy of the one build of this process (pytest worker)
    in ``factory``'s (``tmp_path_factory``) base folder, in one torch thread; returns ``root``.

    The copy records the paths of that one build: the entries' features and latents name its
    cache root and pack checkpoint, the run ``pk`` its cache and runs roots. A test that
    writes through those paths, or whose promise is about the recorded root being its own
    folder, calls :func:`packed_cache` instead."""

    def build(work: Path) -> Path:
        packed_cache(work / "cache", num)
        return work

    built = _shared_build(factory, ("packed-shared", num), build)
    shutil.copytree(built / "cache", root)
    shutil.copytree(built / "runs", root.parent / "runs")
    return root


def use_roots(base: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of ``base``'s cache/ and runs/ in ``tmp_path``, set as REPACKCTL_CACHE /
    REPACKCTL_RUNS; returns ``tmp_path``."""
    for name in ("cache", "runs"):
        shutil.copytree(base / name, tmp_path / name)
        monkeypatch.setenv(f"REPACKCTL_{name.upper()}", str(tmp_path / name))
    return tmp_path


def use_stack(stack: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a stack, set as REPACKCTL_CACHE / _RUNS / _SAMPLES."""
    work = tmp_path / "w"
    shutil.copytree(stack, work)
    monkeypatch.setenv("REPACKCTL_CACHE", str(work / "cache"))
    monkeypatch.setenv("REPACKCTL_RUNS", str(work / "runs"))
    monkeypatch.setenv("REPACKCTL_SAMPLES", str(work / "samples"))
    return work


def tiny_dit_stack(root: Path, val: bool = False) -> Path:
    """``root`` holding cache/ (16 built-in images, patchpix at 32 px; with ``val`` a val split
    of 16 too) and runs/: the 2-step pack run ``pk``, its latents, and a 2-step tiny DiT ``dit``
    with checkpoints step-0000001 and step-0000002, through the command line."""
    import pytest
    from conftest import one_torch_thread, use_sandbox
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    cpu = ["--device", "cpu"]
    extract = ["extract", "-e", "patchpix", "--resolution", "32", "-n", "16", "--chunk", "8",
               "--shard", "16"]  # fmt: skip
    steps = [
        extract,
        *([[*extract, "--split", "val"]] if val else []),
        ["pack", "train", "-e", "patchpix", "--resolution", "32", "-n", "16", "--steps", "2",
         "--batch-size", "8", "--ch", "16", "-c", "4", "--name", "pk", "--image-every", "0", *cpu],
        ["pack", "encode", "--run", "pk", *cpu],
        ["train", "dit", "--pack-run", "pk", "--size", "tiny", "--depth", "2", "--steps", "2",
         "-b", "8", "--ckpt-every", "1", "--image-every", "0", "--name", "dit", *cpu],
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, root)
        for args in steps:
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
    return root


def shared_tiny_dit_stack(factory: Any, root: Path, val: bool = False) -> Path:
    """A copy in ``root`` (an empty or new folder) of the :func:`tiny_dit_stack` this process
    (pytest worker) built once per ``val`` in ``factory``'s (``tmp_path_factory``) base folder;
    returns ``root``. The copy's runs and entries record the paths of that one build (the DiT
    its pack checkpoint and cache root): a test about those being its own folder, or one that
    writes through them, calls :func:`tiny_dit_stack` instead."""
    built = _shared_build(factory, ("tiny-dit-shared", val), lambda w: tiny_dit_stack(w, val))
    shutil.copytree(built, root, dirs_exist_ok=True)
    return root


def cli_extracted(tmp_path_factory: Any, argv: list[str]) -> Path:
    """``repackctl <argv>`` (an extract) run once through the CLI in a fresh sandbox; returns its
    cache folder (a module fixture's base: tests copy it before they damage it)."""
    import pytest
    from conftest import one_torch_thread, use_sandbox
    from typer.testing import CliRunner

    from repackctl.cli.app import app

    tmp = tmp_path_factory.mktemp("extracted")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        use_sandbox(mp, tmp)
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output
    return tmp / "cache"


def random_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per: int = 3
) -> Path:
    """An image folder ``root/<class>/<i>.png`` of seeded random 40×48 RGB images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per):
            image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / cls / f"{i}.png")
    return root


#: the flags of a quick patchpix extract / pack train at 32 px on the CPU (the `_cli` stacks)
PATCHPIX = ["--encoder", "patchpix", "--resolution", "32", "--num-workers", "0", "--device", "cpu"]


def cli_pack_stack(
    tmp_path: Path,
    *,
    val: int | None = 3,
    precision: str = "fp32",
    val_precision: str = "fp32",
    pack: tuple[str, ...] = ("--steps", "1"),
) -> tuple[list[str], list[str]]:
    """Through the CLI, as a user runs it: 16 built-in train images extracted (patchpix, 32 px,
    chunks and shards of 8) in ``precision``, the pack run ``pk`` trained on them with ``pack``
    flags, and ``val`` val images in ``val_precision`` (none when None). The ``--cache`` and
    ``--runs`` flags of ``tmp_path``'s roots."""
    from support.cli import cli_ok

    cache, runs = ["--cache", str(tmp_path / "cache")], ["--runs", str(tmp_path / "runs")]
    ext = ["extract", *PATCHPIX, "--chunk", "8", "--shard", "8", *cache]
    cli_ok(*ext, "-n", "16", "--precision", precision)
    train = ["pack", "train", *PATCHPIX[:4], "-n", "16", "--batch-size", "4", "-c", "4", "--ch"]
    cli_ok(*train, "8", "--name", "pk", "--image-every", "0", *pack, *cache, *runs)
    if val is not None:
        cli_ok(*ext, "-n", str(val), "--split", "val", "--precision", val_precision)
    return cache, runs
