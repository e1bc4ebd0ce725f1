"""`evaluate fid --samples N` over a folder with fewer samples: its hint's `repackctl sample`
command samples the same prompts (a text-to-image folder made with `--prompts FILE` got a
command without the file, which samples the entry's captions instead)."""

from __future__ import annotations

from types import SimpleNamespace

from repackctl.evaluate.generative import _more_hint
from repackctl.sample.t2i import given_source

CKPT = "/r/runs/t2i/checkpoints/step-0000010"


def _hint(tmp_path, **given) -> str:
    cfg = SimpleNamespace(prompt=given.get("prompt", []), prompts=given.get("prompts"))
    protocol = {"checkpoint": CKPT, "prompt_source": given_source(cfg)}
    return _more_hint(5000, protocol, tmp_path)


def test_a_prompts_file_is_in_the_command(tmp_path):
    (tmp_path / "my prompts.txt").write_text("a red star\na blue ring\n")
    hint = _hint(tmp_path, prompts=str(tmp_path / "my prompts.txt"))
    quoted = f"'{tmp_path / 'my prompts.txt'}'"  # a path with a space, quoted for the shell
    assert f"--num 5000 --prompts {quoted}`" in hint, hint
    assert "--prompt values" not in hint, hint


def test_inline_prompts_are_named_beside_the_file(tmp_path):
    (tmp_path / "p.txt").write_text("a red star\n")
    hint = _hint(tmp_path, prompt=["a cat"], prompts=str(tmp_path / "p.txt"))
    assert f"--prompts {tmp_path / 'p.txt'}`" in hint, hint
    assert "sampler options and the --prompt values that" in hint, hint


def test_a_class_conditional_folder_gets_the_plain_command(tmp_path):
    hint = _more_hint(5000, {"checkpoint": CKPT}, tmp_path)
    assert "--num 5000` plus the sampler options that" in hint, hint
