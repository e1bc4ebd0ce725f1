"""A resume refused for a setting that can never change on resume does not offer
``--allow-change`` (README: turning REPA on or off is always refused).

``train dit --repa-weight 0`` on a run trained with REPA was refused with the hint "pass
--allow-change repa_weight to change it anyway"; doing that was refused again ("was trained with
REPA … cannot resume from it"). The same for every setting that shapes the network or names the
data a run's checkpoints hold, in each training command. Their refusal now says the setting
cannot change on resume, why, and what to do instead (for REPA: ``--repa-stop-step``); the
settings a resume can change (another non-zero REPA weight, ``--arch sit`` → ``dit``: the same
network) still offer ``--allow-change``.

Each case is also resumed WITH ``--allow-change``: refused the same way, before any model is
built (it went on to the stage, which built the network and ended in a raw ``load_state_dict``
dump naming no setting: audit s37 B finding 3).

Left out (no other valid value in the tiny stack, or refused before the settings layer):
  pack  weights/layer (patchpix has neither), data/split (one source, the val entry holds other
        features), method (pca refuses the repack options), pixel_shuffle (another one needs
        other ch_mult levels), entry/features (named by -e/--resolution/-n, tested here),
        pca_samples (tests/pack/test_pca_samples_resume.py)
  refine entry (the stack's one entry: tests/settings/test_resume_changes_said.py)
  dit   model (a name for arch/size/patch), latents/entry (named by --pack-run, tested here)
  t2i   the DiT settings tested on dit (one each here), text_features (the stack's one group)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.caches import shared_t2i_stack
from support.ckpt_state import started_before
from support.cli import cli_ok
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ResumeConflict
from repackctl.settings.resume import FIXED_ON_RESUME

runner = CliRunner()

OUTPUT = ["--log-every", "1", "--ckpt-every", "1"]
IMAGES = ["--image-every", "0"]
# run name → (its command, the flags it starts with)
# fmt: off
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "pF": (
        ["pack", "train"],
        ["-e", "patchpix", "--resolution", "32", "-n", "32", "-c", "4", "--batch-size", "4",
         "--projection-form", "official", "--ch", "8", "--ch-mult", "1", "--ch-mult", "2",
         "--ch-mult", "2", "--pixel-shuffle", "2", "--num-res-blocks", "2",
         "--attn-resolutions", "8", "--norm-groups", "2", "--no-whiten", "--disc-channels", "8",
         "--disc-layers", "2", "--disc-norm", "batch", *IMAGES],
    ),
    "dF": (
        ["train", "dit"],
        ["--pack-run", "pack-tiny", "--global-batch", "4", "--arch", "sit", "--size", "s",
         "--patch", "2", "--depth", "2", "--width", "32", "--heads", "2", "--qk-norm",
         "--no-shift", "--repa-weight", "0.25", "--repa-depth", "1", "--repa-hidden", "16",
         *IMAGES],
    ),
    # the size's own network (no --patch/--depth/--width/--heads), in the default arch
    "dD": (["train", "dit"], ["--pack-run", "pack-tiny", "--global-batch", "4", *IMAGES]),
    "tF": (
        ["train", "t2i"],
        ["--pack-run", "pack-tiny", "--global-batch", "4", "--depth", "2", "--width", "32",
         "--heads", "2", "--repa-weight", "0.25", "--repa-depth", "1", *IMAGES],
    ),
    "rF": (
        ["refine", "train"],
        ["--pack-run", "pack-tiny", "--batch-size", "4", "--base-channels", "16", "--output",
         "residual", "--norm-groups", "2", "--gan-weight", "0.25", "--disc-channels", "8",
         "--disc-norm", "batch", "--disc-init", "pytorch"],
    ),
    "rG": (
        ["refine", "train"],
        ["--pack-run", "pack-tiny", "--batch-size", "4", "--base-channels", "16",
         "--gan-weight", "0"],
    ),
}
# fmt: on
SECTION = {"pF": "pack", "dF": "dit", "dD": "dit", "tF": "t2i", "rF": "refine", "rG": "refine"}

# (run, setting, the flags of a value it cannot change to on resume)
FIXED: list[tuple[str, str, list[str]]] = [
    ("pF", "latent_channels", ["-c", "8"]),
    ("pF", "projection_form", ["--projection-form", "folded"]),
    ("pF", "ch", ["--ch", "16"]),
    ("pF", "ch_mult", ["--ch-mult", "1", "--ch-mult", "1", "--ch-mult", "2"]),
    ("pF", "num_res_blocks", ["--num-res-blocks", "1"]),
    ("pF", "attn_resolutions", ["--attn-resolutions", "4"]),
    ("pF", "norm_groups", ["--norm-groups", "4"]),
    ("pF", "whiten", ["--whiten"]),
    ("pF", "disc_channels", ["--disc-channels", "16"]),
    ("pF", "disc_layers", ["--disc-layers", "3"]),
    ("pF", "disc_norm", ["--disc-norm", "group"]),
    ("pF", "encoder", ["-e", "builtin"]),
    ("pF", "resolution", ["--resolution", "16"]),
    ("pF", "num", ["-n", "16"]),
    ("dF", "depth", ["--depth", "3"]),
    ("dF", "width", ["--width", "64"]),
    ("dF", "heads", ["--heads", "4"]),
    ("dF", "qk_norm", ["--no-qk-norm"]),
    ("dF", "no_shift", ["--no-no-shift"]),
    ("dF", "repa_hidden", ["--repa-hidden", "32"]),
    ("dF", "repa_weight", ["--repa-weight", "0"]),
    ("dF", "pack_run", ["--pack-run", "pF"]),
    ("dD", "size", ["--size", "s"]),
    ("dF", "patch", ["--patch", "4"]),
    ("dD", "arch", ["--arch", "dit", "--patch", "2"]),
    ("tF", "depth", ["--depth", "3"]),
    ("tF", "repa_weight", ["--repa-weight", "0"]),
    ("tF", "text_encoder", ["--text-encoder", "builtin"]),
    ("rF", "base_channels", ["--base-channels", "8"]),
    ("rF", "output", ["--output", "image"]),
    ("rF", "norm_groups", ["--norm-groups", "1"]),
    ("rF", "disc_channels", ["--disc-channels", "16"]),
    ("rF", "disc_norm", ["--disc-norm", "group"]),
    ("rF", "disc_init", ["--disc-init", "dcgan"]),
    ("rG", "gan_weight", ["--gan-weight", "0.5"]),
]
# registry entries this module does not resume (see the docstring)
LEFT_OUT = {
    "pack": {"weights", "layer", "data", "split", "method", "pixel_shuffle", "entry"}
    | {"features", "pca_samples"},
    "dit": {"model", "latents", "entry"},
    "t2i": {"model", "latents", "entry", "text_features"}
    | {"size", "patch", "arch", "width", "heads", "qk_norm", "no_shift", "repa_hidden"}
    | {"pack_run"},
    "refine": {"entry"},
}


def _invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


def _files(run: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A copy of the shared t2i stack with each run of :data:`RUNS` trained for one step."""
    from conftest import one_torch_thread

    work = shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("fx") / "w")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        _use(work, mp)
        for name, (command, flags) in RUNS.items():
            cli_ok(*command, "--name", name, "--steps", "1", *OUTPUT, *flags)
    return work


def _use(work: Path, mp: pytest.MonkeyPatch) -> None:
    env = {"CACHE": work / "cache", "RUNS": work / "runs", "SAMPLES": work / "samples"}
    for key, value in {**env, "NUM_WORKERS": "0", "DEVICE": "cpu"}.items():
        mp.setenv(f"REPACKCTL_{key}", str(value))


@pytest.fixture
def runs(work, monkeypatch) -> Path:
    from conftest import one_torch_thread

    _use(work, monkeypatch)
    with one_torch_thread():
        yield work / "runs"


def _resume(name: str, *flags: str) -> tuple[int, str]:
    command, _ = RUNS[name]
    images = [] if command[0] == "refine" else IMAGES
    return _invoke(*command, "--name", name, "--steps", "2", *OUTPUT, *images, *flags)


@pytest.mark.parametrize(("name", "setting", "flags"), FIXED, ids=[f"{c[0]}-{c[1]}" for c in FIXED])
def test_a_setting_that_cannot_change_on_resume_is_refused_without_offering_allow_change(
    runs, name, setting, flags
):
    key = f"{SECTION[name]}.{setting}"
    before = _files(runs / name)
    code, out = _resume(name, *flags)
    assert code == ResumeConflict.exit_code and "Traceback" not in out, out
    assert f"{key} cannot change on resume (--allow-change does not apply to it)" in out, out
    hint = out[out.index("Hint:") :]
    # HEAD: "pass --allow-change SETTING to change it anyway", which was then refused
    assert f"--allow-change {setting}" not in hint, out
    assert "start a new run with another --name" in hint and f"{key}: " in out, out
    assert _files(runs / name) == before
    # allowed, the change is refused all the same, naming it (not a raw load_state_dict dump)
    code, out = _resume(name, *flags, "--allow-change", setting)
    assert code == ResumeConflict.exit_code and "Traceback" not in out, out
    assert f"{key} cannot change on resume (--allow-change does not apply to it)" in out, out
    assert "load_state_dict" not in out, out
    assert _files(runs / name) == before


def test_every_fixed_setting_is_resumed_here_or_left_out_with_a_reason():
    tried = {(SECTION[n], s) for n, s, _ in FIXED}
    for section, fixed in FIXED_ON_RESUME.items():
        for setting in fixed:
            assert (section, setting) in tried or setting in LEFT_OUT[section], (section, setting)


def test_repa_switched_off_names_repa_stop_step_and_the_way_trains_on(runs):
    """The audit's case: the hint names --repa-stop-step (README), which resumes the run."""
    code, out = _resume("dF", "--repa-weight", "0")
    assert code == ResumeConflict.exit_code, out
    assert "dit.repa_weight: 0.25 → 0.0" in out and "REPA projector" in out, out
    assert "--repa-stop-step N --allow-change repa_stop_step" in out, out
    assert "pass --allow-change repa_weight" not in out, out


@pytest.mark.parametrize(
    ("name", "flags", "offered"),
    [
        ("dF", ["--repa-weight", "0.5"], "--allow-change repa_weight"),  # REPA stays on
        ("dF", ["--arch", "dit"], "--allow-change arch"),  # sit and dit: the same network
        ("rF", ["--gan-weight", "0"], "--allow-change gan_weight"),  # the GAN turned off
        ("dF", ["--lr", "0.001"], "--allow-change lr"),
        # left to the size (None): the value it resolved to may be given (tiny's patch 1)
        ("dD", ["--patch", "1"], "--allow-change patch"),
    ],
)
def test_a_change_a_resume_can_allow_still_offers_allow_change(runs, name, flags, offered):
    code, out = _resume(name, *flags)
    assert code == ResumeConflict.exit_code, out
    assert f"pass {offered} to change it anyway" in out and "cannot change on resume" not in out


def test_a_fixed_setting_the_run_started_without_is_refused_without_offering_allow_change(runs):
    """A refiner from before ``disc_init`` (trained with the DCGAN init) given another init: the
    refusal of a value the run started without offered ``--allow-change disc_init`` too."""
    command, flags = RUNS["rF"]
    start = [f for f in flags if f not in ("--disc-init", "pytorch")]
    cli_ok(*command, "--name", "rO", "--steps", "1", *OUTPUT, *start, "--disc-init", "dcgan")
    started_before(runs / "rO", "refine", ["disc_init"], ["disc_config.init"])
    before = _files(runs / "rO")
    resume = [*command, "--name", "rO", "--steps", "2", *OUTPUT, "--disc-init", "pytorch"]
    code, out = _invoke(*resume)
    assert code == ResumeConflict.exit_code and "Traceback" not in out, out
    assert "refine.disc_init: 'dcgan' → 'pytorch' (the run started before disc_init" in out, out
    assert "cannot change on resume" in out and "--allow-change disc_init" not in out, out
    code, out = _invoke(*resume, "--allow-change", "disc_init")
    assert code != 0 and "Error:" in out and "Traceback" not in out, out
    assert _files(runs / "rO") == before
