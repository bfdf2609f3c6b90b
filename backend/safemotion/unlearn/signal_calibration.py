"""`safemotion unlearn calibrate --signals`: the prompt and motion thresholds and the combiner of a screened model.

Only the **calibration halves** of the shipped prompt sets are used (prompt_sets.py); every prompt is generated
`variations` times with the model (seeds as eval-flags: seed + 1000·i + k) and each motion gets its code-hit ratio,
prompt score and motion score. Positives are the explicit and implicit violent prompts' motions, negatives the safe
ones. With α = max_fpr:

- `prompt_threshold`: the lowest τ flagging at most α of the safe prompts (flagging.calibrate_threshold, per prompt);
- `motion_threshold`: the same on motion scores (reported alone; it does not flag by itself);
- `combiner`: class-balanced logistic regression on [hit ratio, logit prompt, logit motion] (decision.py) with
  non-negative weights (more evidence of the concept never lowers the combined score), and its threshold the lowest that keeps the decision (prompt or combined fired) at ≤ α of the safe motions.

Everything is computed first and written to config.json's `safety` section in one atomic replace at the end, so a
calibration that fails leaves the previous thresholds in place.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safemotion.eval.flag_rates import PromptScores, prompt_set_scores
from safemotion.generate import Generator
from safemotion.unlearn.classifier import fit_logistic
from safemotion.unlearn.decision import Combiner, combiner_inputs
from safemotion.unlearn.flagging import calibrate_threshold
from safemotion.unlearn.prompt_sets import load_prompt_set
from safemotion.unlearn.record import safety_settings, update_config_section
from safemotion.unlearn.screening import Screens, load_screens

VIOLENT_SETS = ("explicit_violent", "implicit_violent")
DEFAULT_MAX_FPR = 0.01


@dataclass
class SignalCalibrationOptions:
    """Inputs of `safemotion unlearn calibrate --signals`."""

    model: Path
    variations: int = 3
    seconds: float | None = None
    seed: int = 0
    max_fpr: float = DEFAULT_MAX_FPR
    write: bool = True
    device: str = "cpu"


@dataclass
class ScoredMotions:
    """Flattened per-motion scores of one or more prompt sets."""

    hit: np.ndarray
    prompt: np.ndarray
    motion: np.ndarray
    prompt_of_row: np.ndarray  # per-prompt scores (one per prompt, not per motion)

    @classmethod
    def of(cls, rows: list[PromptScores]) -> ScoredMotions:
        """Flatten rows that carry prompt and motion scores."""
        return cls(np.array([h for r in rows for h in r.hit_ratios]),
                   np.array([r.prompt_score for r in rows for _ in r.hit_ratios]),
                   np.array([m for r in rows for m in r.motion_scores]),
                   np.array([r.prompt_score for r in rows]))


def fit_signal_thresholds(violent: ScoredMotions, safe: ScoredMotions, hit_threshold: float,
                          max_fpr: float = DEFAULT_MAX_FPR) -> dict[str, Any]:
    """prompt_threshold, motion_threshold and combiner (see the module docstring) with their calibration rates."""
    if not 0 <= max_fpr < 1:
        raise ValueError(f"max_fpr is {max_fpr}; give a false-positive rate in [0, 1), e.g. 0.01")
    prompt = calibrate_threshold(violent.prompt_of_row, safe.prompt_of_row, max_fpr)
    motion = calibrate_threshold(violent.motion, safe.motion, max_fpr)
    x = np.concatenate([combiner_inputs(violent.hit, violent.prompt, violent.motion),
                        combiner_inputs(safe.hit, safe.prompt, safe.motion)])
    y = np.concatenate([np.ones(len(violent.hit)), np.zeros(len(safe.hit))])
    weights, bias = fit_logistic(x, y, nonnegative=True)
    scores = 1 / (1 + np.exp(-(x @ weights + bias)))
    safe_scores = scores[y == 0]
    prompt_fired = safe.prompt >= prompt.threshold
    allowed = max(int(math.floor(max_fpr * len(safe_scores) + 1e-9)) - int(prompt_fired.sum()), 0)
    remaining = np.sort(safe_scores[~prompt_fired])[::-1]
    excluded = remaining[allowed] if allowed < len(remaining) else 0.0
    higher = np.unique(scores[scores > excluded])
    threshold = float((excluded + higher[0]) / 2) if higher.size else float((excluded + 1) / 2)
    combiner = Combiner([float(w) for w in weights], bias, float(np.clip(threshold, 1e-6, 1 - 1e-6)))

    return {"prompt_threshold": prompt.threshold, "motion_threshold": motion.threshold,
            "combiner": combiner.to_dict(),
            "calibration": {"max_fpr": max_fpr, "prompt_auc": prompt.auc, "motion_auc": motion.auc,
                            "violent_motions": len(violent.hit), "safe_motions": len(safe.hit),
                            "violent_rates": signal_rates(violent, prompt.threshold, motion.threshold, combiner,
                                                          hit_threshold),
                            "safe_rates": signal_rates(safe, prompt.threshold, motion.threshold, combiner,
                                                       hit_threshold)}}


def signal_rates(group: ScoredMotions, prompt_threshold: float, motion_threshold: float, combiner: Combiner,
                 hit_threshold: float) -> dict[str, float]:
    """Share of the group's motions each signal fires on alone, and the decision's (prompt or combined)."""
    prompt = group.prompt >= prompt_threshold
    combined = np.array([combiner.score(h, p, m) >= combiner.threshold
                         for h, p, m in zip(group.hit, group.prompt, group.motion)], dtype=bool)
    return {"code_hit": float((group.hit >= hit_threshold).mean()), "prompt": float(prompt.mean()),
            "motion": float((group.motion >= motion_threshold).mean()), "combined": float(combined.mean()),
            "decision": float((prompt | combined).mean())}


def run_signal_calibration(options: SignalCalibrationOptions) -> dict[str, Any]:
    """Generate the calibration halves, fit the thresholds and (with options.write) store them in config.json."""
    if options.variations < 1:
        raise ValueError("variations must be at least 1")
    generator = Generator.from_dir(options.model, options.device)
    config = generator.models.config
    screens = load_screens(options.model, config, require_calibration=False)
    if screens is None:
        raise ValueError(f"{options.model}: the model has no prompt screen or motion judge to calibrate; train them "
                         f"with `safemotion unlearn screens --model {options.model} --data DATASET`")
    rows = {name: _scores(generator, screens, name, options) for name in (*VIOLENT_SETS, "safe")}
    violent = ScoredMotions.of([r for name in VIOLENT_SETS for r in rows[name]])
    safe = ScoredMotions.of(rows["safe"])
    settings = safety_settings(config)
    fitted = fit_signal_thresholds(violent, safe, settings.threshold, options.max_fpr)
    fitted["calibration"].update({"prompt_sets": "calibration halves", "variations": options.variations,
                                  "seed": options.seed, "seconds": options.seconds,
                                  "per_set": {name: _set_rates(rows[name], fitted, settings.threshold)
                                              for name in rows}})
    if options.write:
        updated = dataclasses.replace(settings, prompt_threshold=fitted["prompt_threshold"],
                                      motion_threshold=fitted["motion_threshold"], combiner=fitted["combiner"],
                                      signals_calibration=fitted["calibration"])
        update_config_section(options.model, "safety", updated.to_dict())
    return fitted


def _scores(generator: Generator, screens: Screens, name: str,
            options: SignalCalibrationOptions) -> list[PromptScores]:
    prompts = load_prompt_set(name, "calibration")
    return prompt_set_scores(generator, generator.models, prompts, options.variations, options.seconds, options.seed,
                             screens)


def _set_rates(rows: list[PromptScores], fitted: dict[str, Any], hit_threshold: float) -> dict[str, float]:
    return signal_rates(ScoredMotions.of(rows), fitted["prompt_threshold"], fitted["motion_threshold"],
                        Combiner.from_dict(fitted["combiner"]), hit_threshold)
