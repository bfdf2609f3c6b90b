"""Generation: decoding invariants, reproducibility, guidance batching, request validation, writers and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from safemotion import cli
from safemotion.data.bvh import read_bvh
from safemotion.decoding import (
    KEPT_SCORE,
    SamplingConfig,
    decode_base,
    decode_residual,
    per_sample_uniform,
    sample_ids,
    sample_token_lengths,
    top_k_filter,
)
from safemotion import generate as generate_module
from safemotion.generate import (
    GenerationRequest,
    Generator,
    bf16_is_native,
    output_paths,
    save_bvh,
    save_npz,
    seconds_to_tokens,
)
from safemotion.models.conditioned_transformer import cosine_schedule, lengths_to_mask
from safemotion.models.config import LengthEstimatorConfig, ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, save_model_dir
from safemotion.motion import skeleton
from safemotion.motion.features import recover_from_ric
from safemotion.motion.smpl import smpl_forward_kinematics

TEXT_DIM = 384
NUM_TOKENS = 64


def tiny_config() -> ModelConfig:
    """A few-thousand-parameter model with the MiniLM feature size."""
    transformer = TransformerConfig(latent_dim=32, ff_size=64, num_layers=2, num_heads=2, text_dim=TEXT_DIM,
                                    num_tokens=NUM_TOKENS, code_dim=32)
    return ModelConfig(
        vq=VQConfig(nb_code=NUM_TOKENS, code_dim=32, width=32, depth=1),
        mask_transformer=transformer,
        residual_transformer=dataclasses.replace(transformer, cond_drop_prob=0.2),
        length_estimator=LengthEstimatorConfig(text_dim=TEXT_DIM, hidden_dim=64),
        text_encoder="minilm",
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest (and least disturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    """Randomly initialised tiny models in eval mode, with random (non-zero) codebooks and realistic stats."""
    torch.manual_seed(0)
    built = build_models(tiny_config())
    for layer in built.vq.quantizer.layers:
        layer.codebook.normal_()
    built.std = np.full(263, 0.1, np.float32)
    return built.eval()


@pytest.fixture(scope="module")
def model_dir(models, tmp_path_factory):
    return save_model_dir(models, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def generator(model_dir):
    """The real pipeline: model directory + MiniLM text encoder."""
    return Generator.from_dir(model_dir, device="cpu")


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def conditions(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- sampling pieces

@pytest.mark.parametrize("classes, kept", [(512, 52), (513, 52), (64, 7), (10, 1)])
def test_top_k_keeps_ceil_of_a_tenth_of_the_logits(classes, kept):
    logits = torch.randn(3, 5, classes)
    filtered = top_k_filter(logits, 0.9)
    finite = torch.isfinite(filtered)
    assert (finite.sum(-1) == kept).all()
    assert kept == math.ceil(0.1 * classes)
    # the kept ones are the largest, unchanged
    assert torch.equal(filtered[finite], logits[finite])
    smallest_kept = filtered.masked_fill(~finite, float("inf")).min(-1).values
    largest_dropped = logits.masked_fill(finite, float("-inf")).max(-1).values
    assert (smallest_kept >= largest_dropped).all()


@pytest.mark.parametrize("gumbel", [False, True])
def test_sampling_never_draws_a_filtered_id(gumbel):
    logits = torch.randn(4, 50, 64)
    filtered = top_k_filter(logits, 0.9)
    shape = (4, 50, 64) if gumbel else (4, 50)
    for seed in range(5):
        uniform = 1 - torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        ids = sample_ids(filtered, uniform, temperature=1.0, gumbel=gumbel)
        assert torch.isfinite(filtered.gather(-1, ids.unsqueeze(-1))).all()


@pytest.mark.parametrize("gumbel", [False, True])
def test_sampling_follows_the_softmax(gumbel):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    probs = logits.softmax(-1)
    draws = 40_000
    shape = (1, draws, 5) if gumbel else (1, draws)
    uniform = 1 - torch.rand(shape, generator=torch.Generator().manual_seed(3))
    ids = sample_ids(logits.expand(1, draws, 5), uniform, temperature=1.0, gumbel=gumbel)
    freq = torch.bincount(ids.flatten(), minlength=5).float() / draws
    assert freq[4] == 0
    assert torch.allclose(freq, probs, atol=0.01), (freq, probs)


def test_temperature_sharpens_categorical_sampling():
    logits = torch.tensor([1.0, 0.0]).expand(1, 20_000, 2)
    uniform = 1 - torch.rand((1, 20_000), generator=torch.Generator().manual_seed(0))
    hot = (sample_ids(logits, uniform, 1.0, False) == 0).float().mean()
    cold = (sample_ids(logits, uniform, 0.5, False) == 0).float().mean()
    assert abs(hot - torch.sigmoid(torch.tensor(1.0))) < 0.01
    assert abs(cold - torch.sigmoid(torch.tensor(2.0))) < 0.01


# ---------------------------------------------------------------------------------------------- decoding

def test_base_decoding_honours_lengths_and_emits_only_codes(models):
    lengths = torch.tensor([3, 12, 7])
    ids = decode_base(models.mask_transformer, conditions(3), lengths, generators(1, 2, 3), SamplingConfig())
    assert ids.shape == (3, 12)
    inside = lengths_to_mask(lengths, 12)
    assert (ids[~inside] == -1).all()
    assert ((ids[inside] >= 0) & (ids[inside] < NUM_TOKENS)).all()  # no mask (64) or pad (65) id survives


def test_residual_decoding_keeps_the_base_layer_and_emits_codes_or_skips(models):
    lengths = torch.tensor([5, 9])
    cond = conditions(2)
    cfg = SamplingConfig()
    base = decode_base(models.mask_transformer, cond, lengths, generators(4, 5), cfg)
    all_ids = decode_residual(models.residual_transformer, base, cond, lengths, generators(4, 5), cfg)
    assert all_ids.shape == (2, 9, 6)
    assert torch.equal(all_ids[..., 0], base)
    inside = lengths_to_mask(lengths, 9)
    assert (all_ids[~inside] == -1).all()
    assert ((all_ids[inside] >= -1) & (all_ids[inside] < NUM_TOKENS)).all()


def reference_base_decoding(model, cond, lengths, steps, cond_scale):
    """momask-codes' MaskTransformer.generate with argmax sampling and two separate guidance passes."""
    max_len = int(lengths.max())
    padding = ~lengths_to_mask(lengths, max_len)
    ids = torch.where(padding, model.pad_id, model.mask_id)
    scores = torch.where(padding, 1e5, 0.0)
    for t in torch.linspace(0, 1, steps):
        num_masked = torch.round(cosine_schedule(t) * lengths).clamp(min=1)
        is_mask = scores.argsort(dim=1).argsort(dim=1) < num_masked.unsqueeze(-1)
        ids = torch.where(is_mask, model.mask_id, ids)
        cond_logits = model.trans_forward(ids, cond, padding)
        uncond_logits = model.trans_forward(ids, cond, padding, force_mask=True)
        logits = (uncond_logits + (cond_logits - uncond_logits) * cond_scale).permute(0, 2, 1)
        predicted = top_k_filter(logits, 0.9).argmax(-1)
        ids = torch.where(is_mask, predicted, ids)
        scores = logits.softmax(-1).gather(2, predicted.unsqueeze(-1)).squeeze(-1).masked_fill(~is_mask, 1e5)
    return torch.where(padding, -1, ids)


@pytest.mark.parametrize("gumbel", [False, True])
def test_base_decoding_matches_the_reference_loop_at_zero_temperature(models, gumbel):
    lengths = torch.tensor([4, 11, 8])
    cond = conditions(3, seed=7)
    cfg = SamplingConfig(time_steps=6, cond_scale=3.0, temperature=1e-6, gumbel_sample=gumbel)
    ours = decode_base(models.mask_transformer, cond, lengths, generators(1, 2, 3), cfg)
    with torch.inference_mode():
        reference = reference_base_decoding(models.mask_transformer, cond, lengths, 6, 3.0)
    assert torch.equal(ours, reference)


@torch.inference_mode()
def full_logits_base_decoding(model, cond, lengths, generators, cfg, kept=None):
    """decode_base before it computed only masked rows: guided logits of every position (forward_with_cond_scale,
    one doubled batch), sampled at every position, read at the masked ones."""
    max_len = int(lengths.max())
    padding = ~lengths_to_mask(lengths, max_len)
    fixed = padding if kept is None else padding | (kept >= 0)
    ids = torch.where(padding, model.pad_id, model.mask_id)
    if kept is not None:
        ids = torch.where(fixed & ~padding, kept, ids)
    scores = torch.where(fixed, KEPT_SCORE, 0.0)
    to_decode = (~fixed).sum(dim=1)
    classes = model.config.num_tokens
    for t in torch.linspace(0, 1, cfg.time_steps):
        num_masked = torch.round(cosine_schedule(t) * to_decode).clamp(min=1)
        is_mask = (scores.argsort(dim=1, stable=True).argsort(dim=1) < num_masked.unsqueeze(-1)) & ~fixed
        ids = torch.where(is_mask, model.mask_id, ids)
        logits = model.forward_with_cond_scale(ids, cond, padding, cfg.cond_scale).permute(0, 2, 1)
        noise = per_sample_uniform(generators, lengths, max_len, classes if cfg.gumbel_sample else 0)
        predicted = sample_ids(top_k_filter(logits, cfg.topk_filter_thres), noise, cfg.temperature,
                               cfg.gumbel_sample)
        ids = torch.where(is_mask, predicted, ids)
        confidence = logits.softmax(dim=-1).gather(-1, predicted.unsqueeze(-1)).squeeze(-1)
        scores = confidence.masked_fill(~is_mask, KEPT_SCORE)
    return torch.where(padding, -1, ids)


@pytest.mark.parametrize("gumbel, edit", [(False, False), (True, False), (False, True)])
def test_base_decoding_reads_only_masked_rows_and_draws_the_same_tokens(models, gumbel, edit):
    """Both cuts (last layer and head at [MASK] rows only, one unconditional pass per distinct row) change no
    token at temperature 1: repeated lengths share the step-0 unconditional pass, padding and kept ids included."""
    lengths = torch.tensor([7, 12, 7, 3, 12, 7])
    cond = conditions(6, seed=3)
    kept = None
    if edit:
        kept = torch.full((6, 12), -1)
        kept[:, 2:5] = torch.randint(0, NUM_TOKENS, (6, 3), generator=torch.Generator().manual_seed(4))
    cfg = SamplingConfig(time_steps=6, cond_scale=4.0, gumbel_sample=gumbel)
    ours = decode_base(models.mask_transformer, cond, lengths, generators(*range(6)), cfg, kept)
    reference = full_logits_base_decoding(models.mask_transformer, cond, lengths, generators(*range(6)), cfg, kept)
    assert torch.equal(ours, reference)


def test_the_shipped_model_draws_the_same_tokens_as_with_every_rows_logits():
    """The exact cuts keep the committed safemotion-mini's fp32 tokens: real MiniLM features, temperature 1."""
    generator = Generator.from_dir(generate_module.DEFAULT_MODEL_DIR, device="cpu")
    cond = generator.encode_prompts(["a person walks forward", "a person waves", "a person jumps"] * 2)
    lengths = torch.tensor([49, 20, 49, 33, 20, 1])
    cfg = generator.sampling
    ours = decode_base(generator.models.mask_transformer, cond, lengths, generators(*range(6)), cfg)
    reference = full_logits_base_decoding(generator.models.mask_transformer, cond, lengths, generators(*range(6)),
                                          cfg)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_masked_logits_are_the_full_guided_logits_at_mask_positions(models, precision):
    mask_model = models.mask_transformer
    if precision == "int8":
        mask_model = copy.deepcopy(mask_model)
        mask_model.quantize_int8()
    lengths = torch.tensor([9, 9, 5, 9])
    padding = ~lengths_to_mask(lengths, 9)
    ids = torch.randint(0, NUM_TOKENS, (4, 9), generator=torch.Generator().manual_seed(2))
    ids[:, ::2] = mask_model.mask_id
    ids[1] = ids[0]  # a repeated row: one unconditional pass serves both
    ids = torch.where(padding, mask_model.pad_id, ids)
    cond = conditions(4, seed=9)
    with torch.inference_mode():
        full = mask_model.forward_with_cond_scale(ids, cond, padding, cond_scale=4.0).permute(0, 2, 1)
        rows = mask_model.masked_logits(ids, cond, padding, cond_scale=4.0)
        step0 = torch.where(padding, mask_model.pad_id, mask_model.mask_id)
        first = mask_model.masked_logits(step0, cond, padding, cond_scale=4.0)
        first_full = mask_model.forward_with_cond_scale(step0, cond, padding, cond_scale=4.0).permute(0, 2, 1)
    is_mask = ids == mask_model.mask_id
    assert rows.shape == (int(is_mask.sum()), NUM_TOKENS)
    # int8 quantizes activations per tensor, so fewer rows change its rounding a little
    tolerance = 1e-5 if precision == "fp32" else 0.1
    torch.testing.assert_close(rows, full[is_mask], atol=tolerance, rtol=0)
    torch.testing.assert_close(first, first_full[~padding], atol=tolerance, rtol=0)


def test_guidance_in_one_batch_equals_two_separate_passes(models):
    cond = conditions(2)
    lengths = torch.tensor([6, 4])
    padding = ~lengths_to_mask(lengths, 6)
    ids = torch.randint(0, NUM_TOKENS, (2, 6), generator=torch.Generator().manual_seed(0))
    mask_model, residual_model = models.mask_transformer, models.residual_transformer
    with torch.inference_mode():
        one_batch = mask_model.forward_with_cond_scale(ids, cond, padding, cond_scale=4.0)
        conditional = mask_model.trans_forward(ids, cond, padding)
        unconditional = mask_model.trans_forward(ids, cond, padding, force_mask=True)
        assert torch.allclose(one_batch, unconditional + 4.0 * (conditional - unconditional), atol=1e-5)

        history = residual_model.embed_tokens(0, ids)
        one_batch = residual_model.forward_with_cond_scale(history, 2, cond, padding, cond_scale=5.0)
        qids = torch.full((2,), 2)
        conditional = residual_model.logits(history, qids, cond, padding)
        unconditional = residual_model.logits(history, qids, cond, padding, force_mask=True)
        assert torch.allclose(one_batch, unconditional + 5.0 * (conditional - unconditional), atol=1e-5)


def test_same_seed_same_tokens_and_other_seeds_differ(models):
    cond = conditions(2)
    lengths = torch.tensor([10, 10])
    cfg = SamplingConfig()
    first = decode_base(models.mask_transformer, cond, lengths, generators(11, 12), cfg)
    again = decode_base(models.mask_transformer, cond, lengths, generators(11, 12), cfg)
    other = decode_base(models.mask_transformer, cond, lengths, generators(13, 14), cfg)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_sample_does_not_depend_on_its_batch(models):
    cond = conditions(3, seed=5)
    cfg = SamplingConfig()
    alone = decode_base(models.mask_transformer, cond[:1], torch.tensor([6]), generators(42), cfg)
    together = decode_base(models.mask_transformer, cond, torch.tensor([6, 13, 2]), generators(42, 1, 2), cfg)
    assert torch.equal(together[0, :6], alone[0])
    all_alone = decode_residual(models.residual_transformer, alone, cond[:1], torch.tensor([6]), generators(9), cfg)
    all_together = decode_residual(models.residual_transformer, together, cond, torch.tensor([6, 13, 2]),
                                   generators(9, 8, 7), cfg)
    assert torch.equal(all_together[0, :6], all_alone[0])


def test_estimated_lengths_are_clamped_to_1_and_the_maximum(models):
    estimator = models.length_estimator
    final = estimator.output[-1]
    saved = final.bias.detach().clone()
    try:
        with torch.no_grad():
            final.bias.fill_(-1e4)
            final.bias[0] = 1e4  # the estimator is sure the motion has 0 tokens
        assert sample_token_lengths(estimator, conditions(4), generators(0, 1, 2, 3), 49).tolist() == [1] * 4
        with torch.no_grad():
            final.bias.fill_(-1e4)
            final.bias[49] = 1e4
        assert sample_token_lengths(estimator, conditions(2), generators(0, 1), 30).tolist() == [30, 30]
    finally:
        with torch.no_grad():
            final.bias.copy_(saved)


# ---------------------------------------------------------------------------------------------- requests

@pytest.mark.parametrize("request_, field, allowed", [
    (GenerationRequest(""), "prompt", "1-300"),
    (GenerationRequest("   "), "prompt", "1-300"),
    (GenerationRequest("x" * 301), "prompt", "1-300"),
    (GenerationRequest("walk", seconds=0.4), "seconds", "0.5-9.8"),
    (GenerationRequest("walk", seconds=9.9), "seconds", "0.5-9.8"),
    (GenerationRequest("walk", seconds=float("nan")), "seconds", "0.5-9.8"),
    (GenerationRequest("walk", variations=0), "variations", "1-16"),
    (GenerationRequest("walk", variations=17), "variations", "1-16"),
    (GenerationRequest("walk", seed=-1), "seed", "0-"),
    (GenerationRequest("walk", foot_cleanup=1), "foot_cleanup", "true or false"),
])
def test_bad_requests_name_the_field_and_its_range(request_, field, allowed):
    with pytest.raises(ValueError, match=field) as err:
        request_.validate()
    assert allowed in str(err.value)


def test_good_requests_pass():
    GenerationRequest("x" * 300, seconds=0.5, variations=16).validate()
    GenerationRequest("walk", seconds=9.8, variations=1).validate()


@pytest.mark.parametrize("seconds, tokens", [(4.0, 20), (0.5, 2), (9.8, 49), (2.05, 10), (3.3, 16)])
def test_seconds_become_whole_tokens(seconds, tokens):
    assert seconds_to_tokens(seconds, 20, 4, 49) == tokens


def test_output_paths_get_suffixes_only_for_several_files(tmp_path):
    assert output_paths(tmp_path / "walk.bvh", 1) == [tmp_path / "walk.bvh"]
    assert output_paths(tmp_path / "walk.bvh", 3) == [tmp_path / f"walk_{k}.bvh" for k in (1, 2, 3)]


# ---------------------------------------------------------------------------------------------- full pipeline

def test_generator_end_to_end(generator):
    requests = [GenerationRequest("a person walks forward", seconds=3.0, seed=1, variations=3),
                GenerationRequest("a person jumps", seed=7)]
    motions = generator.generate(requests)
    assert [(m.prompt, m.seed, m.variation) for m in motions] == [
        ("a person walks forward", 1, 0), ("a person walks forward", 2, 1), ("a person walks forward", 3, 2),
        ("a person jumps", 7, 0)]
    for motion in motions[:3]:
        assert motion.length_from == "request"
        assert motion.tokens.shape == (15, 6) and motion.joints.shape == (60, 22, 3)
        assert motion.features.shape == (60, 263)
        assert motion.smpl.pose.shape == (60, 24, 3) and motion.smpl.transl.shape == (60, 3)
        assert np.array_equal(motion.base_tokens, motion.tokens[:, 0])
        assert motion.base_tokens.min() >= 0 and motion.base_tokens.max() < NUM_TOKENS
        assert np.isfinite(motion.joints).all()
    estimated = motions[3]
    assert estimated.length_from == "estimator"
    assert 1 <= len(estimated.tokens) <= 49 and estimated.num_frames == 4 * len(estimated.tokens)
    assert not np.array_equal(motions[0].tokens, motions[1].tokens)

    # same call → same result; variation k is seed + k generated alone
    again = generator.generate(requests)
    for a, b in zip(motions, again):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.joints, b.joints)
    single = generator.generate([GenerationRequest("a person walks forward", seconds=3.0, seed=3)])[0]
    assert np.array_equal(single.tokens, motions[2].tokens)
    np.testing.assert_allclose(single.joints, motions[2].joints, atol=1e-5)


bf16_native = pytest.mark.skipif(not bf16_is_native(torch.device("cpu")),
                                 reason="this CPU has neither AVX512-BF16 nor AMX")


@bf16_native
def test_bf16_generation_tracks_fp32(model_dir, generator):
    sampling = SamplingConfig(precision="bf16")
    fast = Generator.from_dir(model_dir, device="cpu", sampling=sampling)
    assert fast.models.mask_transformer.cond_emb.weight.dtype == torch.bfloat16
    assert fast.models.residual_transformer.cond_emb.weight.dtype == torch.bfloat16
    assert fast.models.vq.quantizer.layers[0].codebook.dtype == torch.float32
    request = [GenerationRequest("a person walks forward", seconds=3.0, seed=1, variations=2)]
    motions, again = fast.generate(request), fast.generate(request)
    for motion, repeat in zip(motions, again):
        assert motion.sampling.precision == "bf16" and motion.tokens.shape == (15, 6)
        assert np.isfinite(motion.joints).all() and np.array_equal(motion.tokens, repeat.tokens)
    # the same function in lower precision: guided logits within bf16 rounding of the float32 ones
    ids = torch.randint(0, NUM_TOKENS, (2, 15), generator=torch.Generator().manual_seed(0))
    padding = torch.zeros(2, 15, dtype=torch.bool)
    with torch.inference_mode():
        exact = generator.models.mask_transformer.forward_with_cond_scale(ids, conditions(2), padding, 4.0)
        rounded = fast.models.mask_transformer.forward_with_cond_scale(ids, conditions(2).bfloat16(), padding, 4.0)
    assert (rounded.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_bf16_is_refused_where_it_would_be_emulated(model_dir, monkeypatch):
    monkeypatch.setattr(generate_module, "bf16_is_native", lambda device: False)
    with pytest.raises(ValueError, match="precision bf16 needs a GPU with bfloat16 or a CPU with AVX512-BF16 or AMX"):
        Generator.from_dir(model_dir, device="cpu", sampling=SamplingConfig(precision="bf16"))
    with pytest.raises(ValueError, match=r"precision is 'fp16'; choose one of \['fp32', 'bf16'\]"):
        SamplingConfig(precision="fp16").validate()


def test_generator_rejects_bad_requests_before_working(generator):
    with pytest.raises(ValueError, match=r"request 1: variations is 20; allowed range is 1-16"):
        generator.generate([GenerationRequest("walk"), GenerationRequest("run", variations=20)])
    with pytest.raises(ValueError, match="requests is empty"):
        generator.generate([])


def test_foot_cleanup_is_on_by_default_and_keeps_the_bones(generator):
    cleaned, raw = generator.generate([GenerationRequest("a person walks forward", seconds=3.0, seed=2),
                                       GenerationRequest("a person walks forward", seconds=3.0, seed=2,
                                                         foot_cleanup=False)])
    assert np.array_equal(cleaned.tokens, raw.tokens) and np.array_equal(cleaned.features, raw.features)
    assert raw.foot_cleanup is None and np.array_equal(raw.joints, recover_from_ric(raw.features))
    report = cleaned.foot_cleanup
    assert report is not None and math.isfinite(report.floor_shift_m)
    feet = cleaned.joints[:, [7, 8, 10, 11], 1]
    assert feet.min() > -0.02  # nothing sinks more than 2 cm below the floor
    parents = list(skeleton.SMPL22_PARENTS[1:])
    bones = [np.linalg.norm(m.joints[:, 1:] - m.joints[:, parents], axis=-1) for m in (cleaned, raw)]
    np.testing.assert_allclose(bones[0], bones[1], atol=1e-3)
    np.testing.assert_allclose(cleaned.joints[:, 0, [0, 2]], raw.joints[:, 0, [0, 2]], atol=1e-6)  # root path kept


def test_npz_and_bvh_writers(generator, tmp_path):
    motion = generator.generate([GenerationRequest("a person waves", seconds=2.0, seed=4)])[0]
    npz = save_npz(motion, tmp_path / "wave.npz")
    with np.load(npz, allow_pickle=False) as data:
        assert np.array_equal(data["tokens"], motion.tokens)
        assert np.array_equal(data["base_tokens"], motion.base_tokens)
        np.testing.assert_allclose(data["joints"], motion.joints, atol=1e-6)
        assert data["smpl_pose"].shape == (40, 24, 3)
        meta = json.loads(str(data["metadata"]))
    assert meta["prompt"] == "a person waves" and meta["seed"] == 4 and meta["frames"] == 40
    assert meta["foot_cleanup"] == {"applied": True, **motion.foot_cleanup.to_dict()}

    bvh = read_bvh(save_bvh(motion, tmp_path / "wave.bvh"))
    assert bvh.num_frames == 40 and bvh.fps == 20
    order = [bvh.names.index(name) for name in skeleton.SMPL24_NAMES]
    expected = smpl_forward_kinematics(motion.smpl.pose, motion.smpl.transl, motion.smpl.rest_joints)
    np.testing.assert_allclose(bvh.world_positions()[:, order], expected, atol=1e-4)


def test_cli_generate_writes_one_file_per_variation(model_dir, generator, tmp_path, capsys):
    out = tmp_path / "walk.npz"
    code = cli.main(["generate", "a person walks forward", "--model", str(model_dir), "--seconds", "4",
                     "--seed", "1", "--variations", "2", "--out", str(out), "--device", "cpu"])
    assert code == 0
    written = json.loads(capsys.readouterr().out)
    assert [w["file"] for w in written] == [str(tmp_path / "walk_1.npz"), str(tmp_path / "walk_2.npz")]
    with np.load(tmp_path / "walk_2.npz") as data:
        assert data["joints"].shape == (80, 22, 3)
        assert json.loads(str(data["metadata"]))["seed"] == 2
    assert written[0]["foot_cleanup"] is True
    assert cli.main(["generate", "a person walks", "--model", str(model_dir), "--seconds", "2",
                     "--out", str(tmp_path / "walk.bvh"), "--device", "cpu"]) == 0
    assert read_bvh(tmp_path / "walk.bvh").num_frames == 40
    capsys.readouterr()


def test_cli_generate_can_keep_the_raw_feet(model_dir, tmp_path, capsys):
    args = ["generate", "a person walks forward", "--model", str(model_dir), "--seconds", "2", "--seed", "3",
            "--device", "cpu", "--out"]
    assert cli.main([*args, str(tmp_path / "raw.npz"), "--no-foot-cleanup"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["foot_cleanup"] is False
    assert cli.main([*args, str(tmp_path / "clean.npz")]) == 0
    with np.load(tmp_path / "raw.npz") as raw, np.load(tmp_path / "clean.npz") as clean:
        assert json.loads(str(raw["metadata"]))["foot_cleanup"] == {"applied": False}
        assert json.loads(str(clean["metadata"]))["foot_cleanup"]["applied"] is True
        np.testing.assert_allclose(raw["joints"], recover_from_ric(raw["features"]), atol=1e-6)
        assert not np.allclose(raw["joints"], clean["joints"])


def test_cli_generate_reports_bad_input_and_missing_models(model_dir, tmp_path, capsys):
    assert cli.main(["generate", "walk", "--model", str(model_dir), "--seconds", "12",
                     "--out", str(tmp_path / "x.npz")]) == 2
    assert "seconds is 12.0; allowed range is 0.5-9.8" in capsys.readouterr().err
    assert cli.main(["generate", "walk", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert cli.main(["generate", "walk", "--model", str(model_dir), "--out", str(tmp_path / "x.fbx")]) == 2
    assert "use .npz or .bvh" in capsys.readouterr().err
