"""MoMask-family modules: official state-dict compatibility, shapes, quantiser behaviour, guidance, training passes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safemotion.models import (
    LengthEstimator,
    LengthEstimatorConfig,
    MaskTransformer,
    ModelConfig,
    ResidualTransformer,
    RVQVAE,
    TransformerConfig,
    VQConfig,
)

TINY_VQ = VQConfig(dim_pose=12, nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3)
TINY_T = TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, dropout=0.1, text_dim=10,
                           num_tokens=16, code_dim=8, num_quantizers=3)


# ---------------------------------------------------------------------------------- official state dicts

@pytest.fixture(scope="module")
def spec(shared_dir: Path) -> dict:
    return json.loads((shared_dir / "reference" / "momask_state_dicts.json").read_text())


@pytest.fixture(scope="module")
def official_modules() -> dict[str, torch.nn.Module]:
    config = ModelConfig()
    return {
        "rvq_vae": RVQVAE(config.vq),
        "mask_transformer": MaskTransformer(config.mask_transformer),
        "residual_transformer": ResidualTransformer(config.residual_transformer),
        "length_estimator": LengthEstimator(config.length_estimator),
    }


@pytest.mark.parametrize("name", ["rvq_vae", "mask_transformer", "residual_transformer", "length_estimator"])
def test_official_state_dict_loads_strict(name: str, spec: dict, official_modules: dict) -> None:
    module = official_modules[name]
    expected = spec[name]["params"]
    ours = {key: list(value.shape) for key, value in module.state_dict().items()}
    assert ours == expected
    assert {key for key, _ in module.named_buffers()} == set(spec[name]["buffers"])
    trainable = sum(math.prod(shape) for key, shape in expected.items() if key not in spec[name]["buffers"])
    assert sum(p.numel() for p in module.parameters()) == trainable

    generator = torch.Generator().manual_seed(0)
    random_state = {key: torch.randn(shape, generator=generator) for key, shape in expected.items()}
    result = module.load_state_dict(random_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in module.state_dict().items():
        assert torch.equal(value, random_state[key]), key


def test_official_parameter_totals(official_modules: dict) -> None:
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in official_modules.items()}
    assert counts == {"rvq_vae": 19_436_807, "mask_transformer": 12_048_768,
                      "residual_transformer": 13_364_224, "length_estimator": 435_122}


def test_official_sizes_run(official_modules: dict) -> None:
    vq, mask, res, length = (official_modules[k] for k in
                             ("rvq_vae", "mask_transformer", "residual_transformer", "length_estimator"))
    for module in official_modules.values():
        module.eval()
    with torch.no_grad():
        for layer in vq.quantizer.layers:
            layer.codebook.normal_()
        ids, codes = vq.encode(torch.randn(1, 16, 263))
        assert ids.shape == (1, 4, 6) and codes.shape == (6, 1, 512, 4)
        assert vq.forward_decoder(ids).shape == (1, 16, 263)
        cond = torch.randn(1, 512)
        pad = torch.zeros(1, 4, dtype=torch.bool)
        assert mask.forward_with_cond_scale(ids[..., 0], cond, pad, cond_scale=4).shape == (1, 512, 4)
        history = res.embed_tokens(0, ids[..., 0])
        assert res.forward_with_cond_scale(history, 1, cond, pad, cond_scale=5).shape == (1, 513, 4)
        assert length(cond).shape == (1, 50)


# ---------------------------------------------------------------------------------- RVQ-VAE

def _distinct_codebooks(vq: RVQVAE) -> None:
    """Codebooks whose scales shrink 10× per layer, so greedy residual quantisation of a code sum is exact."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, layer in enumerate(vq.quantizer.layers):
            layer.codebook.copy_(torch.randn(layer.codebook.shape, generator=generator) * 10.0**-k)


def test_rvq_shapes_and_receptive_layout() -> None:
    vq = RVQVAE(TINY_VQ).eval()
    ids, codes = vq.encode(torch.randn(2, 24, 12))
    assert ids.shape == (2, 6, 3) and ids.dtype == torch.long
    assert codes.shape == (3, 2, 8, 6)
    assert vq.forward_decoder(ids).shape == (2, 24, 12)
    dilations = [block.conv1.dilation[0] for block in vq.encoder.model[2][1].model]
    assert dilations == [3, 1]
    assert [block.conv1.dilation[0] for block in vq.decoder.model[2][0].model] == [3, 1]


def test_quantizer_round_trip() -> None:
    vq = RVQVAE(TINY_VQ).eval()
    _distinct_codebooks(vq)
    ids = torch.randint(0, 16, (2, 5, 3))
    latent = vq.quantizer.get_codes_from_indices(ids).sum(0).permute(0, 2, 1)  # (B, C, n)
    found, codes = vq.quantizer.quantize(latent)
    assert torch.equal(found, ids)
    assert torch.allclose(codes.sum(0), latent, atol=1e-6)
    decoded = vq.forward_decoder(ids)
    assert torch.allclose(decoded, vq.decoder(latent).permute(0, 2, 1), atol=1e-6)


def test_encoding_fewer_layers_gives_the_first_layers_of_a_full_encode() -> None:
    vq = RVQVAE(TINY_VQ).eval()
    motion = torch.randn(2, 24, 12)
    ids, codes = vq.encode(motion)
    for num_layers in (1, 2):
        some_ids, some_codes = vq.encode(motion, num_layers)
        assert some_ids.shape == (2, 6, num_layers) and torch.equal(some_ids, ids[..., :num_layers])
        assert torch.equal(some_codes, codes[:num_layers])


def test_skip_code_and_coarse_decode_are_zero_codes() -> None:
    vq = RVQVAE(TINY_VQ).eval()
    _distinct_codebooks(vq)
    ids = torch.randint(0, 16, (1, 4, 3))
    codes = vq.quantizer.get_codes_from_indices(ids)
    two_layers = codes[:2].sum(0).permute(0, 2, 1)
    expected = vq.decoder(two_layers).permute(0, 2, 1)
    skipped = ids.clone()
    skipped[..., 2] = -1
    assert torch.allclose(vq.forward_decoder(skipped), expected, atol=1e-6)
    assert torch.allclose(vq.forward_decoder(ids[..., :2]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="4 code layers"):
        vq.forward_decoder(torch.zeros(1, 4, 4, dtype=torch.long))


def test_rvq_training_pass_initialises_updates_and_backpropagates() -> None:
    torch.manual_seed(0)
    vq = RVQVAE(replace(TINY_VQ, quantize_dropout_prob=0.0)).train()
    motion = torch.randn(4, 16, 12)
    out, commit, perplexity = vq(motion)
    assert out.shape == motion.shape
    assert torch.isfinite(commit) and commit.item() > 0
    assert 1.0 <= perplexity.item() <= 16.0
    first = vq.quantizer.layers[0].codebook.clone()
    assert first.abs().sum() > 0  # a fresh codebook starts from encoder outputs
    loss = torch.nn.functional.smooth_l1_loss(out, motion) + 0.02 * commit
    loss.backward()
    assert vq.encoder.model[0].weight.grad.abs().sum() > 0
    assert vq.decoder.model[-1].weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in vq.quantizer.codebooks)
    vq(motion)
    assert not torch.equal(vq.quantizer.layers[0].codebook, first)  # EMA moved it


def test_dead_codes_are_reset_to_encoder_outputs() -> None:
    torch.manual_seed(0)
    vq = RVQVAE(replace(TINY_VQ, quantize_dropout_prob=0.0)).train()
    layer = vq.quantizer.layers[0]
    loaded = torch.randn(16, 8) * 0.1
    loaded[5] = 1e6  # far from every encoder output: never chosen
    with torch.no_grad():
        layer.codebook.copy_(loaded)
    latent = vq.encoder(torch.randn(4, 16, 12).permute(0, 2, 1)).detach()  # 16 vectors = nb_code: no jitter
    _, idx, _, _ = layer(latent, temperature=0.0)
    flat = latent.permute(0, 2, 1).reshape(-1, 8)
    assert 5 not in idx
    assert torch.cdist(layer.codebook[5:6], flat).min() < 1e-6  # reset to an encoder output
    used = idx.unique()
    assert not torch.allclose(layer.codebook[used], loaded[used])  # used codes moved by EMA, not reset
    assert torch.cdist(layer.codebook[used], loaded[used]).diagonal().max() < 0.05


def test_quantizer_dropout_marks_skipped_layers() -> None:
    torch.manual_seed(0)
    vq = RVQVAE(replace(TINY_VQ, quantize_dropout_prob=1.0)).train()
    seen_skips = set()
    for _ in range(30):
        latent = vq.encoder(torch.randn(2, 8, 12).permute(0, 2, 1))
        _, ids, _, _ = vq.quantizer(latent)
        kept = (ids[0, 0] >= 0).sum().item()
        assert (ids[..., :kept] >= 0).all() and (ids[..., kept:] == -1).all()
        seen_skips.add(kept)
    assert seen_skips == {1, 2, 3}
    vq.eval()
    _, ids, _, _ = vq.quantizer(vq.encoder(torch.randn(2, 8, 12).permute(0, 2, 1)))
    assert (ids >= 0).all()


# ---------------------------------------------------------------------------------- transformers

def test_mask_transformer_guidance_in_one_batch_matches_two_passes() -> None:
    torch.manual_seed(0)
    model = MaskTransformer(TINY_T).eval()
    ids = torch.randint(0, 18, (3, 7))
    cond = torch.randn(3, 10)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[2, 4:] = True
    with torch.no_grad():
        conditional = model.trans_forward(ids, cond, pad)
        unconditional = model.trans_forward(ids, torch.zeros_like(cond), pad)
        guided = model.forward_with_cond_scale(ids, cond, pad, cond_scale=4.0)
        assert guided.shape == (3, 16, 7)
        assert torch.allclose(guided, unconditional + 4.0 * (conditional - unconditional), atol=1e-5)
        assert torch.equal(model.forward_with_cond_scale(ids, cond, pad, cond_scale=1), conditional)
        forced = model.forward_with_cond_scale(ids, cond, pad, cond_scale=4.0, force_mask=True)
        assert torch.allclose(forced, unconditional, atol=1e-6)
        assert not torch.allclose(conditional, unconditional, atol=1e-4)


def test_mask_transformer_ignores_padded_positions() -> None:
    torch.manual_seed(0)
    model = MaskTransformer(TINY_T).eval()
    ids = torch.randint(0, 16, (1, 6))
    pad = torch.tensor([[False, False, False, False, True, True]])
    other = ids.clone()
    other[0, 4:] = model.pad_id
    cond = torch.randn(1, 10)
    with torch.no_grad():
        a = model.trans_forward(ids, cond, pad)
        b = model.trans_forward(other, cond, pad)
    assert torch.allclose(a[..., :4], b[..., :4], atol=1e-6)


def test_mask_transformer_training_step() -> None:
    torch.manual_seed(0)
    model = MaskTransformer(TINY_T).train()
    ids = torch.randint(0, 16, (4, 9))
    m_lens = torch.tensor([9, 5, 7, 1])
    loss, pred, acc = model(ids, torch.randn(4, 10), m_lens)
    assert loss.item() > 0 and math.isfinite(loss.item())
    assert abs(loss.item() - math.log(16)) < 1.0  # near-uniform logits at init
    assert pred.shape == (4, 9) and 0.0 <= acc.item() <= 1.0
    loss.backward()
    assert model.token_emb.weight.grad.abs().sum() > 0
    assert model.cond_emb.weight.grad.abs().sum() > 0


def test_residual_tied_tables() -> None:
    model = ResidualTransformer(TINY_T)
    tokens, outputs = model.token_embed_weight, model.output_proj_weight
    assert tokens.shape == outputs.shape == (2, 17, 8)
    assert torch.equal(tokens[0], model.token_embed_weight_[0])
    assert torch.equal(outputs[-1], model.output_proj_weight_[0])
    assert torch.equal(tokens[1], outputs[0])  # layer-1 input table predicts layer 1


def test_residual_guidance_and_training_step() -> None:
    torch.manual_seed(0)
    model = ResidualTransformer(TINY_T).eval()
    ids = torch.randint(0, 16, (2, 5))
    cond = torch.randn(2, 10)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    history = model.embed_tokens(0, ids)
    with torch.no_grad():
        qids = torch.full((2,), 2)
        conditional = model.logits(history, qids, cond, pad)
        unconditional = model.logits(history, qids, torch.zeros_like(cond), pad)
        guided = model.forward_with_cond_scale(history, 2, cond, pad, cond_scale=5.0)
    assert guided.shape == (2, 17, 5)
    assert torch.allclose(guided, unconditional + 5.0 * (conditional - unconditional), atol=1e-5)

    model.train()
    all_ids = torch.randint(0, 16, (16, 6, 3))
    loss, pred, acc = model(all_ids, torch.randn(16, 10), torch.randint(1, 7, (16,)))
    assert math.isfinite(loss.item()) and pred.shape == (16, 6) and 0.0 <= acc.item() <= 1.0
    loss.backward()
    assert model.embed_proj_shared_weight.grad.abs().sum() > 0
    assert model.output_proj_weight_.grad.abs().sum() > 0


def test_length_estimator_shapes_and_backward() -> None:
    model = LengthEstimator(LengthEstimatorConfig(text_dim=10, hidden_dim=32, num_classes=7))
    logits = model(torch.randn(5, 10))
    assert logits.shape == (5, 7)
    logits.sum().backward()
    assert model.output[0].weight.grad is not None


# ---------------------------------------------------------------------------------- config

def test_config_round_trip_and_errors() -> None:
    config = ModelConfig()
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    small = ModelConfig(vq=TINY_VQ, mask_transformer=replace(TINY_T, text_dim=384),
                        residual_transformer=replace(TINY_T, text_dim=384, cond_drop_prob=0.2),
                        length_estimator=None, text_encoder="minilm")
    assert ModelConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError, match="unknown key 'widht'"):
        ModelConfig.from_dict({"vq": {"widht": 3}})
    with pytest.raises(ValueError, match="'latent_dim' must be int"):
        ModelConfig.from_dict({"mask_transformer": {"latent_dim": "384"}})
    with pytest.raises(ValueError, match="text_dim is 512 but must be 384"):
        ModelConfig.from_dict({"text_encoder": "minilm"})
    with pytest.raises(ValueError, match="unit_length 8"):
        ModelConfig.from_dict({"unit_length": 8})
    with pytest.raises(ValueError, match="unknown backbone 'mamba9'"):
        MaskTransformer(replace(TINY_T, backbone="mamba9"))
