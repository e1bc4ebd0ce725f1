"""The settings layer: presets resolved once for every caller, generated options, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.settings import Settings, resolve_settings
from repackctl.settings.dit import PRESETS as DIT_PRESETS
from repackctl.settings.dit import DitSettings
from repackctl.settings.pack import PRESETS as PACK_PRESETS
from repackctl.settings.refine import PRESETS as REFINE_PRESETS

runner = CliRunner()


def _values(output: str) -> list[str]:
    return [line.split("#")[0].rstrip() for line in output.splitlines()]


def test_toml_preset_equals_flag_preset(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[dit]\npreset = "paper"\n')
    by_file = runner.invoke(app, ["train", "dit", "--config", str(toml), "--show-config"])
    by_flag = runner.invoke(app, ["train", "dit", "--preset", "paper", "--show-config"])
    assert by_file.exit_code == 0 and by_flag.exit_code == 0, by_file.output + by_flag.output
    assert _values(by_file.output) == _values(by_flag.output)
    size = [ln for ln in by_file.output.splitlines() if ln.startswith("dit.size ")][0]
    assert "'xl'" in size and "preset paper" in size


@pytest.mark.parametrize("section,table", [("dit", DIT_PRESETS), ("pack", PACK_PRESETS), ("refine", REFINE_PRESETS)])  # fmt: skip
def test_python_caller_gets_the_preset(section, table):
    for name, values in table.items():
        settings = Settings(**{section: {"preset": name}})
        got = getattr(settings, section)
        assert got.preset == name
        for key, value in values.items():
            assert getattr(got, key) == (tuple(value) if isinstance(getattr(got, key), tuple) else value), key  # fmt: skip


def test_a_given_value_beats_the_preset_and_a_model_section_counts_as_given():
    s = Settings(dit=DitSettings(preset="paper", lr=1e-3, size="s"))
    assert (s.dit.lr, s.dit.size, s.dit.global_batch) == (1e-3, "s", 256)
    r = resolve_settings(None, {"dit.preset": "paper", "dit.steps": 7})
    assert r.settings.dit.steps == 7 and r.sources["dit.steps"] == "flag"
    assert r.sources["dit.global_batch"] == "preset paper"


def test_auto_never_picks_paper_on_a_cpu():
    s = Settings(
        device="cpu", pack={"preset": "auto", "encoder": "dinov3"}, refine={"preset": "auto"}
    )
    assert s.pack.preset == "small" and s.refine.preset == "small"
    r = resolve_settings(None, {"device": "cpu", "pack.encoder": "dinov3"})
    assert r.sources["pack.preset"] == "preset auto → small"


@pytest.mark.skipif(
    any(Path(n).exists() for n in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")),
    reason="a GPU driver is present: auto presets must ask torch",
)
def test_auto_preset_on_a_machine_without_gpu_driver_does_not_import_torch():
    code = (
        "import sys; from repackctl.settings import resolve_settings;"
        "r = resolve_settings(None, {'pack.encoder': 'dinov3'});"
        "assert r.settings.pack.preset == 'small', r.settings.pack.preset;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_show_config_prints_no_none_for_a_preset_value():
    shown = runner.invoke(app, ["pack", "train", "--show-config"])
    assert shown.exit_code == 0, shown.output
    for key in PACK_PRESETS["small"]:
        line = [ln for ln in shown.output.splitlines() if ln.startswith(f"pack.{key} ")][0]
        if PACK_PRESETS["small"][key] is not None:
            assert "None" not in line.split("#")[0], line


def test_help_shows_defaults_in_panels():
    out = runner.invoke(app, ["train", "dit", "--help"], env={"COLUMNS": "160"}).output
    for panel in ("Run", "Data", "Model", "REPA", "Optimisation", "Output", "Common"):
        assert f"─ {panel} " in out, panel
    assert "[default: (2000)]" in out and "--global-batch" in out and "-b" in out


@pytest.mark.parametrize(
    "argv,env,setting",
    [
        (["sample", "--cfg", "nan"], {}, "sample.cfg"),
        (["sample", "--cfg", "inf"], {}, "sample.cfg"),
        (["sample", "--cfg", "-1"], {}, "sample.cfg"),
        (["train", "dit", "--time-shift", "inf"], {}, "dit.time_shift"),
        (["extract", "--resolution", "0"], {}, "extract.resolution"),
        (["extract", "--show-config"], {"REPACKCTL_CACHE": ""}, "cache"),
    ],
)
def test_out_of_range_values_are_refused(argv, env, setting, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = runner.invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert f"invalid setting {setting}" in r.output and "Hint:" in r.output
    assert "Traceback" not in r.output


def _readme_preset_rows() -> list[tuple[str, str, list[str], list[str]]]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = []
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].split(" ")[0] in {"dit", "pack", "refine"}:
            section, preset = cells[0].split(" ")
            keys = [k.strip("`") for k in cells[1].split()]
            rows.append((section, preset, keys, cells[2].split()))
    return rows


def test_readme_preset_table_equals_the_presets():
    tables = {"dit": DIT_PRESETS, "pack": PACK_PRESETS, "refine": REFINE_PRESETS}
    rows = _readme_preset_rows()
    assert len(rows) >= 15
    for section, preset, keys, values in rows:
        assert len(keys) == len(values), (keys, values)
        for key, text in zip(keys, values, strict=True):
            value = tables[section][preset][key]
            assert str(value) == text, f"{section} {preset} {key}: README {text}, preset {value}"
