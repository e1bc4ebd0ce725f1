"""`runs rm PACKRUN` names the runs that still use the pack run, trained and imported alike.

A DiT or refiner run samples through the decoder of the pack run its checkpoints record
(``extra.pack``); once that pack run is removed it cannot sample. `runs rm` asked "Delete run
pk?" and, with --yes, removed it without a word, for runs made by `train dit` / `refine train`
and for the runs `import official` writes (which point to their ``<out>-pack`` run) alike. Now
the question names every such run and --yes prints a ``Warning:`` naming them; they are kept.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from support.official import official_lightningdit, official_refiner, official_stage1
from support.snapshot import snapshot
from support.stack import make_dit_run, save_refiner_run, shared_stack
from typer.testing import CliRunner

from repackctl.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), input=stdin)
    out = " ".join(res.output.split())
    assert "Traceback" not in out, out
    return res.exit_code, out


@pytest.fixture
def runs(tmp_path_factory, tmp_path):
    """The stack's pack run ``pack-tiny`` (real `pack train`) with a DiT and a refiner recorded
    on it as `train dit` / `refine train` record theirs, an unrelated run, and `import official`
    of stage 1, a DiT and a refiner (``off-pack``, ``off-dit``, ``off-refine``)."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(f"{shared_stack(tmp_path_factory)['runs']}/pack-tiny", root / "pack-tiny")
    make_dit_run(str(root), "dit-a", seed=0)
    save_refiner_run(str(root), "ref-a", resolution=32)
    s1, s2, s3, stats = (tmp_path / n for n in ("s1.ckpt", "dit.pt", "s3.ckpt", "stats.pt"))
    torch.save({"state_dict": official_stage1(res=32, ch_mult=(1, 2, 2, 2))}, s1)
    dit = official_lightningdit(side=4)
    torch.save({"model": dit, "ema": dit, "config": {}, "global_step": 3}, s2)
    torch.save({"state_dict": official_refiner()}, s3)
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, stats)
    files = ["--stage1", str(s1), "--dit", str(s2), "--refiner", str(s3), "--latent-stats"]
    code, out = _cli(
        "import", "official", *files, str(stats), "--image-size", "32", "--out", "off",
        "--runs", str(root),
    )  # fmt: skip
    assert code == 0, out
    return root


def test_runs_rm_of_a_pack_run_names_the_runs_that_use_it(runs):
    flags = ["--runs", str(runs)]
    before = snapshot(runs)

    # asked: the question names the trained runs, and the run of another pack run is not named
    code, out = _cli("runs", "rm", "pack-tiny", *flags, stdin="n\n")
    assert code == 1 and "nothing removed" in out, out
    assert "2 runs use pack run pack-tiny and cannot sample without it" in out, out
    assert "dit-a (dit), ref-a (refine)" in out and "off-" not in out, out
    # the imported runs are named as well (they point to off-pack, not to pack-tiny)
    code, out = _cli("runs", "rm", "off-pack", *flags, stdin="n\n")
    assert code == 1 and "2 runs use pack run off-pack" in out, out
    assert "off-dit (dit, imported), off-refine (refine, imported)" in out, out
    assert snapshot(runs) == before  # answered no: nothing removed
    # `runs info` of the pack run lists them too, and a DiT run lists none
    code, out = _cli("runs", "info", "pack-tiny", *flags)
    assert code == 0 and "used by dit-a (dit)" in out and "used by ref-a (refine)" in out, out
    code, out = _cli("runs", "info", "off-pack", *flags, "--json")
    assert code == 0 and '"used_by": [ "off-dit (dit, imported)", "off-refine' in out, out
    code, out = _cli("runs", "info", "dit-a", *flags)
    assert code == 0 and "used by" not in out, out
    # a DiT run names the network its newest checkpoint holds; a pack run has none to name
    assert "stage dit model tiny size" in out, out
    # and what it was trained on: the cache entry and the pack checkpoint that decodes it
    pack_ckpt = runs / "pack-tiny" / "checkpoints"
    assert "trained on cache entry builtin-n16--train--32px" in out, out
    assert f"trained on pack checkpoint {pack_ckpt}" in out, out
    code, out = _cli("runs", "info", "pack-tiny", *flags, "--json")
    assert code == 0 and '"model": null' in out, out

    # --yes removes the pack run, and a warning names the runs it leaves unable to sample
    code, out = _cli("runs", "rm", "off-pack", "--yes", *flags)
    assert code == 0 and "removed" in out, out
    assert "Warning: 2 runs use pack run off-pack" in out and "off-refine (refine" in out, out
    assert (runs / "off-dit").is_dir() and (runs / "off-refine").is_dir()  # kept
    assert not (runs / "off-pack").exists()
    # what the warning is about: the imported DiT no longer samples (an Error, not a traceback)
    sample = ["sample", "-r", "off-dit", "-n", "1", "--steps", "1", "--cfg", "1"]
    code, out = _cli(*sample, *flags, "--samples", str(runs.parent / "s"), "--device", "cpu")
    assert code != 0 and "Error: no run 'off-pack'" in out, out

    # no warning where no run uses the one removed (a DiT run)
    code, out = _cli("runs", "rm", "dit-a", "--yes", *flags)
    assert code == 0 and "Warning" not in out, out
    code, out = _cli("runs", "rm", "pack-tiny", "--yes", *flags)
    assert code == 0 and "Warning: 1 run uses pack run pack-tiny" in out, out
    assert "ref-a (refine)" in out, out


def test_the_model_line_names_the_network_as_built(tmp_path):
    import json

    from repackctl.runs import _model_of, _trained_on, checkpoint_extra

    ckpt = tmp_path / "step-0000001"
    ckpt.mkdir()
    config = {"name": "tiny-d3w128h2-p2", "depth": 3, "hidden_size": 128, "patch_size": 2}
    extra = {"stage": "dit", "model_id": "tiny", "model_config": config}
    (ckpt / "state.json").write_text(json.dumps({"extra": extra}))
    assert _model_of(checkpoint_extra(ckpt)) == "tiny-d3w128h2-p2 (model id tiny)"
    extra["cache"] = {"root": "/c", "entry": "e", "triplets": "t", "features": "f"}
    extra["pack"] = {"run": "pk", "checkpoint": "/r/pk/checkpoints/step-0000002"}
    (ckpt / "state.json").write_text(json.dumps({"extra": extra}))
    assert _trained_on(checkpoint_extra(ckpt)) == [
        "cache entry e in /c", "triplets t", "pack checkpoint /r/pk/checkpoints/step-0000002"
    ]  # fmt: skip
    (ckpt / "state.json").write_text(json.dumps({"extra": {"stage": "pack"}}))
    assert _model_of(checkpoint_extra(ckpt)) is None
