"""Prompt adherence on the built-in data: do samples show the shape and colour their prompt asks?

Two attribute classifiers (one small CNN with a shape head and an object-colour head) are trained
on the REAL cached images of the run's training entry, whose attributes are known exactly (the
built-in scene parameters, ``repackctl.data.builtin``); a held-out tenth of those real images
gives the classifiers' own accuracy, the ceiling to read the sample scores against. Each sample's
prompt is parsed for the attributes of the one object it is about (``parse_prompt``); the score
is the fraction of samples whose predicted attribute equals the prompted one, per attribute, over
the samples whose prompt names it.

What is parsed (exactly, for every phrasing of the built-in captions, ``data.captions``):

- the shape: its noun or synonym (``SHAPE_NOUNS``: "star", "five-pointed star", "box"…);
- the object colour: a colour word in the run of modifiers right before that noun ("a small
  striped light pink and yellow star": the first colour, as the built-in two-colour fills are
  phrased) or "in <colour>" right after it ("a circle in dark blue, on the left").

What is left out (None, counted by reason in ``adherence.json``: ``unscored``), never guessed:

- a prompt with a negation ("not", "no", "without", "never", "n't"…): both attributes (which
  words it negates is not parsed);
- a prompt naming more than one shape, or a plural ("a red star and a blue square", "a star in
  a red box", "two stars"): both attributes (the classifiers see one object);
- a prompt naming no shape ("something on a red background"): both (a colour is only read off
  the object's noun);
- a colour not on the object's noun ("a blue background", "a star with a blue outline", "the star
  is red"): colour left out; likewise a second colour that could be the object's ("a red and blue
  star" outside the built-in fill phrasing, "a red and a blue star");
- an object colour the built-in captions never name (``OTHER_COLOURS``: "a brown star", "a cyan
  disc"): colour left out (``other_colour``); the classifier knows only ``HUES``.

Colours are compared coarsely (hue family: "light teal" → teal, "dark grey" → grey); "gray" is
read as "grey", and a hyphenated tone as its hue ("dark-blue" → blue, "light-gray" → grey).
Written to ``<samples>/adherence.json``. Shapes: N images, H×W×3 uint8.

Nothing is scored that the samples' card does not vouch for: the PNGs' pixels must give the
digest `sample` recorded (``files.samples.npz.images_sha256``); a prompt cut at the text
encoder's ``max_length`` is scored on the text it was encoded as (``prompt_truncation``): an
attribute whose words were cut is left out, with a ``Warning:`` and a record in adherence.json
(``truncation``). The run's training entry comes from the card (``training_entry``), so the
checkpoint that made the samples may have been rotated away since.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repackctl.data.captions import SHAPE_NOUNS, SIZE_WORDS, TWO_COLOUR_FILLS, colour_name
from repackctl.eager_adamw import EagerAdamW
from repackctl.errors import ConfigError, DataError
from repackctl.files import read_json_object, write_json_atomic
from repackctl.paths import PROTOCOL_JSON, SETTINGS_JSON
from repackctl.progress import ProgressFactory, null_progress, warn
from repackctl.run_files import read_json_dict

HUES = (
    "red",
    "orange",
    "yellow",
    "green",
    "teal",
    "blue",
    "purple",
    "pink",
    "grey",
    "black",
    "white",
)
ADHERENCE_JSON = "adherence.json"

#: Why an attribute of a sample is not scored (``adherence.json``: ``unscored``), in the order
#: the command prints them: "8 of 10 samples not scored: 2 use a negation, …".
REASONS = {
    "negation": "use a negation",
    "several_shapes": "name several shapes",
    "no_shape": "name no shape",
    "truncated": "were cut at the text encoder's max_length",
    "several_colours": "name several colours for the object",
    "colour_not_on_object": "name a colour not on the object",
    "other_colour": "name a colour outside the built-in data's colour words",
    "no_colour": "name no colour",
}
#: Colour words the built-in captions never use (``data.captions.colour_name``: the hues of
#: ``HUES``, light/dark, grey): an object of such a colour is not one the classifier knows, so
#: its colour is left out (``other_colour``), never mapped to a hue by a guess.
OTHER_COLOURS = frozenset(
    "brown cyan magenta violet indigo turquoise navy maroon beige gold golden silver bronze "
    "copper lavender lilac crimson scarlet olive lime khaki cream ivory amber aqua azure coral "
    "salmon peach mauve fuchsia burgundy charcoal".split()
)
_SPELLINGS = {"gray": "grey"}  # the built-in captions spell it "grey"
_NEGATION = re.compile(r"\b(?:not|no|without|never|nor|neither|none|cannot)\b|n['\u2019]t\b")
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")  # words and punctuation marks
_TONES = {"light", "dark"}
_COLOURS = {*HUES, *OTHER_COLOURS}  # any colour word: the object's, or one it could be
_FILL_WORDS = set(TWO_COLOUR_FILLS)  # the built-in two-colour fills: "{fill} {obj} and {obj2}"
#: Words that may stand between a colour and its noun ("a small striped red and blue star").
_MODIFIERS = {*_COLOURS, *_TONES, *_FILL_WORDS, "solid", *SIZE_WORDS, "and"}
_AFTER_IN_COLOUR = {",", ".", ";", "on", "at", "in", "over", "against", "with", "near"}
_DANGLING = {"a", "an", "the"}  # a colour whose words end here (or at a mark) has no noun


def _colour_word(word: str) -> str:
    """A prompt's word as the built-in captions spell its colour: ``gray`` → ``grey``, and a
    hyphenated tone ``dark-blue`` / ``light-gray`` → its hue (``blue``, ``grey``; colours are
    compared by hue family, as ``dark blue`` is); any other word as it is."""
    tone, dash, hue = word.partition("-")
    if dash and tone in _TONES and _SPELLINGS.get(hue, hue) in _COLOURS:
        word = hue
    return _SPELLINGS.get(word, word)


def coarse_colour(name: str) -> str:
    """``light teal`` → ``teal``; ``dark grey`` / ``light grey`` → ``grey``."""
    return name.split()[-1]


def _shape_patterns() -> list[tuple[int, list[str]]]:
    """(class id, words) of every shape noun and synonym, longest first, then their plurals
    (class id -1: a plural names several objects)."""
    from repackctl.data.builtin import CLASS_NAMES

    out = []
    for label, name in enumerate(CLASS_NAMES):
        for phrase in SHAPE_NOUNS[name]:
            words = phrase.split()
            out += [(label, words), (-1, _plural(words))]
    return sorted(out, key=lambda p: -len(p[1]))


def _plural(words: list[str]) -> list[str]:
    """``star`` → ``stars``, ``box`` → ``boxes``, ``pair of dots`` → ``pairs of dots``."""
    if words[-1] == "dots":
        return ["pairs", *words[1:]] if words[0] == "pair" else ["two", "pairs", "of", "dots"]
    return [*words[:-1], words[-1] + ("es" if words[-1][-1] in "sx" else "s")]


@dataclass(frozen=True)
class PromptParse:
    """What a prompt names: ``shape`` (class id) and ``colour`` (coarse hue) of its one object,
    None with the reason (a key of ``REASONS``) for an attribute not scored; ``*_end``: where
    the attribute's word ends in ``_plain(prompt)`` (-1: not named)."""

    shape: int | None
    colour: str | None
    why_shape: str | None
    why_colour: str | None
    shape_end: int = -1
    colour_end: int = -1


def prompt_attributes(prompt: str) -> tuple[int | None, str | None]:
    """(shape class id, coarse object colour) named by a prompt; None for what it does not name
    or names ambiguously (``parse_prompt`` says why)."""
    got = parse_prompt(prompt)
    return got.shape, got.colour


def _plain(text: str) -> str:
    """``text`` lower-cased, accents dropped, letters and digits only: how a prompt and the
    text its tokenizer kept (``two-tone`` → ``two - tone``) are compared."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


def _shape_mentions(words: list[str]) -> list[tuple[int, int, int]]:
    """(class id or -1 for a plural, first word, word after) of each shape noun, left to right;
    at each word the longest noun wins ("five-pointed star", not "star")."""
    patterns, out, i = _shape_patterns(), [], 0
    while i < len(words):
        hit = next((p for p in patterns if words[i : i + len(p[1])] == p[1]), None)
        if hit is None:
            i += 1
            continue
        out.append((hit[0], i, i + len(hit[1])))
        i += len(hit[1])
    return out


def _object_colours(words: list[str], start: int, stop: int) -> tuple[int | None, str | None]:
    """(index of the hue word of the object's colour, or None and why it is not read) for the
    noun at ``words[start:stop]``: a hue in the run of modifiers right before the noun ("a
    small dark blue star"), or "in <colour>" right after it ("a circle in dark blue,"). Two
    colours are read only in the built-in two-colour form "a striped red and blue star" (the
    first is the object's); any other colour word must reach a noun of its own ("on a blue
    background", "with a blue outline"), else it could be the object's too."""
    k = start
    while k > 0 and words[k - 1] in _MODIFIERS:
        k -= 1
    mine = [j for j in range(k, start) if words[j] in _COLOURS]
    after = words[stop : stop + 4]  # "in", a tone?, a hue, then the end, a mark or a preposition
    tone = 2 if after[1:2] and after[1] in _TONES else 1
    if after[:1] == ["in"] and after[tone : tone + 1] and after[tone] in _COLOURS:
        if after[tone + 1 :][:1] in ([], *([w] for w in _AFTER_IN_COLOUR)):
            mine.append(stop + tone)
    stray = [j for j, w in enumerate(words) if w in _COLOURS and j not in mine]
    if not mine:
        return None, "colour_not_on_object" if stray else "no_colour"
    if any(_dangles(words, j) for j in stray):
        return None, "several_colours"
    if len(mine) == 2 and mine[1] < start:  # "striped light pink and yellow": pink
        first, second = (j - (words[j - 1] in _TONES) for j in mine)
        if words[mine[0] + 1 : second] == ["and"] and words[first - 1] in _FILL_WORDS:
            mine = mine[:1]
    if len(mine) > 1:
        return None, "several_colours"
    return (mine[0], None) if words[mine[0]] in HUES else (None, "other_colour")


def _dangles(words: list[str], at: int) -> bool:
    """Whether the colour at ``words[at]`` reaches no noun: its run of modifiers ends the
    prompt, a clause (a mark) or meets an article ("a red and a blue star")."""
    j = at
    while j < len(words) and words[j] in _MODIFIERS:
        j += 1
    return j == len(words) or words[j] in _DANGLING or not words[j][0].isalnum()


def parse_prompt(prompt: str) -> PromptParse:
    """The shape and object colour a prompt names (see the module docstring), or why not."""
    low = prompt.lower()
    found = [(_colour_word(m.group()), len(_plain(low[: m.end()]))) for m in _TOKEN.finditer(low)]
    words, ends = [w for w, _ in found], [e for _, e in found]
    mentions = _shape_mentions(words)
    why = "negation" if _NEGATION.search(low.replace("\u2019", "'")) else None
    if why is None and (len(mentions) > 1 or any(m[0] < 0 for m in mentions)):
        why = "several_shapes"
    if why is None and not mentions:
        why = "no_shape"
    if why is not None:
        return PromptParse(None, None, why, why)
    label, start, stop = mentions[0]
    hue, no_colour = _object_colours(words, start, stop)
    if hue is None:
        return PromptParse(label, None, None, no_colour, ends[stop - 1])
    return PromptParse(label, words[hue], None, None, ends[stop - 1], ends[hue])


def judged_attributes(prompt: str, as_encoded: str | None) -> PromptParse:
    """``parse_prompt`` of the text an encoder kept: ``as_encoded`` is the text a prompt cut at
    the encoder's ``max_length`` was encoded as (``prompt_truncation.as_encoded``), None for a
    prompt that was not cut. The whole prompt is parsed (what it is about is read from all its
    words); an attribute whose words fall past the cut is then left out (``truncated``). When
    that text is not the start of the prompt (tokens the encoder did not know), nothing the
    prompt names is known to have been seen: both are left out."""
    got = parse_prompt(prompt)
    if as_encoded is None:
        return got
    seen = _plain(as_encoded)
    kept = len(seen) if _plain(prompt).startswith(seen) else 0
    shape, why_shape, colour, why_colour = got.shape, got.why_shape, got.colour, got.why_colour
    if shape is not None and got.shape_end > kept:
        shape, why_shape = None, "truncated"
    if colour is not None and got.colour_end > kept:
        colour, why_colour = None, "truncated"
    return PromptParse(shape, colour, why_shape, why_colour, got.shape_end, got.colour_end)


def encoded_attributes(
    prompt: str, as_encoded: str | None
) -> tuple[tuple[int | None, str | None], list[str]]:
    """((shape id, coarse colour) that ``prompt`` names within the text its encoder kept, the
    attributes left out because their words were cut): ``judged_attributes``."""
    got = judged_attributes(prompt, as_encoded)
    left = [
        a for a, w in (("shape", got.why_shape), ("colour", got.why_colour)) if w == "truncated"
    ]
    return (got.shape, got.colour), left


# --------------------------------------------------------------------------- classifiers


class AttributeNet(nn.Module):
    """A small CNN with a shape head (10) and an object-colour head (len(HUES))."""

    def __init__(self, classes: int = 10, colours: int = len(HUES)) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 96, 3, 1, 1), nn.BatchNorm2d(96), nn.GELU(),
        )  # fmt: skip
        self.shape = nn.Linear(192, classes)
        self.colour = nn.Linear(192, colours)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(images.float() / 127.5 - 1.0)  # (B, 96, H/4, W/4) from uint8 values
        h = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)  # (B, 192) avg + max
        return self.shape(h), self.colour(h)  # (B, 10), (B, len(HUES))


def _batches(images: np.ndarray, size: int):
    for s in range(0, len(images), size):
        yield torch.from_numpy(images[s : s + size]).permute(0, 3, 1, 2)  # (B, 3, H, W)


@torch.no_grad()
def predict(net: AttributeNet, images: np.ndarray, device: torch.device) -> tuple:
    """Predicted (shape ids, colour ids) of uint8 (N, H, W, 3) images."""
    net.eval()
    shapes, colours = [], []
    for x in _batches(images, 256):
        s, c = net(x.to(device))
        shapes.append(s.argmax(1).cpu())
        colours.append(c.argmax(1).cpu())
    return torch.cat(shapes).numpy(), torch.cat(colours).numpy()


#: the progress task of the attribute classifiers' training (what the bar and the log lines name)
CLASSIFIER_TASK = "adherence classifier"
#: the steps between two readings of the classifier loss shown beside the progress bar
LOSS_EVERY = 25


def train_classifier(
    images: np.ndarray,
    shapes: np.ndarray,
    colours: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
    progress: ProgressFactory = null_progress,
) -> tuple[AttributeNet, dict[str, float]]:
    """Train on 90 % of the real images (random flips); accuracy on the held-out 10 %, with how
    many images each side had (``train_images``, ``held_out``: a figure on 6 images is no
    ceiling to read to the percent).

    The steps advance ``progress`` (one task of ``steps`` steps, the loss beside it): the 400
    default steps take minutes on a CPU, which `evaluate adherence` spent without a word."""
    g = np.random.default_rng(seed)
    order = g.permutation(len(images))
    cut = max(1, len(images) // 10)
    held, train = order[:cut], order[cut:]
    torch.manual_seed(seed)
    net = AttributeNet().to(device)
    opt = EagerAdamW(net.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    with progress(CLASSIFIER_TASK, total=steps, unit="step") as bar:
        for step in range(steps):
            idx = g.choice(train, size=min(64, len(train)), replace=False)
            x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W)
            if g.random() < 0.5:
                x = x.flip(-1)
            s, c = net(x)
            loss = loss_fn(s, torch.from_numpy(shapes[idx]).to(device)) + loss_fn(
                c, torch.from_numpy(colours[idx]).to(device)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            # the loss is read (a device sync) only every LOSS_EVERY steps and at the last one
            last = step + 1 == steps
            bar.advance(1, **({"loss": loss.item()} if last or step % LOSS_EVERY == 0 else {}))
    ps, pc = predict(net, images[held], device)
    return net, {
        "shape": float((ps == shapes[held]).mean()),
        "colour": float((pc == colours[held]).mean()),
        "held_out": int(len(held)),
        "train_images": int(len(train)),
    }


#: Classifiers trained in this process, by everything their training reads (a study scores
#: several folders against the same real images: each would train the same network again).
_TRAINED: dict[tuple, tuple[AttributeNet, dict[str, float]]] = {}


def trained_classifier(
    images: np.ndarray,
    shapes: np.ndarray,
    colours: np.ndarray,
    steps: int,
    seed: int,
    device: torch.device,
    progress: ProgressFactory = null_progress,
) -> tuple[AttributeNet, dict[str, float]]:
    """``train_classifier``, once per process for the same inputs: the key holds a sha256 of
    the images and labels, the steps, seed, device and thread count (which can change the
    rounding), so a reused network is the one this call would train. ``progress`` shows a
    training (a reused network trains nothing, so shows nothing); it is not part of the key."""
    import hashlib

    digest = hashlib.sha256()
    for a in (images, shapes, colours):
        digest.update(str((a.shape, a.dtype)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    key = (digest.hexdigest(), steps, seed, str(device), torch.get_num_threads())
    if key not in _TRAINED:
        _TRAINED[key] = train_classifier(images, shapes, colours, steps, seed, device, progress)
    return _TRAINED[key]


# --------------------------------------------------------------------------- the command


@dataclass
class AdherenceResult:
    """Scores of one samples folder."""

    path: Path
    scores: dict[str, Any]
    classifier: AttributeNet | None = None  # the trained attribute classifiers (not saved)


def real_attributes(cache: str, entry: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3), shape ids and coarse colour ids of a built-in cache entry."""
    from repackctl.cache.store import DatasetEntry
    from repackctl.data.builtin import BuiltinSource

    ds = DatasetEntry.open(cache, entry)
    if (ds.attrs.get("source") or {}).get("dataset") != "builtin":
        raise DataError(
            f"prompt adherence needs the built-in dataset's attributes; {entry} is another source",
            "score built-in runs only (other data has no ground-truth attributes)",
        )
    ok = ds.valid_indices()
    keys = [str(k) for k in ds.keys[:]]
    shapes, colours = [], []
    for i in ok:
        _, seed, split, index = keys[i].split(":")
        scene = BuiltinSource(split=split, num=int(index) + 1, seed=int(seed)).scene(int(index))
        shapes.append(scene["label"])
        colours.append(HUES.index(coarse_colour(colour_name(scene["obj_a"]))))
    # a guarded read: a lost chunk holding a written row is an Error, never black images
    # trained on (or scored) under their scene's labels
    from repackctl.cache.integrity import GuardedArray, repair_hint

    written = np.zeros(ds.n, bool)
    written[ok] = True
    redo = repair_hint(entry, "the same `repackctl extract`")
    images = np.asarray(GuardedArray(ds.images, written, f"{entry} images", redo)[:])[ok]
    return images, np.array(shapes, np.int64), np.array(colours, np.int64)


def _protocol_of(folder: Path) -> dict[str, Any]:
    """The folder's card, refused when it is missing or damaged (with the repair that writes
    it again: ``card_repair_hint``), or not the card of the folder's settings file (its
    prompts, cfg_scale … edited: ``check_card_is_the_folders``; the prompts are what the
    samples are scored against, the card's ``prompts`` against the settings file's
    ``prompts_sha256``), or not of a text-to-image folder."""
    from repackctl.sample.folder import card_repair_hint, check_card_is_the_folders

    path = folder / PROTOCOL_JSON
    if not path.is_file():
        written = (folder / SETTINGS_JSON).is_file()  # by `repackctl sample`: it can rewrite it
        hint = (
            card_repair_hint(folder) if written else "pass a folder written by `repackctl sample`"
        )
        raise DataError(f"{folder} has no {PROTOCOL_JSON}", hint)
    card = read_json_object(path, card_repair_hint(folder))
    check_card_is_the_folders(folder)
    if card.get("stage") != "t2i" or "prompts" not in card:
        raise DataError(
            f"{folder} was not sampled from a text-to-image run (no prompts in its protocol)",
            "sample a `train t2i` run first: `repackctl sample -r RUN --prompt ...`",
        )
    return card


def samples_sha256(folder: Path, n: int) -> str:
    """``adherence.json``'s ``samples_sha256``: over the N PNGs of a samples folder (the path
    and sha256 of each, ``evaluate.generative.folder_sha256``)."""
    from repackctl.evaluate.generative import folder_sha256
    from repackctl.sample.folder import png_path

    return folder_sha256([png_path(folder, i) for i in range(n)], folder)


def _hashes(folder: Path, n: int, card: dict[str, Any]) -> dict[str, Any]:
    """``samples_sha256`` (over the N PNGs scored, ``evaluate.generative.folder_sha256``),
    ``checkpoint_sha256`` (from the samples' protocol card) and ``protocol_sha256``."""
    from repackctl.files import sha256_file

    return {
        "samples_sha256": samples_sha256(folder, n),
        "samples_sha256_of": f"000000.png … {n - 1:06d}.png (path and sha256 of each)",
        "checkpoint_sha256": card.get("checkpoint_sha256"),
        "protocol_sha256": sha256_file(folder / PROTOCOL_JSON),
    }


def training_extra(card: dict[str, Any]) -> dict[str, Any]:
    """The run's training entry and latent stats (``cache``, ``latent_stats``, what
    ``training_cache_root`` checks): from the card (``training_entry``), else, for folders
    sampled before cards recorded it, from the checkpoint the samples were made from."""
    from repackctl.errors import CheckpointError
    from repackctl.train import checkpoint as ckpt_io

    recorded = card.get("training_entry")
    if isinstance(recorded, dict) and (recorded.get("cache") or {}).get("entry"):
        return recorded
    ckpt = Path(card["checkpoint"])
    try:
        return ckpt_io.read_state(ckpt).get("extra", {})
    except CheckpointError as e:
        run = card.get("dit_run") or ckpt.parent.parent.name
        raise CheckpointError(
            f"the checkpoint these samples were made from, {ckpt}, is gone or unreadable "
            f"({e.message}), and their {PROTOCOL_JSON} (written before cards recorded the run's "
            "training entry) does not say which cache entry the run was trained on",
            f"sample run {run} again from a checkpoint it still has (`repackctl sample -r {run} "
            "--prompt …`; its card records the entry), then evaluate that folder",
        ) from None


def verified_samples(folder: Path, n: int, card: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """(the N sample images (N, H, W, 3) uint8, whether they were checked): the PNGs, whose
    pixels must give the digest `sample` recorded (``files.samples.npz.images_sha256``,
    :func:`repackctl.sample.folder.verify_recorded_pngs`); cards written before they recorded
    their files are read as they are (False)."""
    from repackctl.sample.folder import iter_pngs, verify_recorded_pngs

    verified = verify_recorded_pngs(folder, n, card)  # an undecodable PNG is an Error too
    return np.concatenate(list(iter_pngs(folder, n))), verified  # (N, H, W, 3)


def wanted_attributes(card: dict[str, Any]) -> tuple[list[tuple], dict[str, Any], dict[str, Any]]:
    """(the (shape id, colour) each sample's prompt names in the text its encoder kept, a
    record of the prompts cut at the text encoder's ``max_length`` (``truncation``), a record
    of every attribute not scored and why (``unscored``)). Attributes whose words a cut prompt
    lost are not scored (the model never saw them), nor those ``parse_prompt`` cannot read."""
    prompts, ids = card["prompts"], card["prompt_ids"]
    uses = [int(n) for n in np.bincount(np.asarray(ids, np.int64), minlength=len(prompts))]
    cut = card.get("prompt_truncation") or {}
    as_encoded = cut.get("as_encoded")
    known = isinstance(as_encoded, list) and len(as_encoded) == len(prompts)
    as_encoded = as_encoded if known else [None] * len(prompts)
    judged = [judged_attributes(p, e) for p, e in zip(prompts, as_encoded, strict=True)]
    wanted = [(judged[k].shape, judged[k].colour) for k in ids]
    unscored = _unscored(prompts, judged, uses)
    if not known:
        note = {"known": False, "prompts": len(prompts), "prompts_cut": []}
        note["left_out"] = {"shape": 0, "colour": 0}
        return wanted, note, unscored
    prompts_cut = []
    for k, text in enumerate(as_encoded):
        if text is not None:
            left = [a for a in ("shape", "colour") if getattr(judged[k], f"why_{a}") == "truncated"]
            prompts_cut.append(
                {"prompt_id": k, "as_encoded": text, "left_out": left, "samples": uses[k]}
            )
    left = {
        a: sum(c["samples"] for c in prompts_cut if a in c["left_out"]) for a in ("shape", "colour")
    }
    why = (
        f"cut at the text encoder's max_length {cut.get('max_length')} tokens: an attribute "
        "whose words fall past the cut is not scored (the model never saw them)"
    )
    note = {"known": True, "prompts": len(prompts), "prompts_cut": prompts_cut, "left_out": left}
    note["why"] = why
    return wanted, note, unscored


def _unscored(prompts: list[str], judged: list[PromptParse], uses: list[int]) -> dict[str, Any]:
    """``adherence.json``'s ``unscored``: per attribute, the samples not scored by reason (a key
    of ``REASONS``); the prompts with an attribute not scored; the reasons in words."""
    counts: dict[str, dict[str, int]] = {"shape": {}, "colour": {}}
    rows = []
    for k, (prompt, got) in enumerate(zip(prompts, judged, strict=True)):
        if (got.why_shape is None and got.why_colour is None) or not uses[k]:
            continue
        for attribute, why in (("shape", got.why_shape), ("colour", got.why_colour)):
            if why is not None:
                counts[attribute][why] = counts[attribute].get(why, 0) + uses[k]
        row = {"prompt_id": k, "prompt": prompt, "samples": uses[k]}
        rows.append(row | {"shape": got.why_shape, "colour": got.why_colour})
    order = list(REASONS)
    out: dict[str, Any] = {
        a: dict(sorted(c.items(), key=lambda i: order.index(i[0]))) for a, c in counts.items()
    }
    out["prompts"] = rows
    out["reasons"] = {why: f"prompts that {text}" for why, text in REASONS.items()}
    return out


def _warn(folder: Path, note: dict[str, Any]) -> None:
    """``Warning:`` lines on stderr for attributes left out, or cuts the card does not record."""
    if not note["known"]:
        warn(
            f"{folder / PROTOCOL_JSON} does not record the text each prompt was encoded "
            "as (prompt_truncation): a prompt cut at the text encoder's max_length is scored on "
            "its full text; adherence.json says so (truncation.known: false)"
        )
        return
    left = note["left_out"]
    if left["shape"] or left["colour"]:
        warn(
            f"{len(note['prompts_cut'])} of {note['prompts']} prompts were cut at the "
            "text encoder's max_length; what the model never saw is not scored: the shape of "
            f"{left['shape']} samples, the colour of {left['colour']} (adherence.json: "
            "truncation.prompts_cut)"
        )


def check_adherence_replaceable(path: Path, classifier: dict[str, Any]) -> None:
    """Refuse replacing an ``adherence.json`` whose classifiers were trained with other
    settings (``classifier``: the ``steps``, ``seed``, ``trained_on`` and
    ``trained_on_sha256`` of this run): its scores are another result, not this one
    recomputed. The training entry is compared by the content hash of its images where both
    record one (an entry removed and extracted again under the same name holds other images),
    by name in files written before it was recorded. A file that cannot be read, or that does
    not record the settings, is replaced."""
    old = read_json_dict(path)
    if old is None:
        return
    was = old.get("classifier")
    if not isinstance(was, dict) or not all(k in was for k in CLASSIFIER_SETTINGS):
        return
    names = {"steps": "--steps", "seed": "--seed", "trained_on": "training entry"}
    diffs = [
        f"{names[k]} {was[k]!r} (this run: {classifier[k]!r})"
        for k in CLASSIFIER_SETTINGS
        if was[k] != classifier[k]
    ]
    if not diffs and not _same_images(was, classifier):
        diffs.append(
            f"training entry {was['trained_on']} held other images (content sha256 "
            f"{str(was[CONTENT_KEY])[:12]}…; this run: {str(classifier[CONTENT_KEY])[:12]}…: "
            "removed and extracted again?)"
        )
    if diffs:
        flags = f"--steps {was['steps']} --seed {was['seed']}"
        raise ConfigError(
            f"{path} holds scores whose classifiers were trained with other settings: "
            f"{'; '.join(diffs)}; it was left untouched and nothing was scored",
            f"pass {flags} (the same result recomputed replaces it), or move {path.name} away "
            "first to keep both",
        )


#: the classifier settings every ``adherence.json`` records (compared as they are)
CLASSIFIER_SETTINGS = ("steps", "seed", "trained_on")
#: the ``classifier`` field holding the content hash of the training entry's images
CONTENT_KEY = "trained_on_sha256"


def _same_images(was: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two classifier records were trained on the same images: by their content hash
    where both record one (files written before it was recorded: True, the name decides)."""
    a, b = was.get(CONTENT_KEY), now.get(CONTENT_KEY)
    return not (a and b) or a == b


def _same_classifier(was: Any, now: dict[str, Any]) -> bool:
    """Whether a stored classifier record has this run's settings and training images."""
    if not isinstance(was, dict) or any(was.get(k) != now[k] for k in CLASSIFIER_SETTINGS):
        return False
    return _same_images(was, now)


def training_images_sha256(root: str, entry: str) -> str:
    """The content hash of the images the classifiers train on (every written image of the
    entry: ``evaluate.generative.cache_images_sha256``, from the chunk checksums the cache
    stores, without reading the pixels)."""
    from repackctl.evaluate.generative import cache_image_set

    return cache_image_set(root, entry, None).hasher()


def guidance_note(scale: Any, lo: Any, hi: Any) -> tuple[str, str | None]:
    """(the kind of guidance the samples had, what it means for their adherence figures, None
    for classifier-free guidance at a scale other than 0 and 1)."""
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        why = f"the samples' {PROTOCOL_JSON} does not record their guidance scale (cfg_scale)"
        return "not recorded", f"{why}: compare these figures with other folders' with care"
    if scale == 1:
        return "none", (
            "sampled without guidance (--cfg 1: the prompt-conditional model alone): these "
            "figures are comparable only with folders sampled at the same guidance"
        )
    if scale == 0:
        when = "on every step" if (lo, hi) == (0, 1) else f"on the steps with t in [{lo}, {hi}]"
        return "unconditional", (
            f"sampled at --cfg 0 (unconditional): the model saw the empty caption, not the "
            f"prompt, {when}; these figures are not comparable with guided folders"
        )
    return "classifier-free", None


def guidance_record(card: dict[str, Any]) -> dict[str, Any]:
    """``adherence.json``'s ``guidance``: the samples' CFG scale and interval (from their card),
    its ``kind`` and ``note`` (:func:`guidance_note`). Adherence rises with the guidance scale,
    so figures of folders sampled at other scales are not comparable; at scale 1 the model was
    not guided, and at scale 0 it saw the empty caption, not the prompt (unconditional)."""
    scale, interval = card.get("cfg_scale"), card.get("cfg_interval")
    lo, hi = interval if isinstance(interval, list) and len(interval) == 2 else (None, None)
    kind, note = guidance_note(scale, lo, hi)
    return {"cfg_scale": scale, "cfg_interval": interval, "kind": kind, "note": note}


def _kept_from_before(path: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """The scores of the ``adherence.json`` this run replaces that it does not compute itself
    and that score the same classifiers, not the samples: its ``classifier_*`` fields (e.g.
    the demo's ``classifier_real_val_accuracy`` and ``classifier_recon_val_accuracy``), when it
    records the same classifier settings (steps, seed, training entry and, where both record
    it, the content hash of its images: :func:`_same_classifier`). They are kept (listed
    in ``kept_from_before``): what `evaluate adherence` did not make is not its to drop."""
    old = read_json_dict(path) or {}
    if not _same_classifier(old.get("classifier"), scores["classifier"]):
        return {}
    kept = {k: v for k, v in old.items() if k.startswith("classifier_") and k not in scores}
    if not kept:
        return {}
    why = (
        "kept from the adherence.json this file replaced: they score the same classifiers "
        "(steps, seed, training entry), not the samples"
    )
    return kept | {"kept_from_before": {"fields": sorted(kept), "why": why}}


def _sample_scores(
    net: AttributeNet, samples: np.ndarray, wanted: list[tuple], device: torch.device
) -> dict[str, Any]:
    """The adherence figures of the samples: the fraction whose predicted shape / colour is
    the prompted one, over the samples whose prompt names it."""
    pred_shape, pred_colour = predict(net, samples, device)
    s_hit = [int(pred_shape[i] == s) for i, (s, _) in enumerate(wanted) if s is not None]
    c_hit = [int(HUES[pred_colour[i]] == c) for i, (_, c) in enumerate(wanted) if c is not None]
    return {
        "shape_accuracy": float(np.mean(s_hit)) if s_hit else None,
        "colour_accuracy": float(np.mean(c_hit)) if c_hit else None,
        "n_shape": len(s_hit),
        "n_colour": len(c_hit),
    }


def _classifier_source(
    card: dict[str, Any], cache: str | None, steps: int, seed: int
) -> tuple[str, dict[str, Any]]:
    """(the cache root holding the run's training entry, the ``classifier`` settings this run
    trains with: ``steps``, ``seed``, ``trained_on`` (the entry) and ``trained_on_sha256``
    (:func:`training_images_sha256`)), known before anything is trained."""
    from repackctl.dit.t2i_load import training_cache_root

    extra = training_extra(card)
    entry = (extra.get("cache") or {}).get("entry")
    root = training_cache_root(cache, extra, "score built-in runs whose cache is still there")
    content = training_images_sha256(root, entry)
    return root, {"steps": steps, "seed": seed, "trained_on": entry, CONTENT_KEY: content}


def run_adherence(
    folder: str | Path,
    cache: str | None,
    steps: int,
    seed: int,
    device: torch.device,
    real_val: str | None = None,
    keep_other: bool = False,
    progress: ProgressFactory = null_progress,
) -> AdherenceResult:
    """Score a t2i samples folder; write ``adherence.json`` beside it (atomically, with the
    sha256 of the samples scored and of the checkpoint that made them, and their guidance:
    :func:`guidance_record`).

    ``cache``: the resolved cache setting; the run's training entry is read there, else from
    the root the card (or the checkpoint) recorded (``dit.t2i_load.training_cache_root``: the
    same entry). The PNGs scored must be the ones `sample` recorded (``verified_samples``);
    prompts are scored on the text their encoder kept (``wanted_attributes``).

    ``real_val``: a built-in cache entry (e.g. the val split) whose real images the same
    classifiers are also scored on (``classifier_real_val_accuracy``), the level to read the
    sample scores against. ``keep_other``: refuse to replace an ``adherence.json`` of other
    classifier settings (:func:`check_adherence_replaceable`), and keep the scores of the same
    classifiers that it holds and this run does not compute (:func:`_kept_from_before`), as
    `evaluate adherence` does; the demo, which owns its folder, replaces it. ``progress``: the
    factory the classifiers' training (the one phase that takes minutes) reports to."""
    folder = Path(folder).expanduser().resolve()
    card = _protocol_of(folder)
    n = int(card["num_samples"])
    samples, verified = verified_samples(folder, n, card)  # before anything is trained
    wanted, truncation, unscored = wanted_attributes(card)
    root, classifier = _classifier_source(card, cache, steps, seed)
    entry = classifier["trained_on"]
    if keep_other:  # before anything is trained
        check_adherence_replaceable(folder / ADHERENCE_JSON, classifier)
    images, shapes, colours = real_attributes(root, entry)
    _warn(folder, truncation)
    net, real_acc = trained_classifier(images, shapes, colours, steps, seed, device, progress)
    hashes = _hashes(folder, n, card)  # of what is scored, before scoring it
    scores = {
        **_sample_scores(net, samples, wanted, device),
        "num_samples": n,
        "chance": {"shape": 1 / 10, "colour": 1 / len(HUES)},
        "classifier_real_accuracy": real_acc,
        "classifier": {
            **classifier,  # steps, seed, trained_on, trained_on_sha256
            "images": len(images),  # real images read: trained on train_images, scored on held_out
            "train_images": real_acc["train_images"],
            "held_out": real_acc["held_out"],
        },
        "colours": list(HUES),
        "guidance": guidance_record(card),  # the samples' CFG: scores depend on it
        "protocol": str(folder / PROTOCOL_JSON),
        "samples_verified": verified,  # the PNGs' pixels matched the card's images_sha256
        "truncation": truncation,
        "unscored": unscored,  # samples an attribute of which is not scored, and why
        **hashes,
        "cache": {"root": root, "entry": entry},
    }
    if real_val is not None:
        v_images, v_shapes, v_colours = real_attributes(root, real_val)
        ps, pc = predict(net, v_images, device)
        scores["classifier_real_val_accuracy"] = {
            "shape": float((ps == v_shapes).mean()),
            "colour": float((pc == v_colours).mean()),
            "entry": real_val,
            "images": int(len(v_images)),
        }
    if keep_other:
        scores |= _kept_from_before(folder / ADHERENCE_JSON, scores)
    write_json_atomic(folder / ADHERENCE_JSON, scores)
    return AdherenceResult(path=folder / ADHERENCE_JSON, scores=scores, classifier=net)
