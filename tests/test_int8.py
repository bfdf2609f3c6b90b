"""int8 precision: dynamically quantized encoder linears close to float32, padding honoured, float path untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from safemotion.decoding import SamplingConfig
from safemotion.generate import Generator, with_precision
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.encoder_inference import Int8Linears, encoder_forward
from safemotion.models.model_dir import build_models
from safemotion.models.residual_transformer import ResidualTransformer

TEXT_DIM = 384  # MiniLM features


def tiny_config(backbone: str = "transformer") -> ModelConfig:
    transformer = TransformerConfig(latent_dim=32, ff_size=64, num_layers=2, num_heads=2, text_dim=TEXT_DIM,
                                    num_tokens=32, code_dim=16, backbone=backbone)
    return ModelConfig(vq=VQConfig(nb_code=32, code_dim=16, width=16, depth=1), mask_transformer=transformer,
                       residual_transformer=dataclasses.replace(transformer, backbone="transformer"),
                       length_estimator=LengthEstimatorConfig(text_dim=TEXT_DIM, hidden_dim=32), text_encoder="minilm")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def encoder() -> torch.nn.TransformerEncoder:
    torch.manual_seed(0)
    model = ResidualTransformer(tiny_config().residual_transformer).eval()
    for p in model.seqTransEncoder.parameters():  # away from the N(0, 0.02) init, so the layers do real work
        p.data.normal_(0, 0.2)
    return model.seqTransEncoder


def test_int8_encoder_tracks_float32(encoder):
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = encoder(x)
        quantized = encoder_forward(encoder, x, None, Int8Linears(encoder))
    assert quantized.shape == reference.shape
    relative = (quantized - reference).norm() / reference.norm()
    assert 1e-5 < float(relative) < 0.05  # quantized (not a copy of the float path), within a few per cent


def test_int8_encoder_ignores_padded_keys(encoder):
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    padding = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])
    linears = Int8Linears(encoder)
    with torch.inference_mode():
        padded = encoder_forward(encoder, x, padding, linears)
        alone = encoder_forward(encoder, x[:1, :5], None, linears)
        reference = encoder(x, src_key_padding_mask=padding)
    # per-tensor activation scales depend on the whole batch, so compare within quantization error
    assert torch.allclose(padded[0, :5], alone[0], atol=0.1)
    assert float((padded[0, :5] - reference[0, :5]).norm() / reference[0, :5].norm()) < 0.05


def test_int8_generator_draws_valid_reproducible_tokens():
    torch.manual_seed(0)
    models = build_models(tiny_config()).eval()
    generator = Generator(models, None, SamplingConfig(precision="int8"), "cpu")
    features = torch.randn(3, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    first = generator.generate_from_features(features, [1, 2, 3], [5, 9, 2], smpl=False)
    again = generator.generate_from_features(features, [1, 2, 3], [5, 9, 2], smpl=False)
    for a, b, n in zip(first, again, (5, 9, 2)):
        assert a.tokens.shape == (n, 6) and a.sampling.precision == "int8"
        assert ((a.tokens >= -1) & (a.tokens < 32)).all()
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_int8_leaves_training_and_gradients_on_the_float_path():
    torch.manual_seed(0)
    models = build_models(tiny_config()).eval()
    mask = models.mask_transformer
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    cond = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(5))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    before = mask.trans_forward(ids, cond, padding).detach()
    with torch.inference_mode():
        fused = mask.trans_forward(ids, cond, padding)
    with_precision(models, "int8", torch.device("cpu"))
    with torch.inference_mode():
        quantized = mask.trans_forward(ids, cond, padding)
    assert not torch.equal(quantized, fused)
    assert torch.equal(mask.trans_forward(ids, cond, padding).detach(), before)  # grad enabled → float path


def test_int8_is_refused_off_the_cpu_and_for_ssm_backbones():
    with pytest.raises(ValueError, match="precision int8 runs on the CPU only, not cuda"):
        with_precision(build_models(tiny_config()), "int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="int8 needs the transformer backbone, not 'mamba'"):
        with_precision(build_models(tiny_config("mamba")), "int8", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"precision is 'int4'; choose one of \['fp32', 'bf16'\] or 'int8'"):
        SamplingConfig(precision="int4").validate()
