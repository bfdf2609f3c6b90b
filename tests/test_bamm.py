"""BAMM base-layer generator: official key layout, the hybrid mask, top-1 parity with a reference implementation of
bamm_architecture.md §6, and generation (END length, requested length, seeds, batching) on a tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safemotion import cli
from safemotion.bamm_decoding import decode_bamm, refined_positions
from safemotion.decoding import SamplingConfig
from safemotion.generate import GenerationRequest, Generator
from safemotion.models.bamm_transformer import BammTransformer
from safemotion.models.config import ModelConfig, TransformerConfig, VQConfig
from safemotion.models.model_dir import build_models, load_model_dir, save_model_dir

TEXT_DIM = 384
SEQ_LEN = 49  # token slots of the release: 196 frames / 4
TINY = TransformerConfig(latent_dim=32, ff_size=64, num_layers=2, num_heads=2, text_dim=TEXT_DIM, num_tokens=16,
                         code_dim=16)


def bamm_config() -> ModelConfig:
    """Tiny MiniLM-sized BAMM model without a length estimator."""
    return ModelConfig(vq=VQConfig(nb_code=16, code_dim=16, width=16, depth=1), mask_transformer=TINY,
                       residual_transformer=dataclasses.replace(TINY, cond_drop_prob=0.2), length_estimator=None,
                       text_encoder="minilm", generator="bamm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_transformer(seed: int = 0) -> BammTransformer:
    torch.manual_seed(seed)
    model = BammTransformer(TINY).eval()
    with torch.no_grad():  # larger weights than the init's N(0, 0.02), so the logits differ clearly between steps
        for parameter in model.parameters():
            parameter.normal_(0, 0.3) if parameter.dim() > 1 else None
    return model


# ---------------------------------------------------------------------------------- layout and mask

def test_official_size_keys_and_shapes_match_the_spec(shared_dir: Path) -> None:
    spec = json.loads((shared_dir / "reference" / "bamm_state_dicts.json").read_text())["bamm_transformer"]
    with torch.device("meta"):
        model = BammTransformer(TransformerConfig())
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(ours) == list(spec["params"]) and ours == spec["params"]
    assert sum(p.numel() for p in model.parameters()) == spec["trainable_params"]
    assert (model.end_id, model.pad_id, model.mask_id) == (512, 513, 514)


def test_int8_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValueError, match="int8 is not available for BAMM"):
        tiny_transformer().quantize_int8()


def test_hybrid_mask_is_the_documented_formula() -> None:
    model = tiny_transformer()
    pad = model.pad_id
    cond_idx = torch.tensor([[3, pad, 5, pad, model.end_id, pad], [pad] * 6])
    blocked = model.attention_mask(cond_idx, 7).view(2, TINY.num_heads, 7, 7)[:, 0]
    for b in range(2):
        conditioning = {0} | {j + 1 for j in range(6) if int(cond_idx[b, j]) != pad}
        for p in range(7):
            for q in range(7):
                allowed = q in conditioning or (p not in conditioning and q <= p)
                assert bool(blocked[b, p, q]) == (not allowed), (b, p, q)
    assert torch.equal(model.attention_mask(None, 7), ~torch.ones(7, 7, dtype=torch.bool).tril())


def test_refined_positions_are_the_last_half_before_the_length() -> None:
    rows = refined_positions(torch.tensor([49, 20, 1, 3, 5]), SEQ_LEN)
    assert torch.nonzero(rows[0]).flatten().tolist() == list(range(25, 49))  # round(24.5) = 24 (half to even)
    assert torch.nonzero(rows[1]).flatten().tolist() == list(range(10, 20))
    assert torch.nonzero(rows[2]).flatten().tolist() == [0]  # at least one
    assert torch.nonzero(rows[3]).flatten().tolist() == [1, 2]  # round(1.5) = 2
    assert torch.nonzero(rows[4]).flatten().tolist() == [3, 4]  # round(2.5) = 2


# ---------------------------------------------------------------------------------- top-1 parity

def reference_decode(model: BammTransformer, cond: torch.Tensor, length: int | None, scale1: float,
                     scale2: float, slots: int = SEQ_LEN) -> list[int]:
    """One sample, top-1, written from bamm_architecture.md §2–§6 with explicit loops (no batching, two CFG passes)."""
    end, pad, codes = model.end_id, model.pad_id, model.end_id
    positions = slots + 2

    def mask(cond_idx: list[int] | None) -> torch.Tensor:
        conditioning = {0} | ({j + 1 for j in range(slots + 1) if cond_idx[j] != pad} if cond_idx else set())
        return torch.tensor([[not (q in conditioning or (p not in conditioning and q <= p))
                              for q in range(positions)] for p in range(positions)])

    def logits_at(ids: list[int], blocked: torch.Tensor, k: int, scale: float) -> torch.Tensor:
        def forward(text: torch.Tensor) -> torch.Tensor:
            tokens = model.input_process(model.token_emb(torch.tensor(ids)))
            x = torch.cat([model.cond_emb(text)[None], tokens]) + model.position_enc.pe[:positions, 0]
            return model.output_process(model.seqTransEncoder(x[None], mask=blocked))[0, :, k]

        conditional, unconditional = forward(cond), forward(torch.zeros_like(cond))
        return unconditional + scale * (conditional - unconditional)

    ids = [pad] * (slots + 1)
    causal = mask(None)
    for k in range(slots):  # pass 1: causal; END allowed only when the length is predicted
        logits = logits_at(ids, causal, k, scale1)
        ids[k] = int(logits[:codes].argmax()) if length is not None else int(logits.argmax())
    if length is None:
        if ids[0] >= end:
            ids[0], ids[1] = 0, end
        length = next(i for i, v in enumerate(ids) if v >= end)
        ids[length + 1:] = [pad] * (slots - length)
    ids[length] = end
    regenerated = max(1, round(length / 2))  # Python's round is half-to-even, like torch.round
    kept = [j for j in range(length - regenerated)] + [length]
    cond_idx = [ids[j] if j in kept else pad for j in range(slots + 1)]
    hybrid = mask(cond_idx)  # fixed for the whole pass
    for k in range(slots):  # pass 2: hybrid mask, END excluded, every slot overwritten
        ids[k] = int(logits_at(ids, hybrid, k, scale2)[:codes].argmax())
    for j in kept:
        ids[j] = cond_idx[j]
    return ids[:length]


def _ours(model: BammTransformer, cond: torch.Tensor, lengths: list[int], slots: int = SEQ_LEN) -> list[list[int]]:
    cfg = SamplingConfig(cond_scale=4.0, refine_cond_scale=3.0)
    gens = [torch.Generator().manual_seed(i) for i in range(len(lengths))]
    ids, chosen = decode_bamm(model, cond, torch.tensor(lengths), gens, cfg, slots, greedy=True)
    return [ids[b, :int(chosen[b])].tolist() for b in range(len(lengths))]


def test_top1_decoding_matches_the_reference_at_official_size() -> None:
    """Released sizes and random weights; 12 token slots instead of 49 keep the reference's 96 passes short."""
    torch.manual_seed(1)
    model = BammTransformer(TransformerConfig()).eval()
    cond = torch.randn(2, 512)
    ours = _ours(model, cond, [0, 7], slots=12)
    with torch.no_grad():
        expected = [reference_decode(model, cond[0], None, 4.0, 3.0, slots=12),
                    reference_decode(model, cond[1], 7, 4.0, 3.0, slots=12)]
    assert ours == expected
    assert len(ours[1]) == 7 and all(0 <= v < 512 for row in ours for v in row)


def test_top1_decoding_matches_the_reference_with_an_end_mid_sequence_and_at_the_start() -> None:
    model = tiny_transformer()
    cond = torch.randn(1, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    # Where would pass 1 rank END lowest against the best code? Shift END's bias to win first at that step.
    with torch.no_grad():
        margins = []
        ids = torch.full((1, SEQ_LEN + 1), model.pad_id)
        for k in range(SEQ_LEN):
            logits = model.forward_with_cond_scale(ids, cond, None, 4.0)[0, :, k]
            margins.append(float(logits[:model.end_id].max() - logits[model.end_id]))
            ids[0, k] = int(logits[:model.end_id].argmax())
    step = int(np.argmin(margins[1:])) + 1
    gap = sorted(margins)[1] - margins[step]
    with torch.no_grad():
        model.output_process.poseFinal.bias[model.end_id] += margins[step] + gap / 2
    ours = _ours(model, cond, [0])[0]
    with torch.no_grad():
        assert ours == reference_decode(model, cond[0], None, 4.0, 3.0)
    assert len(ours) == step
    with torch.no_grad():
        model.output_process.poseFinal.bias[model.end_id] += 1e4  # END at slot 0 → code 0, length 1
    ours = _ours(model, cond, [0])[0]
    assert len(ours) == 1
    with torch.no_grad():
        assert ours == reference_decode(model, cond[0], None, 4.0, 3.0)


def test_steps_no_sample_keeps_run_no_pass_and_change_no_token() -> None:
    """Requested lengths 3 and 5 of 12 slots: 5 passes each (not 12); the sampled tokens, and the draws left for
    the residual layers, are those of each sample decoded alone."""
    model = tiny_transformer()
    cond = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(4))
    calls = []
    original = model.forward_with_cond_scale
    model.forward_with_cond_scale = lambda *args: calls.append(1) or original(*args)
    cfg = SamplingConfig()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    ids, lengths = decode_bamm(model, cond, torch.tensor([3, 5]), gens, cfg, 12)
    assert len(calls) == 10 and lengths.tolist() == [3, 5]
    for row, (seed, length) in enumerate(((1, 3), (2, 5))):
        alone = torch.Generator().manual_seed(seed)
        ids_alone, _ = decode_bamm(model, cond[row:row + 1], torch.tensor([length]), [alone], cfg, 12)
        assert ids[row, :length].tolist() == ids_alone[0].tolist()
        assert torch.equal(alone.get_state(), gens[row].get_state())  # 2 · 12 draws each, skipped steps included


# ---------------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def bamm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    models = build_models(bamm_config())
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    with torch.no_grad():  # END likely enough that sampled motions end well before the 49 slots
        models.mask_transformer.output_process.poseFinal.bias[models.mask_transformer.end_id] = 2.0
    return save_model_dir(models, tmp_path_factory.mktemp("bamm") / "tiny-bamm")


@pytest.fixture(scope="module")
def generator(bamm_dir: Path) -> Generator:
    return Generator(load_model_dir(bamm_dir), text_encoder=None, batch_size=4)


def test_model_directory_records_the_generator(bamm_dir: Path) -> None:
    config = json.loads((bamm_dir / "config.json").read_text())
    assert config["generator"] == "bamm"
    models = load_model_dir(bamm_dir)
    assert isinstance(models.mask_transformer, BammTransformer)
    assert "base-layer generator `bamm`" in (bamm_dir / "MODEL_CARD.md").read_text()
    broken = dict(config, generator="gpt")
    with pytest.raises(ValueError, match="generator 'gpt' is unknown"):
        ModelConfig.from_dict(broken)
    ssm = dict(config, mask_transformer=dict(config["mask_transformer"], backbone="mamba"))
    with pytest.raises(ValueError, match="generator 'bamm' needs mask_transformer.backbone 'transformer'"):
        ModelConfig.from_dict(ssm)
    del config["generator"]  # directories from before the field are MoMask ones
    assert ModelConfig.from_dict(config).generator == "momask"


def test_generation_ends_at_end_without_a_length_and_honours_a_requested_one(generator: Generator) -> None:
    features = torch.randn(6, TEXT_DIM, generator=torch.Generator().manual_seed(2))
    motions = generator.generate_from_features(features, list(range(6)), [None] * 5 + [12], smpl=False,
                                               foot_cleanup=False)
    lengths = [len(m.tokens) for m in motions[:5]]
    assert all(m.length_from == "end_token" for m in motions[:5]) and motions[5].length_from == "request"
    assert min(lengths) >= 1 and max(lengths) < SEQ_LEN and len(set(lengths)) > 1, lengths
    assert len(motions[5].tokens) == 12 and motions[5].num_frames == 48
    for motion in motions:
        assert motion.features.shape == (4 * len(motion.tokens), 263)
        assert np.all((motion.base_tokens >= 0) & (motion.base_tokens < 16))


def test_generation_is_reproducible_per_seed_and_independent_of_the_batch(generator: Generator) -> None:
    features = torch.randn(3, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    together = generator.generate_from_features(features[[0, 0, 1, 2]], [7, 8, 7, 7], [None, None, 10, None],
                                                smpl=False, foot_cleanup=False)
    alone = generator.generate_from_features(features[[0]], [8], [None], smpl=False, foot_cleanup=False)[0]
    again = generator.generate_from_features(features[[0]], [7], [None], smpl=False, foot_cleanup=False)[0]
    np.testing.assert_array_equal(alone.tokens, together[1].tokens)
    np.testing.assert_array_equal(again.tokens, together[0].tokens)
    assert not np.array_equal(together[0].tokens[:, 0], together[1].tokens[:, 0])  # seeds differ
    assert len(together[2].tokens) == 10


def test_training_step_fits_a_batch_and_scores_every_position_up_to_end() -> None:
    torch.manual_seed(0)
    model = BammTransformer(dataclasses.replace(TINY, dropout=0.0, cond_drop_prob=0.0)).train()
    ids = torch.randint(0, 16, (4, 12))
    lengths = torch.tensor([12, 9, 5, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, pred, accuracy = model(ids, torch.randn(4, TEXT_DIM, generator=torch.Generator().manual_seed(1)),
                                     lengths)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pred.shape == (4, 13) and loss.item() < 0.3 * first
    assert int(pred[3, 1]) == model.end_id and float(accuracy) > 0.8  # END right after the last token


def test_cli_trains_a_bamm_model_and_generates_from_it(tmp_path: Path, capsys) -> None:
    from test_training import tiny_config as training_config, write_dataset

    dataset = write_dataset(tmp_path / "data", [64, 80, 100, 57, 120])
    config = tmp_path / "bamm.json"
    config.write_text(json.dumps(dataclasses.replace(training_config(), generator="bamm",
                                                     length_estimator=None).to_dict()), encoding="utf-8")
    out = tmp_path / "model"
    common = ["--data", str(dataset), "--out", str(out), "--iters", "3", "--batch-size", "4", "--warmup-iters", "1",
              "--window-size", "32", "--device", "cpu", "--no-progress"]
    for stage in ("vq", "mask", "residual"):
        assert cli.main(["train", stage, *(["--config", str(config)] if stage == "vq" else []), *common]) == 0
        assert json.loads(capsys.readouterr().out)["iterations"] == 3
    generator = Generator.from_dir(out)
    assert isinstance(generator.models.mask_transformer, BammTransformer) and generator.chooses_length
    motion = generator.generate([GenerationRequest("a person walks forward", seed=1)], smpl=False)[0]
    assert motion.length_from == "end_token" and 1 <= len(motion.tokens) <= SEQ_LEN
    capsys.readouterr()
    npz = tmp_path / "walk.npz"
    assert cli.main(["generate", "a person walks forward", "--model", str(out), "--seed", "1", "--out", str(npz),
                     "--refine-cond-scale", "2.5", "--no-foot-cleanup"]) == 0
    metadata = json.loads(str(np.load(npz)["metadata"]))
    assert metadata["length_from"] == "end_token" and metadata["sampling"]["refine_cond_scale"] == 2.5
