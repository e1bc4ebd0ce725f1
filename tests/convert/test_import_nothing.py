"""`repackctl import official` with none of --stage1, --dit, --refiner imported nothing and
reported it as a success (a full bar, "pack run None", exit 0). Now refused before anything is
written, with a hint naming the three options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.convert.official import import_official
from repackctl.errors import ConfigError


@pytest.mark.parametrize("out", ["x", "/abs/x"])
def test_an_import_of_nothing_is_refused(tmp_path, out) -> None:
    runs = tmp_path / "runs"
    args = ["import", "official", "--out", out, "--runs", str(runs)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == ConfigError.exit_code, r.output
    assert "Traceback" not in r.output
    assert "Error: nothing to import" in r.output, r.output
    hint = r.output.split("Hint:", 1)[1]
    assert all(option in hint for option in ("--stage1", "--dit", "--refiner")), r.output
    assert "pack run" not in r.output
    assert not runs.exists()  # not even the runs root


def test_the_library_refuses_it_too(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nothing to import"):
        import_official(runs=str(tmp_path / "runs"), out="x")
    assert not (tmp_path / "runs").exists()
