"""Captioned image sources for text-to-image training: built-in, MS-COCO, any folder + captions.

REPA's text-to-image setup (sihyun-yu/REPA ``dataset.py``, ``train_t2i.py``) trains on MS-COCO
2017 with its five captions per image and draws one caption at random each step. Here:

- ``builtin_captions(index)`` describes an image of the built-in procedural dataset
  (``repackctl.data.builtin``) from the attributes it was drawn with — shape, colours, fill,
  background texture, position, size, outline — in several phrasings; a pure function of
  (seed, split, index) like the image itself, and of ``CAPTIONS_VERSION`` (the phrasing).
- ``CocoCaptions``: ``annotations/captions_{train,val}2017.json`` + ``{train,val}2017/`` images.
- ``FolderCaptions``: any folder of images + a JSONL or CSV index with ``file, caption`` rows
  (several rows for one file give it several captions). A CSV row with more or fewer fields
  than its header is an error naming its line, not a skipped row: an unquoted comma in a caption
  would otherwise cut the caption at the comma without a word.

Every source is a sequence of ``CaptionedImage(image, captions)`` (an image path, or an index
into the built-in source) and lists what it skipped in ``skipped`` as ``(row, reason)`` pairs:
missing image, empty caption, undecodable or malformed row. Nothing is dropped silently. Images
are only checked to exist here; decoding them is the extractor's job (``BadImage``).
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from repackctl.data.builtin import BuiltinSource
from repackctl.errors import DataError

#: The caption index files `repackctl captions` reads from an image folder itself (without
#: ``--captions``): captions, no image. ``repackctl.data.imagefolder`` lists them at the folder's
#: top neither as files of the entry nor as skipped inputs.
INDEX_FILES = ("captions.jsonl", "captions.csv")

#: Version of the built-in captions (``scene_captions``): bump it whenever the caption of some
#: scene changes, so that caption features encoded from another version's captions are never
#: taken as this version's (``repackctl.captions_cache``: recorded with the features, and part of
#: their group id from version 2 on; features from before it was recorded are version 1).
CAPTIONS_VERSION = 1


class CaptionedImage(NamedTuple):
    """One image and all its captions; unpacks as ``(image, captions)``."""

    image: Path | int  # a file path, or an index into the built-in source
    captions: list[str]


Skipped = list[tuple[str, str]]  # (row, reason)


# --------------------------------------------------------------------------------------------
# Built-in data: captions from the scene attributes
# --------------------------------------------------------------------------------------------

SHAPE_NOUNS: dict[str, tuple[str, str]] = {  # class name → (noun, synonym)
    "disc": ("disc", "circle"),
    "ring": ("ring", "hoop"),
    "square": ("square", "box"),
    "triangle": ("triangle", "three-sided shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "crescent": ("crescent", "crescent moon"),
    "heart": ("heart", "heart shape"),
    "arrow": ("arrow", "pointer"),
    "two-dots": ("pair of dots", "two dots"),
}
_HUES = (  # (upper hue bound in degrees, name)
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (160, "green"),
    (200, "teal"),
    (255, "blue"),
    (290, "purple"),
    (335, "pink"),
    (360, "red"),
)
_TEXTURES = {
    "gradient": "gradient",
    "noise": "mottled",
    "stripes": "striped",
    "checker": "checkered",
}
_FILLS = {"solid": "solid", "stripes": "striped", "gradient": "two-tone"}
#: the words of the two-colour fills ("a striped red and blue star"; parsed by evaluate adherence)
TWO_COLOUR_FILLS = tuple(w for k, w in _FILLS.items() if k != "solid")
#: the object's size words, small to large (``_size``)
SIZE_WORDS = ("small", "medium-sized", "large")


def colour_name(rgb: np.ndarray) -> str:
    """A plain colour word for an RGB triple in [0, 1] (hue bucket, with light/dark, or grey)."""
    h, lightness, s = colorsys.rgb_to_hls(*(float(c) for c in rgb))
    if s < 0.2 or lightness < 0.08 or lightness > 0.94:
        if lightness < 0.2:
            return "black"
        return "white" if lightness > 0.8 else ("dark grey" if lightness < 0.5 else "light grey")
    hue = next(name for bound, name in _HUES if h * 360.0 < bound)
    if lightness < 0.3:
        return f"dark {hue}"
    return f"light {hue}" if lightness > 0.7 else hue


def _position(cx: float, cy: float) -> str:
    """Where the object sits, as a phrase (y grows downwards; offsets are drawn in ±0.22)."""
    col = "left" if cx < -0.08 else ("right" if cx > 0.08 else "")
    row = "top" if cy < -0.08 else ("bottom" if cy > 0.08 else "")
    if row and col:
        return f"in the {row} {col} corner"
    if col:
        return f"on the {col}"
    return f"at the {row}" if row else "in the center"


def _size(scale: float) -> str:
    """The object radius is drawn in [0.42, 0.66] image half-widths."""
    small, medium, large = SIZE_WORDS
    return small if scale < 0.5 else (large if scale > 0.58 else medium)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def scene_captions(scene: dict, class_name: str) -> list[str]:
    """Five phrasings of one built-in scene, from most to least detailed."""
    noun, synonym = SHAPE_NOUNS[class_name]
    obj, obj2 = colour_name(scene["obj_a"]), colour_name(scene["obj_b"])
    bg = colour_name(scene["bg_a"])
    texture, fill = _TEXTURES[scene["bg_kind"]], _FILLS[scene["fill_kind"]]
    where, size = _position(scene["cx"], scene["cy"]), _size(scene["scale"])
    fill_text = f"{obj}" if fill == "solid" else f"{fill} {obj} and {obj2}"
    outline = " with an outline" if scene["outline"] else ""
    return [
        f"{_a(size)} {fill_text} {noun}{outline} {where}, on {_a(texture)} {bg} background",
        f"{_a(synonym)} in {obj}, {where}",
        f"{_a(noun)} over {_a(texture)} background, {size}, {fill} fill",
        f"{_a(texture)} {bg} backdrop with {_a(obj)} {noun} {where}",
        f"{_a(obj)} {noun}",
    ]


def builtin_captions(index: int, *, split: str = "train", seed: int = 0) -> list[str]:
    """Captions of built-in image ``index`` (same seed and split as ``BuiltinSource``)."""
    source = BuiltinSource(split=split, num=int(index) + 1, seed=seed)
    scene = source.scene(index)
    return scene_captions(scene, source.class_names[scene["label"]])


class BuiltinCaptions:
    """The built-in dataset with captions: items are ``(index, captions)``."""

    name = "builtin"
    version = CAPTIONS_VERSION

    def __init__(self, *, split: str = "train", num: int | None = None, seed: int = 0) -> None:
        self.source = BuiltinSource(split=split, num=num, seed=seed)
        self.split = split
        self.skipped: Skipped = []  # generated captions are never bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> CaptionedImage:
        scene = self.source.scene(i)
        return CaptionedImage(i, scene_captions(scene, self.source.class_names[scene["label"]]))

    def __iter__(self) -> Iterator[CaptionedImage]:
        return (self[i] for i in range(len(self)))


# --------------------------------------------------------------------------------------------
# Captions from files
# --------------------------------------------------------------------------------------------


class _FileCaptions:
    """Shared sequence behaviour: grouped items, in first-appearance order, plus skipped rows."""

    name = "captions"
    split = "train"

    def __init__(self) -> None:
        self.items: list[CaptionedImage] = []
        self.skipped: Skipped = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> CaptionedImage:
        return self.items[i]

    def __iter__(self) -> Iterator[CaptionedImage]:
        return iter(self.items)

    def _group(self, rows: list[tuple[str, Path, str]]) -> None:
        """(row id, image path, caption) rows → items; checks the caption and the image."""
        grouped: dict[Path, list[str]] = {}
        missing: set[Path] = set()
        for row, path, caption in rows:
            caption = " ".join(caption.split())  # one line, single spaces
            if not caption:
                self.skipped.append((row, "empty caption"))
            elif path in missing or not path.is_file():
                missing.add(path)
                self.skipped.append((row, f"missing image {path.name}"))
            else:
                grouped.setdefault(path, []).append(caption)
        self.items = [CaptionedImage(p, caps) for p, caps in grouped.items()]


class CocoCaptions(_FileCaptions):
    """MS-COCO 2017 captions: ``root/annotations/captions_<split>2017.json``, ``root/<split>2017/``."""

    name = "coco"

    def __init__(self, root: str | Path, *, split: str = "train") -> None:
        super().__init__()
        if split not in ("train", "val"):
            raise DataError(
                f"COCO split {split!r} is not 'train' or 'val'", hint="pass split='val'"
            )
        self.root, self.split = Path(root).expanduser(), split
        ann = self.root / "annotations" / f"captions_{split}2017.json"
        images = self.root / f"{split}2017"
        if not ann.is_file() or not images.is_dir():
            raise DataError(
                f"no COCO {split} captions under {self.root} (need {ann.relative_to(self.root)} "
                f"and {images.name}/)",
                hint="unpack annotations_trainval2017.zip and the image zip into one folder",
            )
        try:
            data = json.loads(ann.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{ann} is not a UTF-8 JSON file: {e}", hint="re-download it") from e
        files, notes = _coco_lists(data, ann)
        rows = []
        for a in sorted(notes, key=lambda a: (_id_order(a["image_id"]), _id_order(a["id"]))):
            row = f"annotation {a['id']} (image {a['image_id']})"
            if a["image_id"] not in files:
                self.skipped.append((row, "image id not in the images list"))
            else:
                rows.append((row, images / files[a["image_id"]], str(a.get("caption") or "")))
        self._group(rows)


CocoId = int | str  # an id of a COCO file, read by ``_coco_id``


def _id_order(value: CocoId) -> tuple[bool, CocoId]:
    """A sort key for ids of either kind: numbers in numeric order, then other strings."""
    return isinstance(value, str), value


def _coco_id(value: Any) -> CocoId | None:
    """A COCO id read one way: an integer, or a string of digits, is the number (the same image
    whichever way one list spells it: ``7``, ``"7"``, ``"007"``); another non-empty string is
    itself; anything else (a float, true/false, null, a list) is None (refused)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if text.isascii() and text.isdigit() else text
    return None


def _coco_lists(data: Any, ann: Path) -> tuple[dict[CocoId, str], list[dict[str, Any]]]:
    """({image id: file name}, annotations) of a COCO captions file, after checking its shape:
    an object whose ``images`` hold ``id`` + ``file_name`` and whose ``annotations`` hold ``id``
    + ``image_id`` (another JSON file named so was a KeyError traceback). Ids are read one way
    (``_coco_id``): a file spelling them as strings reads as one spelling them as numbers, and
    one mixing both still matches each caption to its image (it matched none, or a traceback)."""

    def bad(what: str) -> DataError:
        return DataError(
            f"{ann} is not a COCO captions file: {what}",
            hint="use annotations/captions_{train,val}2017.json of annotations_trainval2017.zip",
        )

    if not isinstance(data, dict):
        raise bad(f"it holds a JSON {type(data).__name__}, not an object")
    images, notes = data.get("images", []), data.get("annotations", [])
    for key, items, need in (("images", images, "file_name"), ("annotations", notes, "image_id")):
        if not isinstance(items, list):
            raise bad(f"its {key!r} is not a list")
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item or need not in item:
                raise bad(f"{key}[{k}] has no 'id' and {need!r}")
    images = [_read_ids(img, f"images[{k}]", ("id",), bad) for k, img in enumerate(images)]
    notes = [
        _read_ids(a, f"annotations[{k}]", ("id", "image_id"), bad) for k, a in enumerate(notes)
    ]
    files: dict[CocoId, str] = {}
    for img in images:
        name = str(img["file_name"])
        if files.setdefault(img["id"], name) != name:  # which file the captions describe?
            raise bad(f"image id {img['id']} is listed twice, as {files[img['id']]} and {name}")
    return files, notes


def _read_ids(
    item: dict[str, Any], where: str, fields: tuple[str, ...], bad: Callable[[str], DataError]
) -> dict[str, Any]:
    """A copy of ``item`` with its id ``fields`` read by ``_coco_id``; an id of another type
    (a float, true/false, null, a list) is refused by ``bad``."""
    out = dict(item)
    for field in fields:
        out[field] = _coco_id(item[field])
        if out[field] is None:
            raise bad(
                f"{where} has {field} {json.dumps(item[field])[:40]}, not an integer or a string"
            )
    return out


def _decoded_lines(path: Path, skipped: Skipped) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; lines that do not decode are skipped and listed."""
    lines = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append((n, raw.decode("utf-8-sig" if n == 1 else "utf-8")))
        except UnicodeDecodeError:
            skipped.append((f"{path.name}:{n}", "not UTF-8"))
    return lines


def _index_path(path: Path, root: Path) -> Path:
    """A relative index path names a file of the working directory or of the image folder:
    the one that exists; both existing as two files is refused rather than one of them taken."""
    if path.is_absolute():
        return path
    here, there = path.resolve(), root / path
    if here.is_file() and there.is_file() and not here.samefile(there):
        raise DataError(
            f"caption index {path} names two files: {here} (working directory) and {there} "
            "(image folder)",
            hint="pass the one you mean as an absolute path",
        )
    return here if here.is_file() else there


class FolderCaptions(_FileCaptions):
    """Images under ``root`` and an index (JSONL or CSV) of ``file, caption`` rows."""

    def __init__(self, root: str | Path, *, index: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self.index = self._find_index(index)
        lines = _decoded_lines(self.index, self.skipped)
        if self.index.suffix.lower() == ".csv":
            records = self._csv_records(lines)
        else:
            records = self._jsonl_records(lines)
        rows = []
        for row, file, caption in records:
            path = (self.root / file).resolve()
            if not path.is_relative_to(self.root):
                self.skipped.append((row, f"{file!r} is outside the image folder"))
            else:
                rows.append((row, path, caption))
        self._group(rows)
        self.skipped.sort(key=lambda r: int(r[0].rpartition(":")[2]))  # in file order

    def _find_index(self, index: str | Path | None) -> Path:
        if index is None:
            found = [self.root / n for n in INDEX_FILES]
            found = [p for p in found if p.is_file()]
            if not found:
                raise DataError(
                    f"no captions.jsonl or captions.csv in {self.root}",
                    hint='write one row per caption: {"file": "a.jpg", "caption": "..."}',
                )
            return found[0]
        path = _index_path(Path(index).expanduser(), self.root)
        if not path.is_file() or path.suffix.lower() not in (".jsonl", ".csv"):
            raise DataError(
                f"caption index {path} is not an existing .jsonl or .csv file",
                hint="pass a JSONL or CSV file with file and caption columns",
            )
        return path

    def _jsonl_records(self, lines: list[tuple[int, str]]) -> list[tuple[str, str, str]]:
        records = []
        for n, text in lines:
            row = f"{self.index.name}:{n}"
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                self.skipped.append((row, "not valid JSON"))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("file"), str):
                self.skipped.append((row, "no 'file' string"))
            elif not isinstance(obj.get("caption"), str):
                self.skipped.append((row, "no 'caption' string"))
            else:
                records.append((row, obj["file"], obj["caption"]))
        return records

    def _csv_records(self, lines: list[tuple[int, str]]) -> list[tuple[str, str, str]]:
        if not lines:
            return []
        numbers = [n for n, _ in lines]
        reader = csv.DictReader(io.StringIO("\n".join(text for _, text in lines)))
        if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
            raise DataError(
                f"{self.index} has columns {reader.fieldnames}, not 'file' and 'caption'",
                hint="the first line must be the header: file,caption",
            )
        records = []
        for rec in reader:
            n = numbers[min(reader.line_num, len(numbers)) - 1]  # the row's last physical line
            self._check_fields(rec, reader.fieldnames, n)
            row = f"{self.index.name}:{n}"
            file, caption = rec.get("file"), rec.get("caption")
            if not file:
                self.skipped.append((row, "empty file name"))
            else:
                records.append((row, file, caption or ""))
        return records

    def _check_fields(self, rec: dict, header: list[str], line: int) -> None:
        """Refuse a row with more or fewer fields than the header: ``csv`` would keep the
        extra fields aside (``None`` key) and fill missing ones with ``None``, so a caption with
        an unquoted comma would be cut at it without a word."""
        extra = rec.get(None) or []
        fields = len(header) + len(extra) - sum(rec[h] is None for h in header)
        blank = not "".join(v for v in rec.values() if isinstance(v, str)).strip()
        if fields == len(header) or (blank and not extra):
            return  # a whitespace-only line: its empty file name or caption is listed
        what = "more" if extra else "fewer"
        cause = "a caption with an unquoted comma" if extra else "a missing field"
        raise DataError(
            f"{self.index} line {line} has {fields} fields, {what} than the {len(header)} "
            f"columns of its header ({','.join(header)}): {cause} would be misread",
            hint='quote fields holding commas (file,caption then a.jpg,"a grey cat, sitting"), '
            'or write the index as JSONL: {"file": "a.jpg", "caption": "..."} per line',
        )
