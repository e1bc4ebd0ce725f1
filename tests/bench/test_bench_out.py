"""`repackctl benchmark --out / --workdir`: checked before anything runs. An existing ``--out``
is replaced only when it is this benchmark's own result; a user's file (notes, another
benchmark's result) or a folder is refused, untouched; a missing ``--workdir`` is created."""

from __future__ import annotations

import json

from support.cli import cli_ok, cli_refused

FAST = ["--size", "tiny", "--warmup", "0", "--repeats", "1", "--min-time", "0", "--no-compile",
        "--device", "cpu"]  # fmt: skip


def test_a_user_file_is_never_replaced(tmp_path) -> None:
    """`--out notes.txt` used to overwrite the user's file with the JSON, exit 0."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    scratch = tmp_path / "scratch"
    out = cli_refused(
        2, "benchmark", "cache", *FAST, "--out", str(notes), "--workdir", str(scratch)
    )
    assert str(notes) in out and "not a `benchmark cache` result" in out, out
    assert notes.read_text() == "my notes\n"
    assert not scratch.exists()  # refused before anything ran or was written
    assert "benchmark cache (tiny)" not in out  # no table: nothing was measured


def test_another_benchmarks_result_or_foreign_json_is_refused(tmp_path) -> None:
    result = tmp_path / "cache.json"
    cli_ok("benchmark", "cache", *FAST, "--out", str(result), "--workdir", str(tmp_path))
    before = result.read_bytes()
    cli_refused(2, "benchmark", "sample", *FAST, "--out", str(result))  # a cache result
    assert result.read_bytes() == before
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "cache", "mine": True}))  # JSON, not a result
    cli_refused(2, "benchmark", "cache", *FAST, "--out", str(other))
    assert json.loads(other.read_text()) == {"name": "cache", "mine": True}


def test_its_own_result_is_replaced(tmp_path) -> None:
    result = tmp_path / "bench.json"
    args = ("benchmark", "cache", *FAST, "--out", str(result), "--workdir", str(tmp_path))
    cli_ok(*args)
    doc = json.loads(result.read_text())
    doc["notes"] = ["from the first run"]
    result.write_text(json.dumps(doc))
    cli_ok(*args)
    again = json.loads(result.read_text())
    assert again["name"] == "cache" and "from the first run" not in again["notes"]


def test_a_folder_out_is_refused_before_running(tmp_path) -> None:
    """`--out user` (a folder) used to end in an IsADirectoryError traceback after the run."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    out = cli_refused(2, "benchmark", "cache", *FAST, "--out", str(folder))
    assert "is a folder" in out and str(folder / "cache.json") in out, out
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert "benchmark cache (tiny)" not in out


def test_a_missing_workdir_is_created(tmp_path) -> None:
    """`--workdir …/bw` (missing) used to end in a FileNotFoundError traceback."""
    for name in ("cache", "extract"):
        scratch = tmp_path / name / "bw"
        out = tmp_path / f"{name}.json"
        cli_ok("benchmark", name, *FAST, "--out", str(out), "--workdir", str(scratch))
        assert json.loads(out.read_text())["name"] == name
        assert scratch.is_dir() and not list(scratch.iterdir())  # scratch data removed


def test_a_workdir_under_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "r.json"
    msg = cli_refused(
        2, "benchmark", "cache", *FAST, "--out", str(out), "--workdir", str(tmp_path / "file/bw")
    )
    assert "which is a file" in msg and not out.exists(), msg


def test_the_gpu_check_never_replaces_a_file_it_did_not_write(tmp_path, capsys) -> None:
    """`python -m repackctl.bench.gpu_check --out notes.json` replaced the file after minutes of
    measuring; it is refused before anything runs. Its own page and JSON (and the committed page
    that waits for the first figures) are what it replaces."""

    from repackctl.bench import gpu_check

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    md, readme = tmp_path / "gpu.md", tmp_path / "README.md"
    readme.write_text("# my page\n")
    for out, page in ((notes, md), (tmp_path / "g.json", readme)):
        assert gpu_check.main(["--out", str(out), "--md", str(page), "--repeats", "1"]) == 2
        err = capsys.readouterr().err
        assert "Error:" in err and "Hint:" in err and "is not a GPU check result" in err
    assert notes.read_text() == '{"mine": 1}\n' and not md.exists()
    assert readme.read_text() == "# my page\n"
    assert gpu_check.main(["--out", str(tmp_path), "--md", str(md)]) == 2
    assert "is a folder" in capsys.readouterr().err
    # a count that would time nothing: an Error: line, not a traceback, before anything runs
    assert (
        gpu_check.main(["--out", str(tmp_path / "n.json"), "--md", str(md), "--repeats", "0"]) == 2
    )
    err = capsys.readouterr().err
    assert "Error: --repeats 0" in err and "Traceback" not in err and not md.exists()
    doc = {"train": [], "environment": {}, "peak_tflops": {}, "model": "m", "batch": 1}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    (tmp_path / "old.md").write_text("# GPU check — cpu\n")
    gpu_check.check_outputs(str(tmp_path / "old.json"), str(tmp_path / "old.md"))  # accepted


def test_scratch_data_a_killed_run_left_is_removed_and_nothing_else(tmp_path) -> None:
    """A kill skipped the cleanup of the scratch folder (gigabytes at --size paper), and no
    later run removed it: the next run of the same benchmark does, by its name and dead pid."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    from repackctl.temp_names import HOST

    other_host = "0123abcd" if HOST != "0123abcd" else "89abcdef"
    stale = tmp_path / f"repackctl-bench-cache-{proc.pid}-k1ll3d"  # an older name: this machine's
    stale_now = tmp_path / f"repackctl-bench-cache-{proc.pid}-{HOST}-k1ll3d"
    kept = [
        tmp_path / "repackctl-bench-cache-notes",  # not our name: someone's folder
        tmp_path / f"repackctl-bench-cache-{os.getpid()}-alive",  # a running writer's
        tmp_path / f"repackctl-bench-extract-{proc.pid}-other",  # another benchmark's
        # another machine's on a shared workdir: its pid means nothing here (it may be running)
        tmp_path / f"repackctl-bench-cache-{proc.pid}-{other_host}-r4nn1ng",
    ]
    for folder in (stale, stale_now, *kept):
        folder.mkdir()
        (folder / "data.bin").write_bytes(b"x")
    cli_ok(
        "benchmark", "cache", *FAST, "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path)
    )
    assert not stale.exists() and not stale_now.exists()
    assert all((p / "data.bin").is_file() for p in kept)
    assert sorted(p.name for p in tmp_path.glob("repackctl-bench-*")) == sorted(
        p.name for p in kept
    )
