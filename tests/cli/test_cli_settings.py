"""CLI basics, settings precedence, errors without tracebacks, and the lazy registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from repackctl.cli.app import app
from repackctl.errors import ConfigError, RegistryError
from repackctl.registry import Registry, clear_cache, registry
from repackctl.settings import resolve_settings

runner = CliRunner()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from repackctl.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "extract" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")


def test_help_shows_the_cache_the_environment_sets(tmp_path):
    # `--help` showed the built-in cache root under REPACKCTL_CACHE, which every run then ignored
    env = {**os.environ, "REPACKCTL_CACHE": str(tmp_path / "c"), "COLUMNS": "300"}
    args = [sys.executable, "-m", "repackctl", "extract", "--help"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    assert f"{tmp_path / 'c'} from REPACKCTL_CACHE; built-in" in out, out
    env.pop("REPACKCTL_CACHE")
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    assert "from REPACKCTL_CACHE" not in out and "[default: (" in out, out


@pytest.mark.parametrize("cmd", [["extract"], ["cache", "ls"], ["cache", "verify"], ["plugins"]])
def test_each_command_has_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0
    assert "Usage" in res.output


def test_settings_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("seed = 5\nnum_workers = 3\n[extract]\nbatch_size = 11\nencoder = 'x'\n")
    env = {"REPACKCTL_SEED": "7", "REPACKCTL_EXTRACT__BATCH_SIZE": "13"}
    r = resolve_settings(toml, {"extract.batch_size": 17}, environ=env)
    s = r.settings
    assert s.num_workers == 3 and s.extract.encoder == "x"  # file beats default
    assert s.seed == 7  # env beats file
    assert s.extract.batch_size == 17  # flag beats env
    src = {k: v for k, _, v in r.rows()}
    assert src["num_workers"] == "file c.toml"
    assert src["seed"] == "env REPACKCTL_SEED"
    assert src["extract.batch_size"] == "flag"
    assert src["extract.flips"] == "default"


def test_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_settings(environ={"REPACKCTL_EXTRACT__BATCHSIZE": "3"})
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_settings(environ={"REPACKCTL_EXTRACT__BATCH_SIZE": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[extract\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        resolve_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        resolve_settings(tmp_path / "missing.toml")


def test_show_config_lists_sources(monkeypatch):
    monkeypatch.setenv("REPACKCTL_EXTRACT__BATCH_SIZE", "9")
    res = runner.invoke(app, ["extract", "--show-config", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert "REPACKCTL_EXTRACT__BATCH_SIZE" in res.output
    assert "flag" in res.output and "default" in res.output


def test_user_error_is_one_line_without_traceback(monkeypatch):
    res = runner.invoke(app, ["extract", "--encoder", "nosuchencoder"])
    assert res.exit_code == RegistryError.exit_code
    assert "Error: unknown encoder 'nosuchencoder'; available: " in res.output
    assert "Hint:" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["extract", "--encoder", "dinov4"])  # a close name is suggested
    assert "unknown encoder 'dinov4' (did you mean 'dinov3'?); available: " in res.output
    res = runner.invoke(app, ["extract", "--precision", "fp8"])
    assert res.exit_code == ConfigError.exit_code and "Traceback" not in res.output


def test_debug_env_shows_traceback(monkeypatch):
    monkeypatch.setenv("REPACKCTL_DEBUG", "1")
    res = runner.invoke(app, ["extract", "--encoder", "nosuchencoder"])
    assert res.exit_code != 0
    assert isinstance(res.exception, RegistryError)


def test_registry_lists_builtins_and_plugin():
    enc = registry("encoders")
    assert {"builtin", "dinov2", "dinov3", "timm", "patchpix"} <= set(enc.ids())
    info = {r.id: r for r in enc.info()}
    assert info["patchpix"].distribution == "repackctl-extras"
    assert info["builtin"].distribution == "repackctl"
    assert info["patchpix"].status == "not loaded"  # lazy: nothing imported yet
    enc.get("patchpix")
    assert {r.id: r for r in enc.info()}["patchpix"].status == "loaded"


def test_registry_miss_lists_available():
    with pytest.raises(RegistryError) as e:
        registry("encoders").get("dinov4")
    assert "dinov3" in e.value.message and "available" in e.value.message


def test_disable_autoload_keeps_builtins(monkeypatch):
    monkeypatch.setenv("REPACKCTL_DISABLE_PLUGIN_AUTOLOAD", "1")
    clear_cache()
    ids = registry("encoders").ids()
    assert "builtin" in ids and "patchpix" not in ids
    res = runner.invoke(app, ["plugins"])
    assert "disabled" in res.output


def test_duplicate_id_names_both_distributions(monkeypatch):
    from importlib.metadata import EntryPoint

    import repackctl.registry as reg

    class FakeDist:
        def __init__(self, name):
            self.metadata = {"Name": name}
            self.version = "9"

    def make(name, value, dist):
        ep = EntryPoint(name, value, "repackctl.encoders")
        object.__setattr__(ep, "dist", FakeDist(dist)) if hasattr(ep, "dist") else None
        return ep._for(FakeDist(dist)) if hasattr(ep, "_for") else ep

    eps = [make("twin", "a.b:c", "dist-one"), make("twin", "d.e:f", "dist-two")]
    monkeypatch.setattr(reg, "entry_points", lambda group: eps if "encoders" in group else [])
    clear_cache()
    with pytest.raises(RegistryError) as e:
        Registry("encoders").get("twin")
    assert "dist-one" in e.value.message and "dist-two" in e.value.message
    assert any("duplicate" in r.status for r in Registry("encoders").info())


def test_plugins_command_json_free_table():
    res = runner.invoke(app, ["plugins", "--check"])
    assert res.exit_code == 0
    assert "repackctl-extras" in res.output and "loaded" in res.output
    json.dumps(res.output)  # plain text output


def test_a_foreign_package_named_repackctl_does_not_pass_the_autoload_switch(monkeypatch):
    from importlib.metadata import EntryPoint

    import repackctl.registry as reg

    class FakeDist:
        metadata = {"Name": "repackctl"}
        version = "6.6.6"

    ep = EntryPoint("sneaky", "evil_module:factory", "repackctl.encoders")
    ep = ep._for(FakeDist()) if hasattr(ep, "_for") else ep
    real = reg.entry_points
    monkeypatch.setattr(reg, "entry_points", lambda group: [*real(group=group), ep])
    monkeypatch.setenv("REPACKCTL_DISABLE_PLUGIN_AUTOLOAD", "1")
    clear_cache()
    ids = Registry("encoders").ids()
    assert "sneaky" not in ids and "builtin" in ids


def test_an_exception_in_a_plugin_factory_is_an_error_naming_it(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    import repackctl.registry as reg

    (tmp_path / "brokenplug.py").write_text("def factory(**kw):\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class FakeDist:
        metadata = {"Name": "broken-plugin"}
        version = "1"

    ep = EntryPoint("broken", "brokenplug:factory", "repackctl.encoders")
    ep = ep._for(FakeDist()) if hasattr(ep, "_for") else ep
    real = reg.entry_points
    monkeypatch.setattr(reg, "entry_points", lambda group: [*real(group=group), ep])
    clear_cache()
    res = runner.invoke(app, ["extract", "--encoder", "broken", "-n", "4"])
    assert res.exit_code == RegistryError.exit_code, res.output
    assert "broken" in res.output and "broken-plugin" in res.output and "boom" in res.output
    assert "Traceback" not in res.output
