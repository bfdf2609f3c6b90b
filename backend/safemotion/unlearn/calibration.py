"""`safemotion unlearn calibrate`: measure the flagging threshold of an LCR model on a dataset's validation split.

Positives are the explicit concept captions (caption lines of forget-split clips that match the concept rule, e.g.
"a person punches forward"); negatives are the caption lines of retain-split clips. Each caption is generated
`samples` times with the model's masked transformer (base layer only, at the caption's ground-truth token length,
seeds seed, seed+1, ...), its score is the mean fraction of base tokens in the removed codes, and
`flagging.calibrate_threshold` picks the τ maximising Youden's J, or with `max_fpr` the lowest τ whose false-positive
rate on the retain captions stays ≤ max_fpr. The result is written to config.json's `safety` section (threshold,
calibrated = true, the rates and the caption counts).

Audits (`safemotion audit`) score real mocap, not generated tokens, so they get their own threshold
(`run_audit_calibration`, `calibrate --audit`): each whole clip of the split's forget and retain lists is encoded with
the model's original codebooks, its score is the fraction of its base tokens in the removed codes, and the same
criteria pick `audit_threshold` (stored beside the other, with its own calibration record).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from safemotion.data.concepts import load_concept
from safemotion.data.motion_dataset import FPS, load_motion, read_captions
from safemotion.base_decoding import decode_base_layer
from safemotion.decoding import SamplingConfig
from safemotion.generate import pick_device
from safemotion.models.model_dir import MotionModels, load_model_dir
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.portable_path import portable_path
from safemotion.unlearn.concept_split import load_concept_split
from safemotion.unlearn.audit import encode_features
from safemotion.unlearn.flagging import (
    ThresholdCalibration,
    calibrate_threshold,
    hit_token_indices,
    original_codebook_models,
)
from safemotion.unlearn.record import (
    removed_base_codes,
    safety_settings,
    unlearning_record,
    update_config_section,
)

DEFAULT_MAX_CAPTIONS = 500
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class CaptionSample:
    """A caption and the token length of the (sub)clip it describes."""

    caption: str
    tokens: int


@dataclass
class CalibrationOptions:
    """Inputs of `safemotion unlearn calibrate`."""

    model: Path
    data: Path
    split: str = "val"
    max_captions: int = DEFAULT_MAX_CAPTIONS  # per side, drawn at random (seeded) when more exist
    samples: int = 1
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_fpr: float | None = None  # None: Youden's J; else the lowest τ with false-positive rate ≤ max_fpr
    write: bool = True
    clip_weights: Path | None = None
    clip_vocab: Path | None = None


def calibration_captions(dataset: str | Path, concept: str, rule: str, split: str, unit_length: int,
                         max_tokens: int, max_captions: int = DEFAULT_MAX_CAPTIONS,
                         seed: int = 0) -> tuple[list[CaptionSample], list[CaptionSample]]:
    """(explicit concept captions of forget clips, captions of retain clips), at most max_captions each."""
    dataset = Path(dataset)
    concept_split = load_concept_split(dataset, concept, rule, split)
    matcher = load_concept(concept, rule)
    rng = np.random.default_rng(seed)
    sides = []
    for ids, explicit_only in ((concept_split.forget_ids, True), (concept_split.retain_ids, False)):
        samples = []
        for clip_id in sorted(ids):
            frames = len(load_motion(dataset, clip_id))
            for line in read_captions(dataset / "texts" / f"{clip_id}.txt"):
                if explicit_only and not matcher.matches(line.caption):
                    continue
                start = int(line.start * FPS) if line.start > 0 else 0
                end = min(int(line.end * FPS) if line.end > 0 else frames, frames)
                tokens = min((end - start) // unit_length, max_tokens)
                if tokens >= 1:
                    samples.append(CaptionSample(line.caption, tokens))
        if len(samples) > max_captions:
            keep = np.sort(rng.choice(len(samples), max_captions, replace=False))
            samples = [samples[i] for i in keep]
        sides.append(samples)
    if not sides[0] or not sides[1]:
        raise ValueError(f"{dataset}: split '{split}' has {len(sides[0])} explicit '{concept}' captions and "
                         f"{len(sides[1])} retain captions; calibration needs both")
    return sides[0], sides[1]


@torch.inference_mode()
def hit_ratio_scores(models: MotionModels, features: Tensor, tokens: list[int], seeds: list[int],
                     sampling: SamplingConfig, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Fraction of generated base tokens in the removed codes, per row of features (N, text_dim), one seed each."""
    removed = removed_base_codes(models.config)
    if not removed:
        raise ValueError("the model has no removed base-layer codes; calibrate an LCR model")
    device = next(models.mask_transformer.parameters()).device
    scores = np.zeros(len(tokens))
    order = sorted(range(len(tokens)), key=lambda i: tokens[i])
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        lengths = torch.tensor([tokens[i] for i in batch])
        generators = [torch.Generator().manual_seed(seeds[i]) for i in batch]
        ids, _ = decode_base_layer(models.mask_transformer, features[batch].float().to(device), lengths, generators,
                                   sampling, models.config.max_motion_length // models.config.unit_length)
        for row, i in enumerate(batch):
            scores[i] = len(hit_token_indices(ids[row, :tokens[i]].cpu().numpy(), removed)) / tokens[i]
    return scores


def run_calibration(options: CalibrationOptions, encoder: TextEncoder | None = None) -> ThresholdCalibration:
    """Calibrate the LCR model's threshold on the dataset and (with options.write) store it in its config."""
    if options.samples < 1 or options.max_captions < 1:
        raise ValueError("samples and max_captions must be at least 1")
    device = pick_device(options.device)
    models = load_model_dir(options.model, device=device)
    record = unlearning_record(models.config)
    if record is None or not removed_base_codes(models.config):
        raise ValueError(f"{options.model}: no removed base-layer codes; run `safemotion unlearn lcr` first")
    config = models.config
    positives, negatives = calibration_captions(
        options.data, record.concept, record.rule, options.split, config.unit_length,
        config.max_motion_length // config.unit_length, options.max_captions, options.seed)
    if encoder is None:
        encoder = load_text_encoder(config.text_encoder, device, options.clip_weights, options.clip_vocab)
    side_scores = []
    for samples in (positives, negatives):
        features = encoder.encode([s.caption for s in samples]).float()
        tokens = [s.tokens for s in samples]
        runs = [hit_ratio_scores(models, features, tokens, [options.seed + k] * len(samples), options.sampling,
                                 options.batch_size) for k in range(options.samples)]
        side_scores.append(np.mean(runs, axis=0))
    calibration = calibrate_threshold(side_scores[0], side_scores[1], options.max_fpr)
    if options.write:
        context = {"dataset": portable_path(options.data), "split": options.split,
                   "samples_per_caption": options.samples, "seed": options.seed,
                   "sampling": vars(options.sampling), **calibration.to_dict()}
        settings = dataclasses.replace(safety_settings(config), threshold=calibration.threshold, calibrated=True,
                                       calibration=context)
        update_config_section(options.model, "safety", settings.to_dict())
    return calibration


def clip_hit_ratios(models: MotionModels, dataset: str | Path, clip_ids: list[str], removed: list[int]) -> np.ndarray:
    """Fraction of base tokens in `removed` for each whole clip of the dataset, encoded by `models`' VQ."""
    scores = []
    for clip_id in clip_ids:
        try:
            base = encode_features(models, load_motion(dataset, clip_id))[:, 0]
        except ValueError as err:
            raise ValueError(f"{dataset}: clip '{clip_id}': {err}") from None
        scores.append(len(hit_token_indices(base, removed)) / len(base))
    return np.array(scores)


def run_audit_calibration(options: CalibrationOptions) -> ThresholdCalibration:
    """Calibrate the LCR model's audit threshold on the real clips of a split (forget vs retain) and store it."""
    device = pick_device(options.device)
    models = load_model_dir(options.model, device=device)
    record = unlearning_record(models.config)
    removed = removed_base_codes(models.config)
    if record is None or not removed:
        raise ValueError(f"{options.model}: no removed base-layer codes; run `safemotion unlearn lcr` first")
    split = load_concept_split(options.data, record.concept, record.rule, options.split)
    original = original_codebook_models(models, options.model)
    positive = clip_hit_ratios(original, options.data, sorted(split.forget_ids), removed)
    negative = clip_hit_ratios(original, options.data, sorted(split.retain_ids), removed)
    calibration = calibrate_threshold(positive, negative, options.max_fpr)
    if options.write:
        context = {"dataset": portable_path(options.data), "split": options.split, "clips": "whole clips",
                   **calibration.to_dict()}
        settings = dataclasses.replace(safety_settings(models.config), audit_threshold=calibration.threshold,
                                       audit_calibration=context)
        update_config_section(options.model, "safety", settings.to_dict())
    return calibration
