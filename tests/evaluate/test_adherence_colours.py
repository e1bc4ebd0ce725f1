"""`evaluate adherence` reads every spelling of a colour the built-in data draws, and says why
it leaves out one it does not.

- "gray" is the built-in captions' "grey"; a hyphenated tone ("dark-blue", "light-gray") is its
  hue, as "dark blue" is: those prompts are scored, no longer listed as naming no colour.
- A colour word the built-in captions never use ("brown", "cyan") is left out with its own
  reason (``other_colour``), not "name no colour": on the object only; elsewhere it is a colour
  like any other ("a red star on a brown background": red; "a red and brown star": several).

Real components: the built-in caption generator's colour words, a toy t2i stack (extract →
pack → captions → train t2i) sampled and scored through the command line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.caches import shared_t2i_stack, use_stack
from support.cli import cli_ok

from repackctl.data.builtin import CLASS_NAMES
from repackctl.data.captions import colour_name
from repackctl.evaluate.adherence import coarse_colour, parse_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu"]
STAR, SQUARE, DISC = (CLASS_NAMES.index(n) for n in ("star", "square", "disc"))


@pytest.mark.parametrize(
    ("prompt", "shape", "colour"),
    [
        ("a gray star", STAR, "grey"),
        ("a Gray star on the left", STAR, "grey"),
        ("a dark gray star", STAR, "grey"),
        ("a light-gray star", STAR, "grey"),
        ("a dark-grey box", SQUARE, "grey"),
        ("a dark-blue star", STAR, "blue"),
        ("a small light-green circle", DISC, "green"),
        ("a circle in dark-blue, on the left", DISC, "blue"),
        ("a small striped light-pink and yellow box", SQUARE, "pink"),
        ("a dark-blue background behind the red star", STAR, "red"),
    ],
)
def test_gray_and_hyphenated_tones_are_read_as_the_builtin_colours(prompt, shape, colour):
    got = parse_prompt(prompt)
    assert (got.shape, got.colour, got.why_colour) == (shape, colour, None), got
    assert got.colour_end > 0  # where the colour's words end (a cut prompt loses it past there)


def test_every_builtin_colour_spelt_with_a_hyphen_or_gray_is_its_coarse_colour():
    rng = np.random.default_rng(0)
    names = {colour_name(rgb) for rgb in rng.random((4000, 3))}
    assert {"light grey", "dark grey", "dark blue", "light green"} <= names
    for name in names:
        want = coarse_colour(name)
        for spelt in {name.replace(" ", "-"), name.replace("grey", "gray")}:
            got = parse_prompt(f"a {spelt} star")
            assert (got.colour, got.why_colour) == (want, None), spelt


@pytest.mark.parametrize(
    ("prompt", "colour", "why"),
    [
        ("a brown star", None, "other_colour"),
        ("a dark-brown star", None, "other_colour"),
        ("a star in cyan", None, "other_colour"),
        ("a striped magenta and yellow star", None, "other_colour"),
        ("a red star on a brown background", "red", None),
        ("a red and brown star", None, "several_colours"),
        ("a star with a brown outline", None, "colour_not_on_object"),
        ("a star", None, "no_colour"),
    ],
)
def test_a_colour_the_builtin_data_never_names_is_left_out_with_its_reason(prompt, colour, why):
    got = parse_prompt(prompt)
    assert (got.shape, got.colour, got.why_colour) == (STAR, colour, why), got


def test_the_command_scores_gray_and_dark_blue_and_names_why_brown_is_not(
    tmp_path_factory, tmp_path, monkeypatch
):
    use_stack(shared_t2i_stack(tmp_path_factory, tmp_path / "stack"), tmp_path, monkeypatch)
    folder = tmp_path / "s"
    prompts = ["a gray star", "a dark-blue disc", "a brown star"]
    sample = ["sample", "-r", "tA", "--steps", "2", "--grid", "0", "-n", "6", *CPU]
    cli_ok(*sample, *(a for p in prompts for a in ("--prompt", p)), "--out", str(folder))
    out = cli_ok("evaluate", "adherence", str(folder), "--steps", "2", *CPU)
    scores = json.loads((folder / "adherence.json").read_text())
    assert (scores["n_shape"], scores["n_colour"]) == (6, 4)  # 2 samples per prompt
    left = scores["unscored"]
    assert left["colour"] == {"other_colour": 2} and left["shape"] == {}
    assert [(p["prompt"], p["colour"]) for p in left["prompts"]] == [
        ("a brown star", "other_colour")
    ]
    reason = "name a colour outside the built-in data's colour words"
    assert scores["unscored"]["reasons"]["other_colour"] == f"prompts that {reason}"
    table = " ".join(w for w in out.split() if w != "│")  # the table's wrapped cells joined
    assert f"2 of 6 samples not scored: 2 {reason}" in table, out
    assert "name no colour" not in table
