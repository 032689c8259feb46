"""CLIP score with a tiny random-init CLIPModel saved to a temp dir; absent when unconfigured.

The tokenizer is a real ``CLIPTokenizer`` built offline from a byte-level vocabulary with no
merges (every character is a token), so the directory has the same layout as a hub CLIP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from microdit.errors import ConfigError
from microdit.evaluate.clip_score import ClipScorer, clip_score, load_clip_scorer


def byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (256 symbols)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            symbols.append(256 + extra)
            extra += 1
    return [chr(s) for s in symbols]


def save_tiny_clip(folder, with_image_processor: bool) -> str:
    alphabet = byte_level_alphabet()
    vocab = {s: i for i, s in enumerate(alphabet + [s + "</w>" for s in alphabet])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=40,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if with_image_processor:
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            folder
        )
    return str(folder)


@pytest.fixture(scope="module")
def tiny_clip_dirs(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("clip")
    return save_tiny_clip(root / "full", True), save_tiny_clip(root / "bare", False)


def test_no_model_configured_means_no_score(emoji_set):
    images, captions = emoji_set[0][:2], emoji_set[1][:2]
    assert clip_score(images, captions, None) is None
    assert clip_score(images, captions, "") is None
    assert load_clip_scorer(None) is None


def test_score_is_100x_mean_cosine_of_clip_own_forward(tiny_clip_dirs, emoji_set):
    images, captions = emoji_set[0][:6], emoji_set[1][:6]
    score = clip_score(images, captions, tiny_clip_dirs[0])
    scorer = load_clip_scorer(tiny_clip_dirs[0])
    assert scorer.image_processor is not None

    # Independent route: CLIPModel's forward normalises the embeddings itself and returns
    # logits = exp(logit_scale) * cosine for every (image, text) pair.
    pixels = scorer.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = scorer.tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
        cosines = out.logits_per_image.diagonal() / scorer.model.logit_scale.exp()  # (6,)
    expected = 100 * float(cosines.mean())
    assert score == pytest.approx(expected, abs=1e-4)
    assert -100 <= score <= 100 and score != 0.0


def test_bare_directory_uses_clip_standard_preprocessing(tiny_clip_dirs, emoji_set):
    images, captions = emoji_set[0][:6], emoji_set[1][:6]
    full, bare = load_clip_scorer(tiny_clip_dirs[0]), load_clip_scorer(tiny_clip_dirs[1])
    assert bare.image_processor is None
    by_hand, by_processor = bare.preprocess(images), full.preprocess(images)
    assert by_hand.shape == by_processor.shape == (6, 3, 32, 32)
    # PIL bicubic (processor) vs torch antialiased bicubic (by hand): close, not bit-equal.
    assert float((by_hand - by_processor).abs().mean()) < 0.01  # measured 0.003
    bare_score, full_score = clip_score(images, captions, bare), clip_score(images, captions, full)
    assert bare_score == pytest.approx(full_score, abs=0.2)  # measured -24.23 vs -24.25


def test_clip_errors_name_the_field(tmp_path, tiny_clip_dirs, emoji_set):
    with pytest.raises(ConfigError, match="clip_model"):
        ClipScorer(str(tmp_path))  # an existing directory without a model
    with pytest.raises(ConfigError, match="one caption per image"):
        clip_score(emoji_set[0][:3], emoji_set[1][:2], tiny_clip_dirs[0])
    with pytest.raises(ConfigError, match="uint8"):
        clip_score(np.zeros((2, 8, 8, 3), np.float32), ["a", "b"], tiny_clip_dirs[0])
