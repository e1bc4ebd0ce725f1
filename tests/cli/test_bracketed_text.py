"""Paths and file names with square brackets are printed as they are.

Rich reads ``[...]`` as markup: an error naming ``my [/b]cache`` stopped the command with a
``MarkupError`` traceback instead of the ``Error:`` line, and a skipped ``photo [edited].png``
or a cache folder ``c [red]x`` lost the bracketed part in the warning and the summary table.
"""

from __future__ import annotations

from PIL import Image
from support.cli import cli_ok, cli_refused

from repackctl.errors import CacheError


def test_an_error_naming_a_bracketed_path_is_the_error_line(tmp_path) -> None:
    root = tmp_path / "my [/b]cache"
    out = cli_refused(CacheError.exit_code, "cache", "verify", "--cache", str(root))
    assert f"Error: no cache at {root}" in out, out


def test_warnings_and_tables_keep_bracketed_names(tmp_path) -> None:
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(folder / "a" / f"{i}.png")
    (folder / "a" / "photo [edited].png").write_bytes(b"")  # skipped: an empty file
    cache = tmp_path / "c [red]x"
    out = cli_ok(
        "extract", "--encoder", "patchpix", "--resolution", "32", "--shard", "8", "--chunk", "4",
        "--num-workers", "0", "--device", "cpu", "--cache", str(cache),
        "--data", f"imagefolder:{folder}",
    )  # fmt: skip
    assert "skipped a/photo [edited].png: empty file" in out, out
    # the summary's cache row, with the table's borders and wrapping taken out
    assert "c[red]x" in "".join(out.split()).replace("│", ""), out
