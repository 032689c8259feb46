"""Encoders with tiny random-init diffusers / transformers models saved to a temp dir (no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microdit.config.data import PrepareConfig, SourceConfig, TextEncoderConfig, VaeConfig
from microdit.data.encoders import build_image_encoder, build_text_encoder, packaged_minilm_path
from microdit.data.manifest import load_manifest
from microdit.data.prepare import prepare
from microdit.data.reader import read_set
from microdit.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A 2x-downsampling AutoencoderKL and tiny BERT / CLIP / T5 text towers sharing MiniLM's tokenizer."""
    from diffusers import AutoencoderKL
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5EncoderModel,
    )

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    vae.save_pretrained(root / "vae")
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    vocab = tokenizer.vocab_size
    models = {
        "bert": BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            )
        ),
        "clip": CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=64,
            )
        ),
        "t5": T5EncoderModel(
            T5Config(vocab_size=vocab, d_model=20, d_kv=10, d_ff=32, num_layers=1, num_heads=2)
        ),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def test_vae_latent_is_scaled_shifted_posterior_sample(tiny_models):
    from diffusers import AutoencoderKL

    encoder = build_image_encoder(VaeConfig(name=str(tiny_models / "vae")))
    assert (encoder.latent_channels, encoder.downsample) == (4, 2)
    assert encoder.describe()["scaling_factor"] == 0.5 and encoder.describe()[
        "shift_factor"
    ] == pytest.approx(0.1)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    latents = encoder.encode(images, torch.Generator().manual_seed(7))  # (3, 4, 8, 8)
    assert latents.shape == (3, 4, 8, 8)
    reference = AutoencoderKL.from_pretrained(tiny_models / "vae").eval()
    with torch.no_grad():
        sample = reference.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(7))
    assert torch.allclose(latents, (sample - 0.1) * 0.5, atol=1e-6)
    again = encoder.encode(images, torch.Generator().manual_seed(8))
    assert not torch.allclose(latents, again)  # a sample, not the posterior mean
    override = build_image_encoder(VaeConfig(name=str(tiny_models / "vae"), scaling_factor=2.0))
    assert override.describe()["scaling_factor"] == 2.0


@pytest.mark.parametrize(
    ("name", "kind", "dim"), [("bert", "auto_model", 24), ("clip", "clip", 16), ("t5", "t5", 20)]
)
def test_text_encoders_give_padded_per_token_states(tiny_models, name, kind, dim):
    encoder = build_text_encoder(TextEncoderConfig(name=str(tiny_models / name), max_length=12))
    assert encoder.kind == kind and encoder.dim == dim
    states, lengths = encoder.encode(
        ["a red circle", "a small cat face on a yellow background with many words"]
    )
    assert states.shape == (2, 12, dim) and states.dtype == torch.float32
    assert lengths.tolist()[0] == 5 and lengths.tolist()[1] == 12  # [CLS] a red circle [SEP]; truncated to L
    alone, _ = encoder.encode(["a red circle"])
    assert torch.allclose(alone[0], states[0], atol=1e-5)  # per-caption, independent of batch padding


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="vae.name"):
        build_image_encoder(VaeConfig(name=str(tmp_path / "nothing-here")))


def test_prepare_with_tiny_vae_and_t5_records_encoders(ray_local, tiny_models, tmp_path):
    config = PrepareConfig(
        source=SourceConfig(kind="demo_synthetic", tag="synthetic", demo_count=6),
        out=str(tmp_path / "set"),
        resolutions=(16, 32),
        rows_per_shard=4,
        vae=VaeConfig(name=str(tiny_models / "vae")),
        text_encoder=TextEncoderConfig(name=str(tiny_models / "t5"), max_length=10),
    )
    summary = prepare(config, progress=False)
    assert summary.rows_written == 6
    manifest = load_manifest(tmp_path / "set")
    assert manifest.vae["kind"] == "autoencoder_kl" and manifest.vae["scaling_factor"] == 0.5
    assert manifest.text_encoder["kind"] == "t5" and manifest.caption_dim == 20 and manifest.max_length == 10
    assert manifest.latent_shape(16) == (4, 8, 8) and manifest.latent_shape(32) == (4, 16, 16)
    data = read_set(tmp_path / "set", resolution=32)
    assert data["latents"].shape == (6, 4, 16, 16) and data["text_emb"].shape == (6, 10, 20)
    assert np.isfinite(data["latents"].astype(np.float32)).all()
