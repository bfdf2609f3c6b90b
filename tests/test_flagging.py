"""Flagging: hit tokens and ratio, merged frame spans, threshold calibration on synthetic scores, the three
policies, and swapping the original codebook back for `allow`."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from safemotion.models.model_dir import load_model_dir
from safemotion.unlearn.flagging import (
    assess,
    calibrate_threshold,
    hit_token_indices,
    merge_spans,
    original_codebook_models,
    review,
    roc_auc,
)
from safemotion.unlearn.record import (
    ORIGINAL_CODEBOOKS_FILE,
    UnlearningRecord,
    codebook_tensors,
    save_unlearned_model,
)
from tiny_unlearn_model import tiny_models

REMOVED = [3, 7, 11]


def test_hits_ratio_and_spans():
    tokens = np.array([3, 0, 7, 7, 1, 11, -1, -1])  # two padding positions
    assert hit_token_indices(tokens, REMOVED).tolist() == [0, 2, 3, 5]
    record = assess(tokens, REMOVED, unit_length=4, threshold=0.5)
    assert record.num_tokens == 6 and record.hit_ratio == pytest.approx(4 / 6)
    assert record.flagged and record.decision == "sanitized"
    assert record.spans == [(0, 4), (8, 16), (20, 24)]
    assert record.to_dict()["spans"] == [[0, 4], [8, 16], [20, 24]]
    assert "67% of the motion's base tokens (4/6)" in record.reason


def test_a_second_reading_of_a_token_adds_hits_and_never_removes_them():
    tokens = np.array([3, 0, 0, 1, -1])
    also = np.array([0, 7, -1, 1, 11])  # token 1 re-reads as removed; no reading at 2; padding at 4 stays padding
    assert hit_token_indices(tokens, REMOVED, also).tolist() == [0, 1]
    record = assess(tokens, REMOVED, unit_length=4, threshold=0.5, also=also)
    assert record.hit_tokens == [0, 1] and record.hit_ratio == pytest.approx(2 / 4) and record.flagged
    with pytest.raises(ValueError, match="4 second-reading ids for 5 base tokens"):
        hit_token_indices(tokens, REMOVED, also[:4])


def test_spans_merge_adjacent_and_duplicate_tokens():
    assert merge_spans([5, 4, 4, 9, 6], unit_length=2) == [(8, 14), (18, 20)]
    assert merge_spans([], 4) == []
    with pytest.raises(ValueError, match="unit_length"):
        merge_spans([1], 0)


def test_threshold_edges_and_empty_motion():
    tokens = [3, 0, 0, 0]
    assert assess(tokens, REMOVED, 4, threshold=0.25).flagged  # ratio equal to the threshold flags
    assert not assess(tokens, REMOVED, 4, threshold=0.26).flagged
    empty = assess([-1, -1], REMOVED, 4, threshold=0.1)
    assert empty.num_tokens == 0 and empty.hit_ratio == 0.0 and not empty.flagged
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        assess(tokens, REMOVED, 4, threshold=0.0)
    with pytest.raises(ValueError, match="policy 'warn' is unknown"):
        assess(tokens, REMOVED, 4, threshold=0.2, policy="warn")


@pytest.mark.parametrize("policy, flagged_decision", [("sanitize", "sanitized"), ("block", "blocked"),
                                                      ("allow", "allowed")])
def test_policies(policy, flagged_decision):
    flagged = assess([3, 7, 0, 0], REMOVED, 4, threshold=0.5, policy=policy, concept="violence")
    calm = assess([3, 0, 0, 0], REMOVED, 4, threshold=0.5, policy=policy)
    assert flagged.decision == flagged_decision and flagged.policy == policy
    assert calm.decision == "pass" and not calm.flagged
    if policy == "block":
        assert flagged.reason.startswith("refused: 50%") and "'violence'" in flagged.reason


def test_calibration_on_separable_scores():
    positive = [0.30, 0.40, 0.50, 0.60]
    negative = [0.00, 0.05, 0.10, 0.20]
    result = calibrate_threshold(positive, negative)
    assert result.threshold == pytest.approx(0.25)  # midway between 0.20 and the lowest positive 0.30
    assert result.youden_j == 1.0 and result.balanced_accuracy == 1.0 and result.auc == 1.0
    assert result.true_positive_rate == 1.0 and result.false_positive_rate == 0.0 and result.precision == 1.0


def test_calibration_on_overlapping_scores():
    rng = np.random.default_rng(0)
    positive = rng.normal(0.4, 0.1, 400).clip(0, 1)
    negative = rng.normal(0.2, 0.1, 600).clip(0, 1)
    result = calibrate_threshold(positive, negative)
    # equal-variance Gaussians: Youden's J is maximal midway between the means
    assert result.threshold == pytest.approx(0.3, abs=0.04)
    brute = max(((positive >= t).mean() - (negative >= t).mean()) for t in np.linspace(0.01, 1, 991))
    assert result.youden_j == pytest.approx(brute, abs=0.01)
    assert result.balanced_accuracy == pytest.approx((1 + result.youden_j) / 2)
    pairs = (positive[:, None] > negative[None]).mean() + 0.5 * (positive[:, None] == negative[None]).mean()
    assert result.auc == pytest.approx(pairs) and 0.85 < result.auc < 0.95
    assert result.n_positive == 400 and result.n_negative == 600


def test_calibration_at_a_bounded_false_positive_rate():
    positive = [0.30, 0.40, 0.50, 0.60]
    negative = [0.00, 0.02, 0.05, 0.10, 0.35]
    youden = calibrate_threshold(positive, negative)
    assert youden.threshold == pytest.approx(0.2) and youden.criterion == "youden_j"  # J = 1 - 0.2 beats 0.75 - 0
    strict = calibrate_threshold(positive, negative, max_fpr=0.0)  # no negative flagged: just above 0.35
    assert strict.threshold == pytest.approx(0.375) and strict.false_positive_rate == 0.0
    assert strict.true_positive_rate == 0.75 and strict.criterion == "max_fpr=0"
    loose = calibrate_threshold(positive, negative, max_fpr=0.2)  # one of five negatives tolerated: just above 0.10
    assert loose.threshold == pytest.approx(0.2) and loose.false_positive_rate == 0.2
    assert loose.true_positive_rate == 1.0
    everything = calibrate_threshold(positive, negative, max_fpr=0.99)  # 4 of 5 tolerated: above 0.00
    assert everything.threshold == pytest.approx(0.01) and everything.false_positive_rate == 0.8
    with pytest.raises(ValueError, match="max_fpr is 1.5"):
        calibrate_threshold(positive, negative, max_fpr=1.5)


def test_calibration_rejects_degenerate_inputs():
    with pytest.raises(ValueError, match="both sides"):
        calibrate_threshold([], [0.1])
    with pytest.raises(ValueError, match="no positive"):
        calibrate_threshold([0.0, 0.0], [0.1])
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5


def test_review_and_original_codebook_swap(tmp_path):
    models = tiny_models()
    assert review(models, [np.array([3, 7])]) is None  # not an LCR model: nothing to flag
    original = models.vq.quantizer.layers[0].codebook.clone()
    edited = models.vq.quantizer.layers[0].codebook
    edited[REMOVED] = edited[0] + 0.5
    record = UnlearningRecord(method="lcr", concept="violence", rule="word_boundary", split_files={}, settings={},
                              source_model={}, removed_codes={0: REMOVED},
                              original_codebooks=ORIGINAL_CODEBOOKS_FILE)
    out = save_unlearned_model(models, tmp_path / "lcr", record, "# card\n",
                               extra_files={ORIGINAL_CODEBOOKS_FILE: codebook_tensors({0: original})})
    lcr = load_model_dir(out)
    records = review(lcr, [np.array([3, 7, 11, 0]), np.array([0, 1, 2, 4, 5, 3])], "block")
    assert [r.decision for r in records] == ["blocked", "pass"] and not records[0].calibrated
    restored = original_codebook_models(lcr, out)
    assert torch.equal(restored.vq.quantizer.layers[0].codebook, original)
    assert torch.equal(lcr.vq.quantizer.layers[0].codebook, edited)  # the LCR model is left as it was
    assert restored.mask_transformer is lcr.mask_transformer
    ids = torch.tensor([[[3, -1, -1, -1, -1, -1]]])
    assert not torch.equal(restored.vq.forward_decoder(ids), lcr.vq.forward_decoder(ids))
