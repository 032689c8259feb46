"""OpenCLIP text encoder on a tiny random-init text tower saved in open_clip's own checkpoint layout.

The paper's captions are ``ln_final`` states of all 77 tokens (zero padding, no projection). Here
the reference is that computation written out from the raw state dict (token_embedding +
positional_embedding -> pre-LN blocks with the causal mask -> ln_final). The open_clip package
itself cannot be imported beside CPU torch (it imports torchvision), so the tests against the
package run only where it imports / where its wheel's files are installed.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json

import pytest
import torch
from torch.nn import functional as F

from microdit.config.data import TextEncoderConfig
from microdit.data import openclip_encoder
from microdit.data.encoders import build_text_encoder
from microdit.errors import ConfigError

WIDTH, HEADS, LAYERS, EMBED_DIM, CONTEXT, VOCAB = 64, 2, 2, 32, 77, 49408
# A tiny BPE merges file in the format of open_clip's bpe_simple_vocab_16e6.txt.gz: ids 0-255 are
# the byte symbols, 256-511 the same + '</w>', then one id per merge (512 'r e' ...), then specials.
MERGES = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>"]
SOT, EOT = 512 + len(MERGES), 513 + len(MERGES)
A, RED, CIRCLE, BANG, BANG_END = 320, 513, 518, 0, 256  # 'a</w>', 'red</w>', 'circle</w>', '!', '!</w>'
TOL = 1e-5


def _text_cfg(**extra) -> dict:
    cfg = {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS, "layers": LAYERS}
    return {**cfg, **extra}


def _state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full open_clip CLIP state dict (text tower + projection + a stand-in vision key)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    sd = {"token_embedding.weight": rand(VOCAB, WIDTH, std=0.5), "positional_embedding": rand(CONTEXT, WIDTH)}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = (
                rand(WIDTH, std=0.1, mean=1.0),
                rand(WIDTH, std=0.1),
            )
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = rand(3 * WIDTH, WIDTH), rand(3 * WIDTH)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = rand(WIDTH, WIDTH), rand(WIDTH)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = rand(4 * WIDTH, WIDTH), rand(4 * WIDTH)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = rand(WIDTH, 4 * WIDTH), rand(WIDTH)
    sd["ln_final.weight"], sd["ln_final.bias"] = rand(WIDTH, std=0.1, mean=1.0), rand(WIDTH, std=0.1)
    sd["text_projection"] = rand(WIDTH, EMBED_DIM)  # present in the checkpoint, never applied
    sd["logit_scale"], sd["visual.proj"] = torch.tensor(4.6), rand(16, EMBED_DIM)
    return sd


def _save(directory, sd, text_cfg=None, weights="open_clip_pytorch_model.bin", quick_gelu=False):
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": EMBED_DIM, "quick_gelu": quick_gelu, "vision_cfg": {"width": 16}}
    model_cfg["text_cfg"] = text_cfg or _text_cfg()
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / weights))
    else:
        torch.save(sd, directory / weights)
    with gzip.open(directory / openclip_encoder.BPE_FILE, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *MERGES]))  # no trailing newline: no empty merge
    return directory


def _reference(sd: dict[str, torch.Tensor], ids: torch.Tensor, quick_gelu: bool = False) -> torch.Tensor:
    """open_clip ``encode_text`` up to ``ln_final``, written out: every position, no pooling/projection."""
    n, length = ids.shape
    head = WIDTH // HEADS
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = F.linear(h, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).split(WIDTH, dim=-1)
        q, k, v = (t.reshape(n, length, HEADS, head).transpose(1, 2) for t in qkv)
        attn = torch.softmax(q @ k.transpose(-1, -2) / head**0.5 + causal, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(n, length, WIDTH)
        x = x + F.linear(attn, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (WIDTH,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h) if quick_gelu else F.gelu(h)  # DFN5B's config: quick_gelu true
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return F.layer_norm(x, (WIDTH,), sd["ln_final.weight"], sd["ln_final.bias"])


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_encoder_gives_ln_final_states_of_all_77_tokens(tmp_path, quick_gelu):
    sd = _state_dict()
    model_dir = _save(tmp_path / "tiny_open_clip", sd, quick_gelu=quick_gelu)
    encoder = build_text_encoder(TextEncoderConfig(name=str(model_dir), kind="open_clip"))
    assert (encoder.kind, encoder.dim, encoder.max_length) == ("open_clip", WIDTH, CONTEXT)
    captions = ["a red circle", "A  RED circle!!", "", "red " * 100]
    ids, lengths = encoder.tokenize(captions)
    # open_clip tokenization: lower-cased BPE between start/end, truncated with end last, zero padding
    assert ids[0, :5].tolist() == [SOT, A, RED, CIRCLE, EOT] and ids[0, 5:].eq(0).all()
    assert ids[1, :7].tolist() == [SOT, A, RED, CIRCLE, BANG, BANG_END, EOT]  # '!' is id 0, like padding
    assert ids[2, :2].tolist() == [SOT, EOT] and ids[3, -1] == EOT and ids[3, 1:-1].eq(RED).all()
    assert lengths.tolist() == [5, 7, 2, CONTEXT]

    states, lengths2 = encoder.encode(captions)
    assert torch.equal(lengths2, lengths)
    assert states.shape == (4, CONTEXT, WIDTH) and states.dtype == torch.float32  # width 64, not embed_dim 32
    reference = _reference(sd, ids, quick_gelu)
    # fp32 rounding only (torch's fused attention vs the written-out one: measured <= 2.2e-6 on |x| <= 4);
    # bit-for-bit equality with open_clip's own modules is test_matches_the_open_clip_package
    assert torch.allclose(states, reference, rtol=0, atol=TOL), (states - reference).abs().max()
    pads = states[0, 5:]  # padding positions are kept: causal states of the pad tokens, all distinct
    assert pads.abs().sum(-1).gt(0).all() and not torch.allclose(pads[0], pads[1])
    alone, _ = encoder.encode(captions[:1])
    assert torch.allclose(alone[0], states[0], rtol=0, atol=TOL)  # per caption, independent of the batch


def test_open_clip_names_files_and_layouts(tmp_path, monkeypatch):
    sd = _state_dict(seed=1)
    # CustomTextCLIP layout ('text.' prefix) in safetensors, selected by kind=auto from the directory
    prefixed = {("text." + k if not k.startswith(("visual.", "logit")) else k): v for k, v in sd.items()}
    st_dir = _save(tmp_path / "st", prefixed, weights="open_clip_model.safetensors")
    encoder = build_text_encoder(TextEncoderConfig(name=str(st_dir)))
    ids, _ = encoder.tokenize(["a red circle"])
    assert encoder.kind == "open_clip"
    assert torch.allclose(encoder.encode(["a red circle"])[0], _reference(sd, ids), rtol=0, atol=TOL)

    # a checkpoint file beside its open_clip_config.json, with the official 'openclip:' prefix
    bin_dir = _save(tmp_path / "bin", sd, weights="epoch_32.pt")
    encoder = build_text_encoder(TextEncoderConfig(name=f"openclip:{bin_dir / 'epoch_32.pt'}"))
    assert encoder.kind == "open_clip" and encoder.dim == WIDTH

    # a hub id goes through the Hugging Face cache (served from tmp_path here: nothing is downloaded)
    asked = []

    def fake_hub(repo_id, filename):
        asked.append((repo_id, filename))
        if not (st_dir / filename).is_file():
            raise FileNotFoundError(filename)
        return str(st_dir / filename)

    monkeypatch.setattr(openclip_encoder, "_hub_download", fake_hub)
    monkeypatch.setattr(openclip_encoder, "bpe_path", lambda local: st_dir / openclip_encoder.BPE_FILE)
    hub = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-378"
    encoder = build_text_encoder(TextEncoderConfig(name=hub, max_length=20))
    assert encoder.kind == "open_clip" and encoder.encode(["a red circle"])[0].shape == (1, 20, WIDTH)
    assert asked[:2] == [(hub[7:], "open_clip_config.json"), (hub[7:], "open_clip_model.safetensors")]


def test_open_clip_config_errors(tmp_path):
    model_dir = _save(tmp_path / "m", _state_dict())
    with pytest.raises(ConfigError, match="max_length=78"):
        build_text_encoder(TextEncoderConfig(name=str(model_dir), max_length=78, kind="open_clip"))
    with pytest.raises(ConfigError, match="not an hf-hub"):
        build_text_encoder(TextEncoderConfig(name=str(tmp_path / "nothing"), kind="open_clip"))
    hf_tower = _save(tmp_path / "hf", _state_dict(), text_cfg=_text_cfg(hf_model_name="roberta-base"))
    with pytest.raises(ConfigError, match="hf_model_name"):
        build_text_encoder(TextEncoderConfig(name=str(hf_tower), kind="open_clip"))


def _open_clip_file(relative: str):
    try:
        path = importlib.metadata.distribution("open-clip-torch").locate_file(f"open_clip/{relative}")
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        pytest.skip("open-clip-torch files not installed (pip install --no-deps open-clip-torch)")
    return path


def test_tokenizer_matches_open_clip_simple_tokenizer(tmp_path):
    """open_clip's own tokenizer.py (no torchvision needed) against ours, on its real vocabulary."""
    source = _open_clip_file("tokenizer.py")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_under_test", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bpe = openclip_encoder.bpe_path(None)
    ours = openclip_encoder.ClipTokenizer(bpe, CONTEXT)
    captions = [
        "a red circle",
        "A  Photo of a CAT!!! &amp; dog",
        "",
        "naïve café “quotes” 123,456 #tag",
        "x " * 200,
    ]
    captions += ["日本語 with emoji 🎉", "<start_of_text> odd <end_of_text>", "don't we'll", "Ã©tÃ© mojibake"]
    assert torch.equal(ours(captions)[0], module.SimpleTokenizer(str(bpe))(captions, context_length=CONTEXT))


def test_matches_the_open_clip_package(tmp_path):
    """Exact equality with open_clip's own CLIP model, where open_clip (and so torchvision) imports."""
    try:
        import open_clip
    except Exception as err:  # ImportError, or torchvision's own failure beside CPU torch
        pytest.skip(f"open_clip does not import here: {type(err).__name__}: {err}")
    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    model_cfg = {"embed_dim": EMBED_DIM, "vision_cfg": vision}
    model_cfg["text_cfg"] = _text_cfg()
    model = open_clip.model.CLIP(**model_cfg).eval()
    model_dir = _save(tmp_path / "real", model.state_dict(), text_cfg=_text_cfg())
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    encoder = build_text_encoder(TextEncoderConfig(name=str(model_dir), kind="open_clip"))
    ids, _ = encoder.tokenize(["a red circle", "red red"])
    with torch.no_grad():  # the official forward_fxn (batch-first open_clip: no NLD <-> LND permute)
        x = model.token_embedding(ids) + model.positional_embedding
        expected = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    assert torch.equal(encoder.encode(["a red circle", "red red"])[0], expected)
