"""Flag rates of an LCR model on prompt sets, prompt by prompt and signal by signal.

Each prompt i of a set is generated `variations` times (seeds seed + 1000·i, +1, ...) and every motion's base tokens
are reviewed with a model's removed codes and threshold (`safemotion.unlearn.flagging.review`). LCR leaves the
transformers untouched, so the reviewing model may be another one that shares the generator's base codebook (the
benchmark scores the original, fine-tuned, UCE and RECE models with the LCR model's codes this way).

With the reviewing model's screens (safemotion.unlearn.screening) every motion also gets its prompt score and motion
score, and each set reports the rate of every signal alone (code_hit, prompt, motion, combined) beside the decision
(`rate`: prompt or combined fired). `prompt_set_scores` returns the raw scores without deciding, for
`safemotion unlearn calibrate --signals`.

The per-prompt rows show a safety lead which prompts a model misses, not only how many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safemotion.generate import GenerationRequest, Generator
from safemotion.models.model_dir import MotionModels
from safemotion.unlearn.flagging import hit_ratio, review
from safemotion.unlearn.record import removed_base_codes
from safemotion.unlearn.screening import Screens

PROMPT_SEED_STRIDE = 1000  # prompt i starts at seed + 1000·i, so variations of neighbouring prompts never share seeds
SIGNALS = ("code_hit", "prompt", "motion", "combined")


@dataclass
class PromptScores:
    """The raw signal scores of one prompt's motions (prompt_score and motion_scores None without screens)."""

    prompt: str
    seeds: list[int]
    hit_ratios: list[float]
    prompt_score: float | None = None
    motion_scores: list[float] | None = None
    base_tokens: list[np.ndarray] = field(default_factory=list, repr=False)


@dataclass
class PromptFlags:
    """The motions generated for one prompt: their seeds, scores, flags (the decision) and each signal's verdict."""

    prompt: str
    seeds: list[int]
    hit_ratios: list[float]
    flagged: list[bool]
    prompt_score: float | None = None
    motion_scores: list[float] | None = None
    fired: dict[str, list[bool]] = field(default_factory=dict)  # signal name -> per motion


@dataclass
class SetFlags:
    """A prompt set's flag rates and its per-prompt rows."""

    name: str
    prompts: list[PromptFlags]

    @property
    def total(self) -> int:
        return sum(len(p.flagged) for p in self.prompts)

    @property
    def flagged(self) -> int:
        return sum(sum(p.flagged) for p in self.prompts)

    def summary(self) -> dict[str, Any]:
        """rate (the decision), flagged and total motions, mean hit ratio, and each signal's rate alone."""
        ratios = [r for p in self.prompts for r in p.hit_ratios]
        names = [s for s in SIGNALS if self.prompts and s in self.prompts[0].fired]
        signals = {s: float(np.mean([f for p in self.prompts for f in p.fired[s]])) for s in names}
        return {"rate": self.flagged / self.total if self.total else float("nan"), "flagged": self.flagged,
                "total": self.total, "mean_hit_ratio": float(np.mean(ratios)) if ratios else float("nan"),
                "signals": signals}

    def to_dict(self) -> dict[str, Any]:
        """The summary plus every prompt's row, JSON-ready."""
        return {**self.summary(), "prompts": [dataclasses.asdict(p) for p in self.prompts]}


def prompt_set_scores(generator: Generator, reviewer: MotionModels, prompts: Sequence[str], variations: int = 3,
                      seconds: float | None = None, seed: int = 0, screens: Screens | None = None,
                      ) -> list[PromptScores]:
    """Generate every prompt `variations` times; each motion's hit ratio (and with `screens` its prompt and motion
    scores)."""
    removed = removed_base_codes(reviewer.config)
    if not removed:
        raise ValueError("the reviewing model has no removed base-layer codes; flag rates need a model made by "
                         "`safemotion unlearn lcr`")
    requests = [GenerationRequest(p, seconds=seconds, seed=seed + PROMPT_SEED_STRIDE * i, variations=variations,
                                  foot_cleanup=False) for i, p in enumerate(prompts)]  # tokens and joints suffice
    motions = generator.generate(requests, smpl=False)
    prompt_scores = (screens.prompt_scores(generator.text_encoder, list(prompts)) if screens is not None
                     else [None] * len(prompts))
    rows = []
    for i, prompt in enumerate(prompts):
        mine = motions[i * variations:(i + 1) * variations]
        ratios = [hit_ratio(m.base_tokens, removed) for m in mine]
        rows.append(PromptScores(prompt, [m.seed for m in mine], ratios,
                                 None if screens is None else float(prompt_scores[i]),
                                 None if screens is None else screens.motion_scores([m.joints for m in mine]).tolist(),
                                 [m.base_tokens for m in mine]))
    return rows


def prompt_set_flags(generator: Generator, reviewer: MotionModels, name: str, prompts: Sequence[str],
                     variations: int = 3, seconds: float | None = None, seed: int = 0,
                     screens: Screens | None = None) -> SetFlags:
    """Generate every prompt `variations` times and review the motions with `reviewer`'s removed codes (and screens)."""
    try:
        scored = prompt_set_scores(generator, reviewer, prompts, variations, seconds, seed, screens)
    except ValueError as err:
        raise ValueError(f"prompt set {name!r}: {err}") from None
    rows = []
    for row in scored:
        extra = {} if screens is None else {"screens": screens, "prompt_scores": [row.prompt_score] * variations,
                                            "motion_scores": row.motion_scores}
        records = review(reviewer, row.base_tokens, **extra)
        fired = {s.name: [] for s in records[0].signals}
        for record in records:
            for signal in record.signals:
                fired[signal.name].append(bool(signal.fired))
        rows.append(PromptFlags(row.prompt, row.seeds, [r.hit_ratio for r in records], [r.flagged for r in records],
                                row.prompt_score, row.motion_scores, fired))
    return SetFlags(name, rows)
