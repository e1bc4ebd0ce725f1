"""`evaluate adherence` reads the attributes of the one object a prompt is about, or none.

- Every phrasing of the built-in captions (the caption generator, many seeds and both splits)
  parses to the scene's true shape and object colour; a background colour is never taken as
  the object's, wherever the built-in background phrase stands.
- A prompt that names more than one shape, uses a negation, or whose colour words are not on
  the object has that attribute left unscored (None) with a reason, never a guess.
- The command counts the samples left unscored, by reason (truncation included), in its table
  and in adherence.json (``unscored``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok, runner

from repackctl.cli.app import app
from repackctl.data.builtin import CLASS_NAMES, BuiltinSource
from repackctl.data.captions import SHAPE_NOUNS, colour_name, scene_captions
from repackctl.evaluate.adherence import coarse_colour, parse_prompt, prompt_attributes

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]
STAR, SQUARE, DISC = (CLASS_NAMES.index(n) for n in ("star", "square", "disc"))


def _scenes(seeds=range(6), num=200):
    for seed in seeds:
        for split in ("train", "val"):
            source = BuiltinSource(split=split, num=num, seed=seed)
            for i in range(num):
                scene = source.scene(i)
                yield scene, source.class_names[scene["label"]]


def test_every_builtin_phrasing_parses_to_the_true_shape_and_object_colour():
    phrasings = set()
    for scene, name in _scenes():
        want = coarse_colour(colour_name(scene["obj_a"]))
        for k, caption in enumerate(scene_captions(scene, name)):
            got = parse_prompt(caption)
            assert (got.shape, got.why_shape) == (scene["label"], None), caption
            if k == 2:  # "a star over a striped background, small, solid fill": no colour
                assert (got.colour, got.why_colour) == (None, "no_colour"), caption
            else:
                assert (got.colour, got.why_colour) == (want, None), caption
            phrasings.add((k, scene["fill_kind"] == "solid", bool(scene["outline"])))
    assert len(phrasings) == 5 * 2 * 2  # every phrasing, solid and two-colour fills, outlines


def test_the_builtin_background_colour_is_never_the_object_colour():
    differ = 0
    for scene, name in _scenes(seeds=range(3)):
        caps = scene_captions(scene, name)
        tail = caps[0].rsplit(", ", 1)[1]  # "on a mottled dark blue background"
        backdrop = caps[3].split(" with ")[0]  # "a mottled dark blue backdrop"
        noun, obj = SHAPE_NOUNS[name][0], colour_name(scene["obj_a"])
        a_noun = ("an " if noun[0] in "aeiou" else "a ") + noun
        want = coarse_colour(obj)
        differ += coarse_colour(colour_name(scene["bg_a"])) != want
        assert prompt_attributes(f"{backdrop} behind the {obj} {noun}") == (scene["label"], want)
        assert prompt_attributes(f"{tail} beside the {obj} {noun}") == (scene["label"], want)
        for prompt in (f"{backdrop} with {a_noun} in the center", f"{a_noun}, {tail}"):
            got = parse_prompt(prompt)
            assert (got.shape, got.colour) == (scene["label"], None), prompt
            assert got.why_colour == "colour_not_on_object", prompt
        assert prompt_attributes(tail) == (None, None)
    assert differ > 500  # the background's colour would have been a wrong answer


@pytest.mark.parametrize(
    ("prompt", "why_shape", "why_colour"),
    [
        ("a red star and a blue square", "several_shapes", "several_shapes"),
        ("a blue square and a red star", "several_shapes", "several_shapes"),
        ("a star in a red box", "several_shapes", "several_shapes"),
        ("a blue heart with a red cross on it", "several_shapes", "several_shapes"),
        ("two red stars", "several_shapes", "several_shapes"),
        ("a red star, not a square", "negation", "negation"),
        ("a star that is not a red disc", "negation", "negation"),
        ("a red star without an outline", "negation", "negation"),
        ("a star that isn't red", "negation", "negation"),
        ("no red star", "negation", "negation"),
        ("something on a red background", "no_shape", "no_shape"),
    ],
)
def test_a_prompt_about_several_objects_or_a_negation_is_not_scored(prompt, why_shape, why_colour):
    assert prompt_attributes(prompt) == (None, None)
    got = parse_prompt(prompt)
    assert (got.why_shape, got.why_colour) == (why_shape, why_colour)


@pytest.mark.parametrize(
    "prompt", ["a red and blue star", "a red and a blue star", "a red star in blue"]
)
def test_a_colour_that_may_not_be_the_objects_is_not_scored(prompt):
    assert prompt_attributes(prompt) == (STAR, None)
    assert parse_prompt(prompt).why_colour == "several_colours"


def test_the_colour_is_read_off_the_object_only():
    for prompt, shape, colour, why in [
        ("a blue background behind the red star", STAR, "red", None),
        ("a red star on a blue striped background", STAR, "red", None),
        ("a circle in dark blue", DISC, "blue", None),
        ("a small striped light pink and yellow box", SQUARE, "pink", None),
        ("a star with a blue outline", STAR, None, "colour_not_on_object"),
        ("the star is red", STAR, None, "colour_not_on_object"),
        ("a star", STAR, None, "no_colour"),
    ]:
        got = parse_prompt(prompt)
        assert (got.shape, got.colour, got.why_shape, got.why_colour) == (shape, colour, None, why)


# --------------------------------------------------------------------------- the command
# 8 MiniLM tokens keep "a small striped light pink and": the colour, not the shape noun
CUT_SHAPE = "a small striped light pink and yellow disc with an outline in the center"
PROMPTS = [CUT_SHAPE, "a star and a box", "a red background", "not a red star", "a red star"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    return shared_t2i_stack(tmp_path_factory, tmp_path_factory.mktemp("t2i-adherence") / "w")


def _table_rows(output: str) -> dict[str, str]:
    """``key → value`` of the Rich table in ``output``, the cells' wrapped lines joined."""
    rows: dict[str, str] = {}
    key = ""
    for line in output.splitlines():
        cells = line.split("│")
        if len(cells) == 4:
            key = cells[1].strip() or key
            rows[key] = " ".join(w for w in (rows.get(key, ""), cells[2].strip()) if w)
    return rows


def test_the_command_counts_unscored_samples_by_reason(stack, tmp_path, monkeypatch):
    use_stack(stack, tmp_path, monkeypatch)
    folder = tmp_path / "s"
    sample = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "10", *CPU]
    cli_ok(*sample, *(a for p in PROMPTS for a in ("--prompt", p)), "--out", str(folder))
    res = runner.invoke(app, ["evaluate", "adherence", str(folder), "--steps", "2", *CPU])
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.output)
    scores = json.loads((folder / "adherence.json").read_text())
    assert (scores["n_shape"], scores["n_colour"]) == (2, 4)  # 2 samples per prompt
    left = scores["unscored"]
    assert left["shape"] == {"truncated": 2, "several_shapes": 2, "no_shape": 2, "negation": 2}
    assert left["colour"] == {"several_shapes": 2, "no_shape": 2, "negation": 2}
    assert scores["truncation"]["left_out"] == {"shape": 2, "colour": 0}  # as before
    assert [p["prompt_id"] for p in left["prompts"]] == [0, 1, 2, 3]
    assert left["prompts"][1] == {
        "prompt_id": 1,
        "prompt": "a star and a box",
        "samples": 2,
        "shape": "several_shapes",
        "colour": "several_shapes",
    }
    why = "2 use a negation, 2 name several shapes, 2 name no shape"
    cut = "2 were cut at the text encoder's max_length"
    assert rows["shape"].endswith(f" of 2 (chance 10 %); 8 of 10 samples not scored: {why}, {cut}")
    assert rows["colour"].endswith(f" of 4; 6 of 10 samples not scored: {why}")
