"""`refine train --show-config` without `--name` shows what the command would train with: the
stored values of the default-named run (`refine-<pack run>`) when it exists (it showed a new
run's values, although `refine train --pack-run P` resumes that run with its stored lr/batch).
Real CLI, a real pack run and a real refiner run."""

from __future__ import annotations

from support.cli import cli_ok, cli_refused
from support.stack import build_stack


def _line(shown: str, key: str) -> str:
    return shown.split(f"{key} = ", 1)[1].split(" refine.", 1)[0]


def test_show_config_without_name_shows_the_default_named_run(tmp_path):
    build_stack(tmp_path)  # cache/ and runs/ (pack run pack-tiny) at the sandbox's roots
    tiny = ["--base-channels", "8", "--disc-channels", "8", "--device", "cpu"]
    cli_ok("refine", "train", "--pack-run", "pack-tiny", "--steps", "1", "--lr", "3e-4",
           "--batch-size", "4", *tiny)  # fmt: skip
    assert (tmp_path / "runs" / "refine-pack-tiny" / "config.json").is_file()
    for args in (["--pack-run", "pack-tiny"], []):  # [] : the newest pack run, as the command
        shown = cli_ok("refine", "train", *args, "--show-config")
        assert "refine-pack-tiny exists: the values it resumes with" in shown
        assert _line(shown, "refine.lr").startswith("0.0003 # stored run config")
        assert _line(shown, "refine.batch_size").startswith("4 # stored run config")
    # a change the resume would refuse is refused here too
    out = cli_refused(2, "refine", "train", "--pack-run", "pack-tiny", "--lr", "1e-3",
                      "--show-config")  # fmt: skip
    assert "refine.lr: 0.0003 → 0.001" in out
    # another pack run's refiner does not exist: a new run's values
    fresh = cli_ok("refine", "train", "--pack-run", "pack-tiny", "--name", "r2", "--show-config")
    assert "exists" not in fresh and "0.0003" not in _line(fresh, "refine.lr")
