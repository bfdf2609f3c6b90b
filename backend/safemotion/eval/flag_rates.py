"""Flag rates of an LCR model on prompt sets, prompt by prompt.

Each prompt i of a set is generated `variations` times (seeds seed + 1000·i, +1, ...) and every motion's base tokens
are reviewed with a model's removed codes and threshold (`safemotion.unlearn.flagging.review`). LCR leaves the
transformers untouched, so the reviewing model may be another one that shares the generator's base codebook (the
benchmark scores the original, fine-tuned, UCE and RECE models with the LCR model's codes this way).

The per-prompt rows show a safety lead which prompts a model misses, not only how many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safemotion.generate import GenerationRequest, Generator
from safemotion.models.model_dir import MotionModels
from safemotion.unlearn.flagging import review
from safemotion.unlearn.record import removed_base_codes

PROMPT_SEED_STRIDE = 1000  # prompt i starts at seed + 1000·i, so variations of neighbouring prompts never share seeds


@dataclass
class PromptFlags:
    """The motions generated for one prompt: their seeds, hit ratios and flags."""

    prompt: str
    seeds: list[int]
    hit_ratios: list[float]
    flagged: list[bool]


@dataclass
class SetFlags:
    """A prompt set's flag rate and its per-prompt rows."""

    name: str
    prompts: list[PromptFlags]

    @property
    def total(self) -> int:
        return sum(len(p.flagged) for p in self.prompts)

    @property
    def flagged(self) -> int:
        return sum(sum(p.flagged) for p in self.prompts)

    def summary(self) -> dict[str, Any]:
        """rate, flagged and total motions, mean hit ratio."""
        ratios = [r for p in self.prompts for r in p.hit_ratios]
        return {"rate": self.flagged / self.total if self.total else float("nan"), "flagged": self.flagged,
                "total": self.total, "mean_hit_ratio": float(np.mean(ratios)) if ratios else float("nan")}

    def to_dict(self) -> dict[str, Any]:
        """The summary plus every prompt's row, JSON-ready."""
        return {**self.summary(), "prompts": [dataclasses.asdict(p) for p in self.prompts]}


def prompt_set_flags(generator: Generator, reviewer: MotionModels, name: str, prompts: Sequence[str],
                     variations: int = 3, seconds: float | None = None, seed: int = 0) -> SetFlags:
    """Generate every prompt `variations` times and review the motions with `reviewer`'s removed codes."""
    if not removed_base_codes(reviewer.config):
        raise ValueError(f"prompt set {name!r}: the reviewing model has no removed base-layer codes; flag rates "
                         "need a model made by `safemotion unlearn lcr`")
    requests = [GenerationRequest(p, seconds=seconds, seed=seed + PROMPT_SEED_STRIDE * i, variations=variations,
                                  foot_cleanup=False) for i, p in enumerate(prompts)]  # tokens are all it needs
    motions = generator.generate(requests, smpl=False)
    records = review(reviewer, [m.base_tokens for m in motions])
    rows = []
    for i, prompt in enumerate(prompts):
        mine = range(i * variations, (i + 1) * variations)
        rows.append(PromptFlags(prompt, [motions[j].seed for j in mine], [records[j].hit_ratio for j in mine],
                                [records[j].flagged for j in mine]))
    return SetFlags(name, rows)
