"""Image folders and ImageNet as image sources.

Layouts of ``imagefolder:PATH``:

- **split folders**: ``PATH/train/<class>/…``, ``PATH/val/<class>/…`` (any sub-folder named
  ``train``, ``val``, ``valid``, ``validation`` or ``test`` makes ``PATH`` a split root). ``--split
  X`` reads ``PATH/X``; any split folder present can be named. Class ids come from the sorted
  class folders of ``train/`` (of the split itself only when there is no ``train/``); a class
  folder of another split that ``train/`` lacks is an error naming it, and so is a ``train/``
  holding images directly beside a split with class folders (read unlabelled). Without
  ``train/``, split folders whose class folders differ are an error (each split would number
  its own, giving one class two ids). Only an
  unambiguous layout is detected: a split folder beside other folders (``vehicles/{bus,car,
  train}``: is ``train`` a class?) and a folder named like a split in another case (``Train/``,
  ``VAL/``) are errors naming them, never a guess that drops folders or labels by split.
- **class folders** (``PATH/<class>/…``) or a **flat folder** of images (unlabelled, label -1):
  there is only one split. ``--split train`` reads everything. Any other split is an error, unless
  ``val_fraction`` asks for a held-out split: each class's files are permuted by a generator
  seeded with ``(seed, class name)``; the first ``round(F·n)`` files of the permutation are split
  ``val``, the rest split ``train`` (give the same ``--val-fraction`` for both), so the two are
  disjoint by construction, their union is every file, and the same seed gives the same split.
  The fraction, seed and both counts are recorded in :meth:`ImageFolderSource.describe`.

``imagenet`` is the split layout under the ``imagenet_root`` setting or ``imagenet:PATH``.

Hostile folders:

- an **empty class folder** (no files at all) is an *error with a hint*, never a silent class with
  zero images (label ids must not depend on folders that contribute nothing, and a silently
  counted class skews ``num_classes``), and so is a class folder that holds no image (no file
  with an image extension or an image header: notes, annotations), and a source that holds no
  image at all, whatever its layout (flat, class folders, a split: no file whose header is an
  image's, a text file named ``.png`` included), which made an entry of 0 images. A class
  folder that exists but cannot be read is not empty: it is skipped and listed in
  :attr:`ImageFolderSource.skipped` like unreadable files;
- a ``--val-fraction`` that rounds to no file of a split (0.01 of classes of 3 files) is an
  error naming the fraction, the classes' sizes and a fraction that works;
- a link whose target is missing is skipped and listed as one while listing (decoding it said
  "corrupt or truncated");
- directory symlinks are followed, but a folder already visited (a loop such as ``a/up -> ..``)
  is not entered again, and files are deduplicated by their real path: the file itself wins over
  links to it, otherwise the first link in folder order (the count of dropped duplicates is
  recorded; a class folder that holds only links to other classes' files is an error);
- file names that are not valid UTF-8 are kept losslessly: paths are ``os.fsdecode`` strings
  (undecodable bytes as lone surrogates) and keys are :func:`escape_name` of them (valid Unicode
  for the Zarr ``keys`` array; :func:`unescape_name` gives the exact name back);
- files directly inside a folder of class folders are skipped and listed ("not in a class
  folder"); hidden files and ``Thumbs.db``-like clutter are ignored, and so are the caption
  index files at the top of the folder (``captions.jsonl``, ``captions.csv``: what `repackctl
  captions` reads there): captions, not an input of the entry, so writing one after the extract
  neither changes the entry nor is reported as skipped on every later extract.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from repackctl.data.captions import INDEX_FILES
from repackctl.data.crop import center_crop, open_image
from repackctl.errors import ConfigError, DataError, name_items
from repackctl.files import IMAGE_EXTENSIONS, sha256_file

EXTENSIONS = IMAGE_EXTENSIONS
#: files that are never listed; anything else not hidden is an input (a stray file is reported)
IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}
#: sub-folder names that make a folder a split root
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
#: name of the held-out split that ``val_fraction`` makes from a folder without split folders
HELD_OUT = "val"

Skipped = list[tuple[str, str]]  # (key, reason)


# ---------------------------------------------------------------------------- lossless names


def escape_name(text: str) -> str:
    """A valid-Unicode form of a (``os.fsdecode``) name: ``\\`` → ``\\\\``, byte ``b`` → ``\\xbb``.

    Undecodable bytes arrive as lone surrogates U+DC80..U+DCFF (``surrogateescape``); any other
    lone surrogate becomes ``\\uXXXX``. Names without either and without ``\\`` are unchanged.
    """
    if "\\" not in text:
        try:
            text.encode("utf-8")  # fails exactly on lone surrogates
            return text
        except UnicodeEncodeError:
            pass
    out = []
    for c in text:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def unescape_name(text: str) -> str:
    """Inverse of :func:`escape_name` (``os.fsencode`` of the result gives the original bytes)."""

    def repl(m: re.Match) -> str:
        tok = m.group(1)
        if tok == "\\":
            return "\\"
        return chr(0xDC00 + int(tok[1:], 16)) if tok[0] == "x" else chr(int(tok[1:], 16))

    return _ESCAPE.sub(repl, text)


def _safe_part(text: str) -> str:
    """A folder name reduced to ``[A-Za-z0-9._-]`` for the dataset id."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-.") or "x"


# ---------------------------------------------------------------------------- listing


class _Lister:
    """Walks folders: follows directory symlinks, never enters a folder twice, dedups files."""

    def __init__(self, base: Path, index_listed: bool = False) -> None:
        self.base = base  # keys are relative to this folder
        self.root = base  # the image folder itself: its caption index files are not listed
        self.index_listed = index_listed  # …unless an entry listed them before (as files)
        self.index_left_out: set[str] = set()  # those passed over
        self.skipped: Skipped = []
        self._dirs: set[tuple[int, int]] = set()  # folders already walked
        self._tops: set[tuple[int, int]] = set()  # the split and class folders themselves

    def reserve(self, folders: list[Path]) -> None:
        """Folders that only their own ``walk(top=True)`` enters (no class inside another)."""
        for f in folders:
            try:
                st = f.stat()
            except OSError:
                continue
            self._tops.add((st.st_dev, st.st_ino))

    def key(self, path: Path) -> str:
        return escape_name(os.path.relpath(path, self.base))

    def entries(self, folder: Path) -> list[os.DirEntry] | None:
        """Visible entries of ``folder`` sorted by name; ``None`` (listed) when unreadable."""
        try:
            with os.scandir(folder) as it:
                found = [e for e in it if not e.name.startswith(".") and not self._index(folder, e)]
        except OSError as e:
            self.skipped.append((self.key(folder) + "/", f"unreadable folder: {e.strerror or e}"))
            return None
        return sorted(found, key=lambda e: e.name)

    def _index(self, folder: Path, entry: os.DirEntry) -> bool:
        """Whether ``entry`` is a caption index file of the image folder itself (captions),
        left out of the listing (``index_left_out``)."""
        if self.index_listed or entry.name not in INDEX_FILES or folder != self.root:
            return False
        if _is_dir(entry):
            return False
        self.index_left_out.add(entry.name)
        return True

    def subdirs(self, folder: Path) -> list[str] | None:
        found = self.entries(folder)
        return None if found is None else [e.name for e in found if _is_dir(e)]

    def loose_files(self, folder: Path) -> list[Path]:
        found = self.entries(folder) or []
        return [Path(e.path) for e in found if not _is_dir(e) and e.name.lower() not in IGNORED]

    def walk(self, folder: Path, top: bool = False) -> list[tuple[Path, str, bool]]:
        """``(path, real path, is a link)`` of the files under ``folder``, in sorted order."""
        try:
            st = folder.stat()
        except OSError as e:
            self.skipped.append((self.key(folder) + "/", f"unreadable folder: {e.strerror or e}"))
            return []
        ident = (st.st_dev, st.st_ino)
        if ident in self._dirs or (not top and ident in self._tops):
            return []  # a symlink loop, a second link to a listed folder, or another class
        self._dirs.add(ident)
        found = self.entries(folder)
        real_dir = os.path.realpath(folder)  # once per folder, not per file
        files: list[tuple[Path, str, bool]] = []
        for e in found or []:
            if _is_dir(e):
                files += self.walk(Path(e.path))
            elif e.name.lower() not in IGNORED:
                link = e.is_symlink()  # free: from the directory entry's type
                if link and not os.path.exists(e.path):
                    self.skipped.append((self.key(Path(e.path)), _dangling(e.path)))
                    continue
                real = os.path.realpath(e.path) if link else os.path.join(real_dir, e.name)
                files.append((Path(e.path), real, link))
        return files


def _dangling(path: str) -> str:
    """The listing's reason for a link whose target is missing: named as such (decoding it
    said "corrupt or truncated", which sent the user to a file that is not there)."""
    try:
        target = os.readlink(path)
    except OSError:
        return "a link whose target is missing"
    return f"a link whose target is missing ({escape_name(target)})"


def _dedup(found: list[tuple[Path, str, bool]], labels: list[int]) -> tuple[list, list, int]:
    """Each real file once: the file itself wins over links to it, else the first link."""
    owner: dict[str, int] = {}
    for i, (_, real, link) in enumerate(found):
        j = owner.get(real)
        if j is None or (found[j][2] and not link):
            owner[real] = i
    keep = sorted(owner.values())
    return [found[i][0] for i in keep], [labels[i] for i in keep], len(found) - len(keep)


def _not_an_image(path: Path) -> str | None:
    """Why ``path`` is no image by its header (None: its header is an image's; a file that
    then fails to decode is skipped and listed by the extract). Reads a few bytes only."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path):
                return None
    except Image.DecompressionBombError:
        return None  # an image, only too large (skipped when it is decoded)
    except UnidentifiedImageError:
        return "not an image"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    except Exception:  # noqa: BLE001 - a plugin's parser failing on a stray file
        return "not an image"


def _holds_image(files: list[Path], by_name: bool = False) -> bool:
    """Whether any of ``files`` is an image by its header: those with an image extension are
    tried first, so a folder of images costs one header read. ``by_name``: a file with an image
    extension is enough (a class folder's check, where a class of corrupt ``.png`` files beside
    classes of images is extracted with its files skipped and listed); for a whole source it is
    not: a folder of only corrupt ``.png`` files made an entry of 0 images."""
    if by_name and any(p.suffix.lower() in EXTENSIONS for p in files):
        return True
    named = (p for p in files if p.suffix.lower() in EXTENSIONS)
    others = (p for p in files if p.suffix.lower() not in EXTENSIONS)
    return any(_not_an_image(path) is None for path in itertools.chain(named, others))


def _no_image(where: str, files: list[Path], skipped: Skipped, base: Path | None = None) -> str:
    """``WHERE holds no image (2 files: notes.txt: not an image, …)``: what the folder holds,
    each with why it is no image (the first few; named from ``base``, else by file name), and
    what the listing skipped in it."""

    def name(p: Path) -> str:
        return escape_name(os.path.relpath(p, base) if base is not None else p.name)

    told = [f"{name(p)}: {_not_an_image(p) or 'not an image'}" for p in files[:3]]
    told += [f"{key}: {reason}" for key, reason in skipped[: max(0, 3 - len(told))]]
    count = len(files) + len(skipped)
    more = " …" if count > len(told) else ""
    return f"{where} holds no image ({count} file(s): {', '.join(told)}{more})"


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _folders(names: list[str]) -> str:
    return ", ".join(f"{escape_name(n)}/" for n in names[:10]) + (" …" if len(names) > 10 else "")


def _is_split_root(root: Path, top: list[str]) -> bool:
    """Whether the sub-folders ``top`` of ``root`` are split folders (else class folders).

    Only an unambiguous layout is read: a split folder beside other folders (``vehicles/{bus,
    car,train}``: is ``train`` a class or a split?) and a folder named like a split in another
    case (``Train/``, ``VAL/``: read as classes, its images would be labelled with the split)
    are errors naming them, never a guess that drops folders or leaks a split into another.
    """
    cased = [d for d in top if d not in SPLIT_NAMES and d.lower() in SPLIT_NAMES]
    if cased:
        lower = ", ".join(f"{d.lower()}/" for d in cased)
        raise DataError(
            f"{root} holds folder(s) {_folders(cased)} named like split folders but not in "
            "lower case: split folders are train/, val/, valid/, validation/, test/, and read "
            "as classes their images would be labelled by split",
            f"if they are splits, rename them to {lower}; if they are classes, give those "
            "class folders names that are not split names",
        )
    splits = [d for d in top if d in SPLIT_NAMES]
    others = [d for d in top if d not in SPLIT_NAMES]
    if splits and others:
        raise DataError(
            f"{root} holds split folder(s) {_folders(splits)} and other folder(s) "
            f"{_folders(others)}: it is read either as split folders (each holding class "
            "folders) or as class folders, and the other folders would be dropped",
            f"if {_folders(splits)} {'is a class' if len(splits) == 1 else 'are classes'}, "
            f"rename {'its folder' if len(splits) == 1 else 'them'} (e.g. {splits[0]}_/); else "
            f"arrange {root}/train/<class>/ and {root}/val/<class>/ and move or remove "
            f"{_folders(others)}",
        )
    return bool(splits)


def _subdir_names(folder: Path) -> list[str] | None:
    """The visible sub-folders of ``folder``, sorted; None when it cannot be read (not listed
    as skipped here: the folder is listed when it is read)."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))
    except OSError:
        return None


def _check_split_labels(root: Path, top: list[str]) -> None:
    """Refuse a ``train/`` without class folders beside another split with them: class ids
    come from ``train/``, so that split's images would be read unlabelled."""
    if "train" not in top or _subdir_names(root / "train") != []:
        return  # class folders in train/, or unreadable (listed when it is read)
    for split in top:
        classes = _subdir_names(root / split)
        if split != "train" and classes:
            raise DataError(
                f"{root}/train/ holds images directly (no class folders), but {split}/ has "
                f"class folders ({_folders(classes)}): class ids come from train/, so "
                f"{split}/ would be read unlabelled",
                f"sort train/ into the class folders of {split}/, or put {split}/'s images "
                "directly in it (both unlabelled)",
            )


def _check_split_classes(root: Path, top: list[str]) -> None:
    """Without ``train/``, each split would number its own sorted class folders: refuse split
    folders whose class folders differ (class ``b`` would be id 1 in ``val/`` and 0 in
    ``test/``), instead of labelling one class with two ids."""
    if "train" in top:
        return  # class ids come from train/ for every split
    seen = {split: _subdir_names(root / split) for split in top if split in SPLIT_NAMES}
    seen = {split: names for split, names in seen.items() if names}  # labelled, readable
    if len({tuple(names) for names in seen.values()}) < 2:
        return
    first, *others = seen  # split names in sorted order
    differ = []
    for split in others:
        ours, theirs = set(seen[first]), set(seen[split])
        for where, extra in ((first, ours - theirs), (split, theirs - ours)):
            if extra:
                differ.append(f"only in {where}/: {_folders(sorted(extra))}")
    raise DataError(
        f"{root} has no train/, and its split folders hold other class folders "
        f"({'; '.join(dict.fromkeys(differ))}): each split would number its own sorted class "
        "folders, so one class would have different ids in different splits",
        f"give {', '.join(f'{s}/' for s in seen)} the same class folders, or add "
        f"{root}/train/<class>/ (class ids then come from train/)",
    )


def _nothing_listed(split: str, root: Path, skipped: Skipped) -> DataError:
    """The refusal of a split that lists no file: an empty folder, or one whose every input
    was skipped while listing (unreadable folders, links whose target is missing), named."""
    if not skipped:
        return DataError(
            f"no files in split {split!r} under {root}", "put images (or class sub-folders) there"
        )
    told = name_items([f"{key}: {reason}" for key, reason in skipped], 3)
    return DataError(
        f"no image in split {split!r} under {root}: its {len(skipped)} input(s) were skipped "
        f"({told}); its entry would hold 0 images",
        "fix or replace those inputs (or put images there); nothing was written",
    )


def _held_out_count(frac: float, n: int) -> int:
    """How many of a class's ``n`` files ``--val-fraction`` ``frac`` holds out (rounded)."""
    return int(np.floor(frac * n + 0.5))


def _fraction_leaves_nothing(
    frac: float, split: str, root: Path, sizes: dict[str, int]
) -> DataError:
    """The refusal of a ``--val-fraction`` that leaves ``split`` no file: it rounds to 0 files
    of every class (split val) or to all of them (split train). It names the fraction, the
    classes' sizes and a fraction that leaves the split one file of each class (the smallest
    class decides); "put images there" sent the user to a val/ folder that does not exist."""
    small = min(sizes.values())
    val = split == HELD_OUT
    steps = range(1, 100) if val else range(99, 0, -1)

    def kept(fraction: float) -> int:  # files of the smallest class split ``split`` keeps
        held = _held_out_count(fraction, small)
        return held if val else small - held

    fit = next(c / 100 for c in steps if kept(c / 100) > 0)
    if list(sizes) == [""]:  # a flat folder: one group, unlabelled
        held = f"its {small} file(s)"
    else:
        listed = name_items([f"{escape_name(c)}: {n}" for c, n in sizes.items()])
        big = max(sizes.values())
        span = f"{small}" if big == small else f"{small}–{big}"
        held = f"each of its {len(sizes)} class(es) holds {span} file(s) ({listed})"
    rounds = "0 files" if val else "every file"
    rounds += "" if list(sizes) == [""] else " of each class"
    other = "train" if val else HELD_OUT
    return DataError(
        f"--val-fraction {frac} leaves split {split!r} of {root} no file: {held}, and "
        f"round({frac} × files) is {rounds}",
        f"give --val-fraction {fit} {'or more' if val else 'or less'} (and the same for "
        f"--split {other}): split {split!r} then holds at least one file of each class",
    )


# ---------------------------------------------------------------------------- the source


class ImageFolderSource:
    """Images under ``path`` in one of the layouts of the module docstring.

    ``caption_index_listed``: list the caption index files at the folder's top as files, as
    before they were left out (``repackctl.extract`` asks for it for a flat folder's entry that
    holds them as rows, so that it is not refused as made from another source)."""

    #: what decides the pixels (``data.base.source_packages``): Pillow decodes and resizes
    packages = ("repackctl", "pillow")

    def __init__(
        self,
        path: str | None = None,
        split: str = "train",
        num: int | None = None,
        seed: int = 0,
        name: str | None = None,
        val_fraction: float | None = None,
        split_layout: bool | None = None,
        caption_index_listed: bool = False,
    ) -> None:
        if not path:
            raise DataError("imagefolder needs a folder", "use --data imagefolder:/path/to/images")
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}", "check the path after imagefolder:")
        if num is not None and num < 1:
            raise ConfigError(
                f"an image folder needs a positive number of images, got num={num}",
                "pass e.g. -n 100, or leave -n out for the whole folder",
            )
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction must lie strictly between 0 and 1, got {val_fraction}",
                "pass e.g. --val-fraction 0.1",
            )
        self.root, self.split, self.seed = root, split, int(seed)
        self.val_fraction = val_fraction
        self.held_out: dict | None = None
        lister = _Lister(root, caption_index_listed)
        top = lister.subdirs(root)
        if top is None:
            raise DataError(f"cannot read the image folder {root}", "check its permissions")
        if split_layout is None:
            split_layout = _is_split_root(root, top)
        if split_layout:
            self.layout = "split-folders"
            self._list_split_folder(lister, top)
        else:
            self.layout = "class-folders" if top else "flat"
            self._list_class_folders(lister, top)
        self.skipped: Skipped = lister.skipped
        # the folder's own caption index files, not listed (``caption_index_listed``: they are,
        # as files, for an entry extracted before they were left out; ``repackctl.extract``)
        self.caption_index_left_out = sorted(lister.index_left_out)
        if not self._files:
            raise _nothing_listed(split, root, lister.skipped)
        self._check_holds_image(lister.skipped)
        self.total = len(self._files)
        self.subset = num is not None and num < self.total
        if self.subset:
            # a seeded subset spread over all classes, kept in folder order
            keep = np.sort(np.random.default_rng(seed).permutation(self.total)[:num])
            self._files = [self._files[i] for i in keep]
            self._labels = [self._labels[i] for i in keep]
        self.num = len(self._files)
        self._prefix = len(str(self.base).rstrip(os.sep)) + 1
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:8]
        self.name = name or f"folder-{_safe_part(root.name)}-{digest}"
        if self.subset:
            self.name += f"-n{num}"

    def _check_holds_image(self, skipped: Skipped) -> None:
        """Refuse a source none of whose files is an image by its header, whatever its layout
        (flat, class folders, a split): its entry would hold 0 images, where the extract
        wrote one (12.7 MB) and exited 0."""
        if _holds_image(self._files):
            return
        where = f"image folder {escape_name(str(self.base))}"
        if self.layout == "split-folders" or self.held_out is not None:
            where = f"split {self.split!r} of {escape_name(str(self.root))}"
        raise DataError(
            _no_image(where, self._files, skipped, self.base) + ": its entry would hold 0 images",
            "put images (PNG, JPEG, …) there, or pass the folder that holds them with "
            "--data imagefolder:PATH; nothing was written",
        )

    # ---- layouts

    def _list_split_folder(self, lister: _Lister, top: list[str]) -> None:
        root, split = self.root, self.split
        if self.val_fraction is not None:
            raise ConfigError(
                f"{root} already has split folders ({', '.join(top)}): --val-fraction is only "
                "for folders without them",
                f"drop --val-fraction and pass --split {split}",
            )
        if split not in top:
            raise DataError(
                f"no split folder {split!r} in {root} (it holds: {', '.join(top) or 'nothing'})",
                "pass --split with one of those folders",
            )
        _check_split_labels(root, top)
        _check_split_classes(root, top)
        folder = root / split
        lister.base = self.base = folder
        class_from = "train" if "train" in top and split != "train" else split
        classes = lister.subdirs(root / class_from) or []
        self.class_from = class_from
        if not classes:
            self._unlabelled(lister, folder)
            return
        have = lister.subdirs(folder) or []
        missing = [c for c in have if c not in classes]
        if missing:
            raise DataError(
                f"split {split!r} of {root} has class folder(s) that train/ lacks: "
                f"{', '.join(missing[:10])}",
                f"class ids come from train/: add those classes there or remove them from {split}/",
            )
        loose = [] if have else lister.loose_files(folder)
        if loose and not _holds_image(loose):
            raise DataError(
                _no_image(f"split folder {escape_name(str(folder))}", loose, [])
                + ": its entry would hold 0 images",
                f"put the images of split {split!r} in class folders under {folder} (those "
                f"of train/: {_folders(classes)}), or pass --split with a split folder that "
                "holds images; nothing was written",
            )
        if loose:
            raise DataError(
                f"{folder} holds images directly, but train/ has class folders",
                f"sort {split}/ into the class folders of train/ (ImageNet: the usual "
                "valprep.sh), or pass the folder alone as --data imagefolder:PATH",
            )
        self._labelled(lister, folder, classes, present=have)

    def _list_class_folders(self, lister: _Lister, top: list[str]) -> None:
        root, split, frac = self.root, self.split, self.val_fraction
        self.class_from = "train"
        self.base = root
        if (
            frac is None
            and split != "train"
            and root.name == split
            and (root.parent / "train").is_dir()
        ):
            raise DataError(
                f"{root} is itself the {split!r} split folder: class ids must come from train/",
                f"pass the folder above it: --data imagefolder:{root.parent} --split {split}",
            )
        if frac is None and split != "train":
            raise DataError(
                f"{root} has no split folders (train/, val/), so split {split!r} would read the "
                "training images again",
                f"hold out a seeded part of each class with --val-fraction 0.1 (give it for "
                f"--split train too), or arrange {root}/train/<class>/ and {root}/{split}/<class>/",
            )
        if frac is not None and split not in ("train", HELD_OUT):
            raise ConfigError(
                f"with --val-fraction the splits are 'train' and '{HELD_OUT}', got {split!r}",
                f"pass --split {HELD_OUT}",
            )
        if top:
            self._labelled(lister, root, top, present=top)
        else:
            self._unlabelled(lister, root)
        if frac is not None:
            self._hold_out(frac)

    def _unlabelled(self, lister: _Lister, folder: Path) -> None:
        self.class_names: list[str] | None = None
        lister.reserve([self.root, folder])
        found = lister.walk(folder, top=True)
        self._files, self._labels, self.duplicates = _dedup(found, [-1] * len(found))

    def _labelled(
        self, lister: _Lister, folder: Path, classes: list[str], present: list[str]
    ) -> None:
        self.class_names = list(classes)
        for f in lister.loose_files(folder):
            lister.skipped.append((lister.key(f), "not in a class folder"))
        found, labels, listed = [], [], []
        lister.reserve([self.root, folder] + [folder / c for c in present])
        for cls in present:
            before = len(lister.skipped)
            files = lister.walk(folder / cls, top=True)
            if not files and len(lister.skipped) == before:
                raise DataError(
                    f"class folder {escape_name(str(folder / cls))} has no files: it would be a "
                    "class with 0 images",
                    "put images in it or remove it (class ids follow the sorted class folders)",
                )
            paths, new = [p for p, _, _ in files], lister.skipped[before:]
            only_skipped = not files and not any(r.startswith("unreadable") for _, r in new)
            if only_skipped or (files and not _holds_image(paths, by_name=True)):
                raise DataError(
                    _no_image(f"class folder {escape_name(str(folder / cls))}", paths, new)
                    + ": it would be a class with 0 images",
                    "move it out of the image folder, or put images in it (class ids follow "
                    "the sorted class folders)",
                )
            found += files
            labels += [classes.index(cls)] * len(files)
            listed += [cls] if files else []
        self._files, self._labels, self.duplicates = _dedup(found, labels)
        emptied = sorted(set(listed) - {classes[i] for i in self._labels})
        if emptied:
            raise DataError(
                f"class folder(s) {', '.join(emptied)} hold only links to files of other classes: "
                "they would be classes with 0 images",
                "replace the links by the files, or remove those folders",
            )

    def _hold_out(self, frac: float) -> None:
        """Keep split ``train`` or ``val`` of a seeded per-class permutation (module docstring)."""
        labels = np.asarray(self._labels)
        names = self.class_names or [""]
        keep, counts, sizes = [], {"train": 0, HELD_OUT: 0}, {}
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            cls = names[label] if label >= 0 else ""
            code = int.from_bytes(hashlib.sha256(os.fsencode(cls)).digest()[:8], "little")
            perm = np.random.default_rng(np.random.SeedSequence([self.seed, code])).permutation(
                len(idx)
            )
            k = _held_out_count(frac, len(idx))
            sizes[cls] = len(idx)
            counts[HELD_OUT] += k
            counts["train"] += len(idx) - k
            keep += list(idx[perm[:k]] if self.split == HELD_OUT else idx[perm[k:]])
        if sizes and not keep:
            raise _fraction_leaves_nothing(frac, self.split, self.root, sizes)
        keep = sorted(int(i) for i in keep)
        self._files = [self._files[i] for i in keep]
        self._labels = [self._labels[i] for i in keep]
        self.held_out = {"fraction": frac, "seed": self.seed, "counts": counts}

    # ---- the ImageSource protocol

    def __len__(self) -> int:
        return self.num

    def key(self, index: int) -> str:
        """Path relative to the split folder, escaped to valid Unicode (``escape_name``)."""
        path = str(self._files[index])  # always under the base: walks keep the logical path
        return escape_name(path[self._prefix :])

    def path(self, index: int) -> Path:
        """The file of item ``index`` (may hold undecodable bytes as surrogates)."""
        return self._files[index]

    def label(self, index: int) -> int:
        return self._labels[index]

    def load(self, index: int, resolution: int) -> np.ndarray:
        return center_crop(open_image(self._files[index], resolution), resolution)

    def read_file(self, index: int) -> FileBytes:
        """The file of item ``index``, read once: the extract decodes these bytes (``decode``)
        and records their size, sha256 and the file's mtime, to see on a rerun whether the
        file was replaced since (``repackctl.cache.listing.check_files``). A file larger than
        :data:`WHOLE_READ_LIMIT` is not read here (``data`` and ``sha256`` None): ``load``
        decodes it from its path and ``hash_file`` hashes it once it decoded. Raises
        ``OSError``."""
        with open(self._files[index], "rb") as f:
            st = os.fstat(f.fileno())  # before reading: a later write changes the mtime
            if st.st_size > WHOLE_READ_LIMIT:
                return FileBytes(None, st.st_size, st.st_mtime_ns, None)
            data = f.read()
        return FileBytes(data, len(data), st.st_mtime_ns, hashlib.sha256(data).digest())

    def hash_file(self, index: int) -> FileBytes:
        """The fingerprint of item ``index``'s file, hashed in blocks (``data`` None): for a
        file too large for ``read_file``, once ``load`` decoded it. Raises ``OSError``."""
        path = self._files[index]
        st = os.stat(path)
        return FileBytes(None, st.st_size, st.st_mtime_ns, bytes.fromhex(sha256_file(path)))

    def decode(self, data: bytes, resolution: int) -> np.ndarray:
        """``load``'s pixels from the bytes ``read_file`` gave (the file is not read again)."""
        return center_crop(open_image(data, resolution), resolution)

    def describe(self) -> dict:
        out = {
            "source": "imagefolder",
            "root": escape_name(str(self.root)),
            "layout": self.layout,
            "split": self.split,
            "num": self.num,
            "total": self.total,
            "classes": len(self.class_names or []),
            "class_ids_from": self.class_from,
            "crop": "adm-center",
        }
        if self.subset:  # the seed picks the files: another seed is another entry
            out["subset_seed"] = self.seed
        if self.held_out is not None:  # fraction and seed: both splits must agree on them
            out["held_out"] = self.held_out
        if self.skipped:
            out["skipped_in_listing"] = [{"key": k, "reason": r} for k, r in self.skipped]
        if self.duplicates:
            out["duplicate_links_dropped"] = self.duplicates
        return out


#: files up to this size are read into memory once, decoded and hashed from there; a larger
#: one (a stray video or scan in a class folder: 4 GB read whole took 24 s and 4.8 GB of
#: memory only to be skipped as "not an image") is decoded from its path, which refuses it
#: from its header, and hashed in blocks only when it decoded
WHOLE_READ_LIMIT = 64 << 20


class FileBytes(NamedTuple):
    """A file's bytes as read (None: not read whole), its size, mtime and sha256."""

    data: bytes | None
    size: int
    mtime_ns: int
    sha256: bytes | None


def imagenet_source(
    path: str | None = None,
    split: str = "train",
    num: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> ImageFolderSource:
    """ImageNet in ImageFolder layout: ``<root>/<split>/<synset>/*.JPEG``."""
    base = path or root
    if not base:
        raise DataError(
            "no ImageNet folder configured",
            "set REPACKCTL_IMAGENET_ROOT=/data/imagenet (train/ and val/ inside) "
            "or pass --data imagenet:/data/imagenet",
        )
    folder = Path(base).expanduser() / split
    if not folder.is_dir():
        raise DataError(
            f"ImageNet split folder not found: {folder}",
            "the root must hold train/ and val/ with one sub-folder per class",
        )
    return ImageFolderSource(
        str(base), split=split, num=num, seed=seed, name="imagenet", split_layout=True
    )
