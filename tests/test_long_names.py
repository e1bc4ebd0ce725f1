"""Names longer than a file system takes are refused with an ``Error:``, not a traceback.

`runs info|rm NAME`, `pack train --name NAME` and `import official --out NAME` with a name of
more than 255 bytes crashed with ``OSError: [Errno 36] File name too long``; so did any folder
given by a flag (``--cache``) whose last part is that long. Run names are now at most
``paths.MAX_NAME`` characters (temporary and removal names add to them), and a name the file
system refuses anywhere else is a one-line ``Error:`` naming it.
"""

from __future__ import annotations

from pathlib import Path

from support.cli import cli_refused

from repackctl.paths import MAX_NAME


def test_a_run_name_too_long_is_refused_by_every_command(tmp_path: Path) -> None:
    long = "a" * 300
    for args in (
        ("runs", "info", long),
        ("runs", "rm", long, "--yes"),
        ("pack", "train", "--name", "b" * (MAX_NAME + 1), "--encoder", "patchpix"),
    ):
        out = cli_refused(2, *args)
        assert f"at most {MAX_NAME}" in out and "Traceback" not in out, (args, out)
    assert not [p for p in tmp_path.rglob("*") if "bbbbbbbb" in p.name]  # nothing written


def test_a_folder_name_the_file_system_refuses_is_an_error(tmp_path: Path) -> None:
    cache = tmp_path / ("c" * 300)
    out = cli_refused(
        1,
        "extract",
        "-n",
        "8",
        "--resolution",
        "32",
        "--encoder",
        "patchpix",
        "--cache",
        str(cache),
    )
    assert "too long for the file system" in out and "Traceback" not in out, out
    assert not [p for p in tmp_path.rglob("*") if "cccccccc" in p.name]  # nothing written
