"""MaskTransformer backbones (issue 8): transformer, bidirectional Mamba and SeRpEnt stacks.

Shapes and gradients, learning on a fixed batch, guided (CFG) batching, padding, [MASK] positions never merged by
SeRpEnt, model-directory round trip, and clear errors for unsupported backbones.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from safemotion.models import (
    LengthEstimatorConfig,
    MaskTransformer,
    ModelConfig,
    ResidualTransformer,
    TransformerConfig,
    VQConfig,
    build_models,
    load_model_dir,
    save_model_dir,
)
from safemotion.models.config import BACKBONES
from safemotion.models.ssm import Mamba, SeRpEnt
from safemotion.models.ssm.serpent import clock_steps, plan_resampling

TINY_T = TransformerConfig(latent_dim=16, ff_size=32, num_layers=2, num_heads=2, dropout=0.1, text_dim=10,
                           num_tokens=16, code_dim=8, num_quantizers=3)
MASK_ID = TINY_T.num_tokens
PAD_ID = TINY_T.num_tokens + 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread hand-off overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(backbone: str, seed: int = 0) -> MaskTransformer:
    torch.manual_seed(seed)
    return MaskTransformer(replace(TINY_T, backbone=backbone))


def batch(seed: int = 1, n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (3, n) with some [MASK] positions and right padding, text features (3, 10), padding mask (3, n)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY_T.num_tokens, (3, n), generator=generator)
    ids[torch.rand(3, n, generator=generator) < 0.4] = MASK_ID
    lengths = torch.tensor([n, n - 3, 5])
    padding = torch.arange(n) >= lengths.unsqueeze(1)
    ids[padding] = PAD_ID
    return ids, torch.randn(3, TINY_T.text_dim, generator=generator), padding


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_backward_shapes(backbone: str) -> None:
    model = tiny(backbone)
    ids, cond, padding = batch()
    assert model.trans_forward(ids, cond, padding).shape == (3, TINY_T.num_tokens, 12)
    loss, pred, acc = model(ids.clamp(max=MASK_ID - 1), cond, torch.tensor([12, 9, 5]))
    assert pred.shape == (3, 12) and torch.isfinite(loss) and 0 <= acc <= 1
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert sum(param.grad.abs().sum() for param in model.seqTransEncoder.parameters()) > 0


def test_ssm_mixers_keep_their_own_initialisation() -> None:
    """MoMask's N(0, 0.02) init must not overwrite Mamba's Δ bias (softplus(bias) ∈ [1e-3, 1e-1]) or A."""
    for backbone in ("mamba", "serpent"):
        model = tiny(backbone)
        ssms = [m.forward_ssm for m in model.modules() if isinstance(m, Mamba)]
        assert ssms
        for ssm in ssms:
            dt = F.softplus(ssm.dt_proj.bias)
            assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6 and dt.std() > 0
            assert torch.equal(ssm.A_log[0], torch.log(torch.arange(1.0, ssm.A_log.shape[1] + 1)))
        block = model.seqTransEncoder.layers[0]
        assert block.linear1.bias.abs().max() == 0 and 0.015 < block.linear1.weight.std() < 0.025


@pytest.mark.parametrize("backbone", BACKBONES)
def test_loss_goes_down_on_a_fixed_batch(backbone: str) -> None:
    model = tiny(backbone)
    ids, cond, _ = batch(seed=2)
    ids = ids.clamp(max=MASK_ID - 1)
    lengths = torch.tensor([12, 9, 5])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        torch.manual_seed(3)  # same masking, corruption and dropout every step: a fixed objective
        loss, _, _ = model(ids, cond, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("backbone", BACKBONES)
def test_guided_batched_forward_equals_separate_passes(backbone: str) -> None:
    model = tiny(backbone).eval()
    ids, cond, padding = batch()
    with torch.no_grad():
        guided = model.forward_with_cond_scale(ids, cond, padding, cond_scale=3.0)
        conditional = model.trans_forward(ids, cond, padding)
        unconditional = model.trans_forward(ids, cond, padding, force_mask=True)
    assert guided.shape == (3, TINY_T.num_tokens, 12)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_does_not_change_real_positions(backbone: str) -> None:
    """Each sample's logits at its real positions equal those of the sample run alone without padding."""
    model = tiny(backbone).eval()
    ids, cond, padding = batch()
    with torch.no_grad():
        together = model.trans_forward(ids, cond, padding)
        for row in range(3):
            n = int((~padding[row]).sum())
            alone = model.trans_forward(ids[row:row + 1, :n], cond[row:row + 1], padding[row:row + 1, :n])
            torch.testing.assert_close(together[row:row + 1, :, :n], alone, atol=1e-5, rtol=1e-4)


def _serpent_inputs(model: MaskTransformer, ids: torch.Tensor, cond: torch.Tensor, padding: torch.Tensor) -> list:
    """(mixer, x, padding_mask, keep_mask) for every SeRpEnt call of one forward pass."""
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, *args)))
             for m in model.modules() if isinstance(m, SeRpEnt)]
    with torch.no_grad():
        model.trans_forward(ids, cond, padding)
    for hook in hooks:
        hook.remove()
    return calls


def test_serpent_never_merges_masked_positions_or_the_condition() -> None:
    model = tiny("serpent").eval()
    ids, cond, padding = batch(n=20)
    calls = _serpent_inputs(model, ids, cond, padding)
    assert len(calls) == TINY_T.num_layers
    expected_keep = F.pad(ids == MASK_ID, (1, 0), value=True)  # condition token at position 0
    merged_context = 0
    for mixer, x, padding_mask, keep_mask in calls:
        assert torch.equal(keep_mask, expected_keep)
        assert torch.equal(padding_mask, F.pad(padding, (1, 0), value=False))
        for branch in mixer.branches:
            steps = clock_steps(mixer.information(x), branch.kappa, bidirectional=True)
            plan = plan_resampling(steps, branch.kappa, mixer.config.window, True, padding_mask, keep_mask)
            source = plan.index.gather(1, plan.restore_index)  # token selected by the slot each position reads
            kept = keep_mask & ~padding_mask
            assert plan.restore_valid[kept].all()
            assert torch.equal(source[kept], kept.nonzero()[:, 1])
            context = ~keep_mask & ~padding_mask
            merged_context += int((source[context] != context.nonzero()[:, 1]).sum())
    assert merged_context > 0  # unmasked context tokens do get merged, so the check above is not vacuous


def test_serpent_keeps_masked_positions_during_training() -> None:
    """In the training pass, exactly the inputs replaced by [MASK] (plus the condition) are kept."""
    model = tiny("serpent")
    seen = []
    model.seqTransEncoder.layers[0].mixer.register_forward_hook(lambda mod, args, out: seen.append(args[2]))
    model.token_emb.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    ids, cond, _ = batch()
    model(ids.clamp(max=MASK_ID - 1), cond, torch.tensor([12, 9, 5]))
    x_ids, keep = seen
    assert (x_ids == MASK_ID).any()
    assert torch.equal(keep, F.pad(x_ids == MASK_ID, (1, 0), value=True))


def tiny_model_config(backbone: str) -> ModelConfig:
    transformer = replace(TINY_T, text_dim=384)
    return ModelConfig(
        vq=VQConfig(dim_pose=263, nb_code=16, code_dim=8, width=16, depth=2, num_quantizers=3),
        mask_transformer=replace(transformer, backbone=backbone),
        residual_transformer=replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=384, hidden_dim=32, num_classes=50),
        text_encoder="minilm",
    )


@pytest.mark.parametrize("backbone", ["mamba", "serpent"])
def test_model_dir_round_trip(backbone: str, tmp_path: Path) -> None:
    config = tiny_model_config(backbone)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    models = build_models(config).eval()
    saved = save_model_dir(models, tmp_path / "model")
    assert json.loads((saved / "config.json").read_text())["mask_transformer"]["backbone"] == backbone
    rng = torch.get_rng_state()
    loaded = load_model_dir(saved)
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding SeRpEnt's RBF centres draws no random numbers
    assert loaded.config == config
    assert type(loaded.mask_transformer.seqTransEncoder) is type(models.mask_transformer.seqTransEncoder)
    assert not any(b.is_meta for b in loaded.mask_transformer.buffers())
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 16, (2, 9), generator=generator)
    ids[:, ::3] = MASK_ID
    cond = torch.randn(2, 384, generator=generator)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        before = models.mask_transformer.forward_with_cond_scale(ids, cond, padding, cond_scale=4.0)
        after = loaded.mask_transformer.forward_with_cond_scale(ids, cond, padding, cond_scale=4.0)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(loaded.mean, models.mean)


def test_unsupported_backbones_raise_clear_errors() -> None:
    known = re.escape("choose one of ['transformer', 'mamba', 'serpent']")
    with pytest.raises(ValueError, match=f"unknown backbone 'lstm'; {known}"):
        MaskTransformer(replace(TINY_T, backbone="lstm"))
    message = "ResidualTransformer supports backbone ['transformer'], not 'serpent'"
    with pytest.raises(ValueError, match=re.escape(message)):
        ResidualTransformer(replace(TINY_T, backbone="serpent"))
    data = tiny_model_config("serpent").to_dict()
    data["mask_transformer"]["backbone"] = "lstm"
    with pytest.raises(ValueError, match=r"where: mask_transformer.backbone 'lstm' is not supported"):
        ModelConfig.from_dict(data, where="where")
    data = tiny_model_config("transformer").to_dict()
    data["residual_transformer"]["backbone"] = "mamba"
    message = "residual_transformer.backbone 'mamba' is not supported; choose one of ['transformer']"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig.from_dict(data)
    # num_heads only constrains the transformer backbone
    data = tiny_model_config("serpent").to_dict()
    data["mask_transformer"]["num_heads"] = 3
    assert ModelConfig.from_dict(data).mask_transformer.num_heads == 3
