"""Shared fixtures: an isolated cache/runs root per test, no settings leaking from the caller."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Cached bytecode even under PYTHONDONTWRITEBYTECODE=1 (into the git-ignored __pycache__/):
# without it every xdist worker rewrites the asserts of ~200 test modules again (about 5 s of
# CPU per worker and run) and every subprocess compiles repackctl again. Set before the
# imports below and before pytest imports the test modules.
sys.dont_write_bytecode = False

import pytest  # noqa: E402
import torch  # noqa: E402
import typer.testing  # noqa: E402

from repackctl import kernels  # noqa: E402
from repackctl.cli.app import app as _app  # noqa: E402

_BUILT: dict[str, object] = {}


def _command_of(typer_app: typer.Typer, _build=typer.testing._get_command) -> object:
    """Typer's runner builds the whole click command tree again on every ``invoke`` (~0.1 s
    of inspecting signatures: an eighth of the in-process tests' time). ``repackctl``
    registers every command at import and a process runs one command tree, so the tree is
    built once per test process, as ``repackctl`` builds it once per run."""
    if typer_app is not _app:
        return _build(typer_app)
    if "tree" not in _BUILT:
        _BUILT["tree"] = _build(typer_app)
    return _BUILT["tree"]


typer.testing._get_command = _command_of

# `make test` runs two workers of one thread each (OMP_NUM_THREADS=1); alone, two threads
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def use_sandbox(mp: pytest.MonkeyPatch, root: Path) -> None:
    """This process's ``REPACKCTL_*`` variables as ``subprocess_env(root)`` gives them to a
    subprocess: none from the caller, cache and runs under ``root``, no loader workers."""
    for name in list(os.environ):
        if name.startswith("REPACKCTL_"):
            mp.delenv(name)
    for name, value in subprocess_env(root).items():
        if name.startswith("REPACKCTL_"):
            mp.setenv(name, value)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    use_sandbox(monkeypatch, tmp_path)
    from repackctl import registry
    from repackctl.progress import set_log_every_s

    registry.clear_cache()
    set_log_every_s(None)  # the CLI sets the resolved period process-wide
    yield
    registry.clear_cache()
    set_log_every_s(None)
    kernels.select("eager")  # a training run selects its kernels process-wide


@pytest.fixture
def cache_root(tmp_path):
    return str(tmp_path / "cache")


@contextlib.contextmanager
def one_torch_thread(count: int = 1) -> Iterator[None]:
    """An in-process run with the thread count of a test subprocess (``OMP_NUM_THREADS=1``, or
    ``count``): CPU reductions round by thread count, so this is what makes the two
    bit-identical (and what a run folder records as its thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Each test of a module with ``pytestmark = pytest.mark.usefixtures("one_thread")`` runs
    under :func:`one_torch_thread`."""
    with one_torch_thread():
        yield


def subprocess_env(tmp_path, **extra: str) -> dict[str, str]:
    """Environment for a real `repackctl` subprocess in the test's sandbox."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPACKCTL_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # see `sys.dont_write_bytecode` above
    env.update(
        REPACKCTL_CACHE=str(tmp_path / "cache"),
        REPACKCTL_RUNS=str(tmp_path / "runs"),
        REPACKCTL_NUM_WORKERS="0",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def random_inception_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception with weight loading bypassed, He-initialised (seeded)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None),
    ):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):  # keep activations O(1) through 90+ layers
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.state_dict()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """torch-fidelity's Inception with seeded random weights, saved where `--inception-weights`
    reads it (no download here)."""
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(random_inception_state(), path)
    return path


# The heaviest files, longest first (`pytest --durations=0 -n 2 --dist loadfile`, 2-core CI
# machine). `make test` hands whole files to its two workers in collection order, so starting
# with the longest ones lets both workers finish at about the same time (longest-processing-time
# first) instead of one worker ending on a 40 s file while the other is idle.
LONGEST_FIRST = (
    "cache/test_cache_integrity.py",
    "train/test_train.py",
    "dit/test_dit_train.py",
    "pack/test_pack_stage.py",
    "test_demo.py",
    "benchmarks/test_reproduce_small.py",
    "dit/test_t2i_pipeline.py",
    "test_extract.py",
    "train/test_checkpoint_resave_kill.py",
    "sample/test_sample.py",
    "cache/test_t2i_cache.py",
    "test_demo_t2i.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Run the files of ``LONGEST_FIRST`` first, in that order; the rest keep theirs."""
    root = config.rootpath / "tests"

    def rank(item) -> int:
        try:
            rel = item.path.relative_to(root).as_posix()
        except ValueError:
            return len(LONGEST_FIRST)
        return LONGEST_FIRST.index(rel) if rel in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests inside a file keep their order
