"""Flagging of generated motions by their hits on LCR-removed codes, and what each safety policy does with them.

LCR leaves the transformers unchanged, so the base-layer ids a prompt generates are those of the original model; the
fraction that falls in the removed set is a per-motion concept signal (hmu_unlearning.md §8, SafeMotion's design):

    hit_ratio = |{t < n : ids0[t] ∈ removed}| / n ,   flagged = hit_ratio ≥ threshold

Hit token t covers frames [t·u, (t+1)·u) (u = unit length); adjacent hit tokens merge into one span, end exclusive.

Policies (`review` decides, the generator acts):
- ``sanitize`` (default): return the motion decoded with the LCR codebook, with the flag.
- ``block``: a flagged motion is refused (no motion), with the reason.
- ``allow``: decode every motion with the ORIGINAL codebook (`original_codebook_models`), flag still reported.

A screened model (screening.py) adds the prompt screen and the motion judge: `review` then takes each motion's prompt
and motion scores and the combined decision of decision.py decides `flagged`; every record lists its signals (score,
threshold, fired) and says in one sentence why. A request whose prompt fires before generation is refused under
``block`` without generating (`refused_before_generation`).

The threshold comes from the model's `safety` section: `calibrate_threshold` picks the τ that maximises Youden's J
(TPR − FPR, equivalently balanced accuracy) between hit ratios of explicit concept captions and of safe captions
(calibration.py runs it on a dataset's validation split); until then the uncalibrated default applies.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from safemotion.models.model_dir import MotionModels
from safemotion.unlearn.decision import Decision, Signal, with_code_hits_deciding
from safemotion.unlearn.policies import DEFAULT_POLICY, check_policy
from safemotion.unlearn.record import (
    load_original_codebooks,
    removed_base_codes,
    safety_settings,
    unlearning_record,
)

if TYPE_CHECKING:
    from safemotion.unlearn.screening import Screens

DECISIONS = ("pass", "sanitized", "blocked", "allowed")


@dataclass
class SafetyRecord:
    """The safety assessment of one motion and the policy's decision."""

    concept: str
    policy: str
    decision: str  # pass (not flagged), sanitized, blocked, allowed
    flagged: bool
    hit_ratio: float
    threshold: float
    num_tokens: int
    hit_tokens: list[int]
    spans: list[tuple[int, int]]  # frames [start, end)
    unit_length: int
    calibrated: bool = True
    reason: str = ""
    signals: list[Signal] = field(default_factory=list)  # every signal that judged the motion
    screened: bool = False  # prompt screen and motion judge took part (else the code-hit ratio alone)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        data = dataclasses.asdict(self)
        data["spans"] = [list(span) for span in self.spans]
        return data


def hit_token_indices(base_tokens: np.ndarray | Sequence[int], removed_codes: Iterable[int],
                      also: np.ndarray | None = None) -> np.ndarray:
    """Indices t of valid (≥ 0) base tokens whose id, or the id also[t] (a second reading of the same token, −1 for
    none), is a removed code."""
    ids = np.asarray(base_tokens, dtype=np.int64).reshape(-1)
    removed = np.fromiter(removed_codes, dtype=np.int64)
    hits = np.isin(ids, removed)
    if also is not None:
        other = np.asarray(also, dtype=np.int64).reshape(-1)
        if other.shape != ids.shape:
            raise ValueError(f"{len(other)} second-reading ids for {len(ids)} base tokens; give one per token")
        hits |= np.isin(other, removed) & (other >= 0)
    return np.flatnonzero(hits & (ids >= 0))


def hit_ratio(base_tokens: np.ndarray | Sequence[int], removed_codes: Iterable[int],
              also: np.ndarray | None = None) -> float:
    """Share of a motion's valid (≥ 0) base tokens that hit a removed code (hit_token_indices; 0 without valid
    tokens)."""
    return _hits(base_tokens, removed_codes, also)[2]


def merge_spans(token_indices: Iterable[int], unit_length: int) -> list[tuple[int, int]]:
    """Frame spans [t·u, (t+1)·u) of the given tokens, sorted, adjacent or overlapping ones merged."""
    if unit_length < 1:
        raise ValueError(f"unit_length must be positive, got {unit_length}")
    spans: list[tuple[int, int]] = []
    for t in sorted(set(int(t) for t in token_indices)):
        start, end = t * unit_length, (t + 1) * unit_length
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def assess(base_tokens: np.ndarray | Sequence[int], removed_codes: Iterable[int], unit_length: int, threshold: float,
           policy: str = DEFAULT_POLICY, concept: str = "violence", calibrated: bool = True,
           screening: Decision | None = None, also: np.ndarray | None = None) -> SafetyRecord:
    """Hits, ratio, flag, spans and the policy's decision for one motion's base tokens (negative ids = padding; a
    token also hits when its id in `also` is removed, see hit_token_indices); with `screening` (a screened model's
    decision over all signals) that decision sets the flag."""
    return _assessed(_hits(base_tokens, removed_codes, also), unit_length, threshold, policy, concept, calibrated,
                     screening)


def _hits(base_tokens: np.ndarray | Sequence[int], removed_codes: Iterable[int],
          also: np.ndarray | None) -> tuple[int, np.ndarray, float]:
    """(valid tokens, hit_token_indices, hit ratio) of one motion's base tokens, the hits counted once."""
    ids = np.asarray(base_tokens, dtype=np.int64).reshape(-1)
    num_tokens = int((ids >= 0).sum())
    hits = hit_token_indices(ids, removed_codes, also)
    return num_tokens, hits, len(hits) / num_tokens if num_tokens else 0.0


def _assessed(counted: tuple[int, np.ndarray, float], unit_length: int, threshold: float, policy: str, concept: str,
              calibrated: bool, screening: Decision | None) -> SafetyRecord:
    """assess's record from the hits _hits counted."""
    check_policy(policy)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    num_tokens, hits, ratio = counted
    if screening is None:
        flagged = num_tokens > 0 and ratio >= threshold
        decision, reason = _decide(policy, flagged, ratio, len(hits), num_tokens, threshold, concept)
        signals = [Signal("code_hit", ratio, threshold, flagged)]
    else:
        flagged = screening.flagged
        decision, reason = _screened_decision(policy, screening)
        signals = screening.signals
    return SafetyRecord(concept=concept, policy=policy, decision=decision, flagged=flagged, hit_ratio=ratio,
                        threshold=threshold, num_tokens=num_tokens, hit_tokens=hits.tolist(),
                        spans=merge_spans(hits, unit_length), unit_length=unit_length, calibrated=calibrated,
                        reason=reason, signals=signals, screened=screening is not None)


def refused_before_generation(prompt_decision: Decision, concept: str, threshold: float,
                              unit_length: int) -> SafetyRecord:
    """The record of a request refused under `block` because its prompt fired: nothing was generated."""
    return SafetyRecord(concept=concept, policy="block", decision="blocked", flagged=True, hit_ratio=0.0,
                        threshold=threshold, num_tokens=0, hit_tokens=[], spans=[], unit_length=unit_length,
                        reason=f"refused without generating: {prompt_decision.why}", signals=prompt_decision.signals,
                        screened=True)


def _screened_decision(policy: str, screening: Decision) -> tuple[str, str]:
    if not screening.flagged:
        return "pass", screening.why
    if policy == "block":
        return "blocked", f"refused: {screening.why}"
    if policy == "allow":
        return "allowed", f"allowed: {screening.why}; decoded with the original codebook"
    return "sanitized", f"{screening.why}; returned with the removed codes replaced (LCR)"


def _decide(policy: str, flagged: bool, ratio: float, hits: int, tokens: int, threshold: float,
            concept: str) -> tuple[str, str]:
    share = f"{ratio:.0%} of the motion's base tokens ({hits}/{tokens}) use codes removed for '{concept}'"
    if not flagged:
        return "pass", f"{share}, below the {threshold:.0%} threshold"
    if policy == "block":
        return "blocked", f"refused: {share} (threshold {threshold:.0%})"
    if policy == "allow":
        return "allowed", f"flagged but allowed: {share}; decoded with the original codebook"
    return "sanitized", f"flagged: {share}; returned with the removed codes replaced (LCR)"


def review(models: MotionModels, base_tokens: Sequence[np.ndarray], policy: str = DEFAULT_POLICY,
           screens: Screens | None = None, prompt_scores: Sequence[float] | None = None,
           motion_scores: Sequence[float] | None = None, edit: bool = False,
           also_tokens: Sequence[np.ndarray | None] | None = None) -> list[SafetyRecord] | None:
    """One SafetyRecord per motion from its base-layer ids (and, with `screens`, its prompt and motion scores), or
    None when the model has no removed base codes. For an `edit` of an existing take the code-hit signal also flags
    on its own (decision.with_code_hits_deciding), and `also_tokens` gives each motion's second reading of its kept
    tokens (see hit_token_indices).

    Under ``allow`` the generator decodes every motion with `original_codebook_models`; under ``block`` it drops the
    motions whose decision is "blocked".
    """
    check_policy(policy)
    removed = removed_base_codes(models.config)
    if not removed:
        return None
    record = unlearning_record(models.config)
    safety = safety_settings(models.config)
    records = []
    for i, tokens in enumerate(base_tokens):
        counted = _hits(tokens, removed, None if also_tokens is None else also_tokens[i])
        screening = None
        if screens is not None:
            if prompt_scores is None or motion_scores is None:
                raise ValueError("a screened model needs each motion's prompt and motion score")
            screening = screens.decide(counted[2], safety.threshold, float(prompt_scores[i]), float(motion_scores[i]))
            if edit:
                screening = with_code_hits_deciding(screening)
        records.append(_assessed(counted, models.config.unit_length, safety.threshold, policy, record.concept,
                                 safety.calibrated, screening))
    return records


def original_codebook_models(models: MotionModels, model_dir: str | Path) -> MotionModels:
    """A copy of `models` whose VQ has the original (pre-LCR) codebooks back; transformers are shared, not copied."""
    originals = load_original_codebooks(model_dir)
    vq = copy.deepcopy(models.vq)
    for layer, codebook in originals.items():
        target = vq.quantizer.layers[layer].codebook
        if target.shape != codebook.shape:
            raise ValueError(f"{model_dir}: original codebook of layer {layer} is {tuple(codebook.shape)}, the model's "
                             f"is {tuple(target.shape)}")
        target.copy_(codebook.to(device=target.device, dtype=target.dtype))
    return dataclasses.replace(models, vq=vq)


@dataclass
class ThresholdCalibration:
    """The chosen threshold and how well it separates the two score sets."""

    threshold: float
    youden_j: float
    balanced_accuracy: float
    true_positive_rate: float
    false_positive_rate: float
    precision: float
    auc: float
    n_positive: int
    n_negative: int
    criterion: str = "youden_j"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)


def calibrate_threshold(positive_scores: Sequence[float], negative_scores: Sequence[float],
                        max_fpr: float | None = None) -> ThresholdCalibration:
    """The flagging threshold τ > 0 (flagged = score ≥ τ; positive = concept captions) by one of two criteria.

    - max_fpr None: τ maximising Youden's J = TPR − FPR. Candidates are the distinct positive scores > 0; ties in J
      pick the higher τ.
    - max_fpr α: the lowest τ whose false-positive rate on the negatives is ≤ α (Neyman–Pearson: bound false alarms,
      flag as much as possible). On separable scores Youden's J puts τ just under the lowest positive, the top of the
      gap; this criterion puts it just over the highest tolerated negative, its bottom.

    τ is placed midway between the chosen score and its neighbour among all distinct scores (any τ in that interval
    classifies the calibration data identically).
    """
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"calibration needs scores on both sides, got {pos.size} positive and {neg.size} negative")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("calibration scores must be finite")
    if max_fpr is not None and not 0.0 <= max_fpr < 1.0:
        raise ValueError(f"max_fpr is {max_fpr}; give a false-positive rate in [0, 1), e.g. 0.01")
    candidates = np.unique(pos[pos > 0])
    if candidates.size == 0:
        raise ValueError("no positive (concept) sample has a score above 0; the removed codes never occur in them, "
                         "so no threshold can flag them")
    scores = np.unique(np.concatenate([pos, neg]))
    if max_fpr is None:
        best, best_j = candidates[-1], -np.inf
        for tau in candidates[::-1]:
            j = (pos >= tau).mean() - (neg >= tau).mean()
            if j > best_j:
                best, best_j = tau, j
        lower = scores[scores < best]
        threshold = float((best + lower[-1]) / 2) if lower.size else float(best / 2)
        criterion = "youden_j"
    else:
        tolerated = int(np.floor(max_fpr * neg.size + 1e-9))  # negatives allowed at or above τ
        excluded = np.sort(neg)[::-1][tolerated] if tolerated < neg.size else -np.inf
        if excluded < 0:  # every negative may be flagged: flag every score above 0
            excluded = 0.0
        higher = scores[scores > excluded]
        threshold = float((excluded + higher[0]) / 2) if higher.size else float((excluded + 1.0) / 2)
        criterion = f"max_fpr={max_fpr:g}"
    tpr, fpr = float((pos >= threshold).mean()), float((neg >= threshold).mean())
    flagged = (pos >= threshold).sum() + (neg >= threshold).sum()
    return ThresholdCalibration(
        threshold=threshold, youden_j=tpr - fpr, balanced_accuracy=(tpr + 1 - fpr) / 2, true_positive_rate=tpr,
        false_positive_rate=fpr, precision=float((pos >= threshold).sum() / flagged) if flagged else 0.0,
        auc=roc_auc(pos, neg), n_positive=int(pos.size), n_negative=int(neg.size), criterion=criterion,
    )


def roc_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Area under the ROC curve = P(positive > negative) + ½ P(tie), from average ranks (Mann–Whitney U)."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
