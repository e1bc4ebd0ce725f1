"""`pack train --preset auto` (the default) on a GPU with features named by id: the encoder that
made them is in the cache, read after the settings, and `auto` took the built-in encoder's
`small` recipe for them (DINOv3 features trained with the CPU recipe, without a word). It now
asks for the encoder or a preset; on a CPU `auto` is `small` whatever the encoder, as before.
`--device cuda` stands in for a GPU: the preset is chosen from the device setting."""

from __future__ import annotations

from support.cli import cli_ok, cli_refused

FEATURES = ["pack", "train", "--features", "dinov3--final--256px--0123456789", "--show-config"]


def test_auto_on_a_gpu_with_named_features_asks_for_the_encoder() -> None:
    out = cli_refused(2, *FEATURES, "--device", "cuda")
    assert "--encoder" in out and "--preset paper" in out, out
    out = cli_ok(*FEATURES, "--device", "cuda", "--encoder", "dinov3")
    assert "preset = 'paper'" in out.replace("  ", " "), out
    out = cli_ok(*FEATURES, "--device", "cuda", "--preset", "small")
    assert "preset = 'small'" in out.replace("  ", " "), out


def test_auto_on_a_cpu_stays_small() -> None:
    out = cli_ok(*FEATURES, "--device", "cpu")
    assert "preset = 'small'" in out.replace("  ", " "), out
