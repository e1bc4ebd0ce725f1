"""A plugin encoder whose weights the seed draws, but whose weights tag does not say so (neither
``random:<seed>`` nor ``seeded:<seed>``: here the tag is ``drawn``, the seed shows only in the
weights digest), extracted without the CLI's settings record (``run_extract``, as the demo's
pipeline runs it) on an image folder (whose entry records no seed). The command that finishes
its pending rows, as `cache ls` names it, must name ``--seed``: without it (HEAD) the command
drew other weights and wrote a second features group, leaving the first unfinished.

The fix is general: the seed the writing run used (recorded in its run header) is named, whatever
the encoder's tag says.

Real components: a throwaway plugin distribution (a ``*.dist-info`` folder and its module on
``sys.path``, read through ``importlib.metadata`` like an installed plugin, as
tests/test_plugins_check.py builds one), a real image folder, a real Zarr cache, the CLI
in-process.
"""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

import pytest
from support.caches import random_image_folder
from support.cli import cli_ok

from repackctl import registry
from repackctl.cache.store import PENDING, DatasetEntry

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = """
import hashlib

import torch

from repackctl.encoders.base import EncoderSpec, FrozenEncoder


class Drawn(FrozenEncoder):
    def __init__(self, spec, seed):
        super().__init__(spec)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 64, 16, generator=g))

    def encode(self, x):
        p = torch.nn.functional.unfold(x, kernel_size=8, stride=8)
        tokens = p.transpose(1, 2) @ self.proj
        return tokens, tokens.mean(1)


def build(*, weights=None, layer=None, resolution=64, seed=0):
    spec = EncoderSpec(
        id="s29drawn", arch="drawn-projection", patch_size=8, input_size=resolution, dim=16,
        grid=resolution // 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        weights="drawn", weights_sha256=hashlib.sha256(f"s29drawn:{seed}".encode()).hexdigest(),
    )
    return Drawn(spec, seed)
"""


@pytest.fixture
def drawn_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The encoder id of a plugin, on ``sys.path``, whose weights the seed draws."""
    site = tmp_path / "site"
    info = site / "s29drawn-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: s29drawn\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[repackctl.encoders]\ns29drawn = s29drawn_enc:build\n")
    (site / "s29drawn_enc.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.clear_cache()
    return "s29drawn"


def test_finish_command_names_the_seed_that_drew_a_plugin_s_weights(
    tmp_path: Path, drawn_plugin: str
) -> None:
    from repackctl.extract import run_extract
    from repackctl.settings import resolve_settings

    root, images = tmp_path / "cache", random_image_folder(tmp_path / "images")
    flags = {"cache": str(root), "num_workers": 0, "seed": 3, "extract.encoder": drawn_plugin}
    flags |= {"extract.data": f"imagefolder:{images}", "extract.resolution": 32}
    made = run_extract(resolve_settings(None, flags, environ={}).settings)
    entry = DatasetEntry.open(str(root), made.entry)
    assert entry.feature_ids() == [made.features]
    entry.features(made.features).done[0:3] = PENDING  # as a killed extract leaves them

    roots = ["--cache", str(root)]
    (listed,) = json.loads(cli_ok("cache", "ls", *roots, "--json"))["entries"]
    (group,) = listed["unfinished"]
    assert group["group"] == f"features/{made.features}"
    cmd = group["finish"].strip("`")
    assert cmd.startswith(f"repackctl extract --encoder {drawn_plugin} ") and "--seed 3" in cmd
    out = cli_ok(*shlex.split(cmd)[1:], *roots, "--num-workers", "0", "--device", "cpu")
    assert f"features │ {made.features}" in out, out  # the same weights: the same group
    assert DatasetEntry.open(str(root), made.entry).feature_ids() == [made.features]
    assert "unfinished" not in cli_ok("cache", "ls", *roots)
