"""Generation under a safety policy: the LCR model, its original-codebook twin for `allow`, and the safety records.

    safe = SafeGenerator.from_dir("path/to/lcr_model_dir")
    results = safe.generate([GenerationRequest("a person walks forward", seconds=4)], policy="sanitize")
    results[0][0].safety.flagged, results[0][0].motion.joints

Policies (safemotion.unlearn.flagging): `sanitize` and `block` decode with the model's (LCR-edited) codebook, `allow`
with the original codebooks kept in the model directory; `block` withholds the flagged motions (`Generated.blocked`).
A model without removed codes has nothing to flag: every policy generates the same motions and `safety` is None.
A screened LCR model (safemotion.unlearn.screening) scores each prompt before generating: under `block` a prompt that
fires is refused without generating (its variations come back with `motion` None and a record saying so); every other
motion is judged on all signals after generation. A half-screened or uncalibrated model fails to load.
Who may ask for `allow` is the caller's business (the server grants it to privileged keys only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from safemotion.decoding import SamplingConfig
from safemotion.generate import DEFAULT_MODEL_DIR, GeneratedMotion, GenerationRequest, Generator
from safemotion.unlearn.decision import Decision
from safemotion.unlearn.flagging import SafetyRecord, original_codebook_models, refused_before_generation, review
from safemotion.unlearn.policies import DEFAULT_POLICY, check_policy
from safemotion.unlearn.record import removed_base_codes, safety_settings, unlearning_record
from safemotion.unlearn.screening import Screens, load_screens


@dataclass
class Generated:
    """A generated motion (None when refused before generation) and its safety record (None for a model without
    removed codes)."""

    motion: GeneratedMotion | None
    safety: SafetyRecord | None
    prompt: str = ""
    seed: int = 0
    variation: int = 0

    @property
    def blocked(self) -> bool:
        """Whether the policy withholds this motion."""
        return self.safety is not None and self.safety.decision == "blocked"


class SafeGenerator:
    """A Generator for a model directory plus, for an LCR model, the same model with its original codebooks."""

    def __init__(self, generator: Generator, model_dir: str | Path):
        self.generator = generator
        self.removed_codes = removed_base_codes(generator.models.config)
        record = unlearning_record(generator.models.config)
        self.original: Generator | None = None
        self.screens: Screens | None = None
        if self.removed_codes and record is not None and record.original_codebooks:
            self.original = Generator(original_codebook_models(generator.models, model_dir), generator.text_encoder,
                                      generator.sampling, generator.device, generator.batch_size)
        if self.removed_codes:
            self.screens = load_screens(model_dir, generator.models.config)
            if self.screens is not None and generator.text_encoder is None:
                raise ValueError(f"{model_dir}: the prompt screen needs the model's text encoder")

    @classmethod
    def from_dir(cls, path: str | Path = DEFAULT_MODEL_DIR, device: str = "cpu", sampling: SamplingConfig | None = None,
                 clip_weights: Path | None = None, clip_vocab: Path | None = None) -> SafeGenerator:
        """Load a model directory (see Generator.from_dir) with its original codebooks when it has them."""
        generator = Generator.from_dir(path, device, sampling, clip_weights, clip_vocab)
        return cls(generator, path)

    def generate(self, requests: list[GenerationRequest], policy: str | list[str] = DEFAULT_POLICY,
                 smpl: bool = True) -> list[list[Generated]]:
        """Every variation of every request under its policy (one name for all, or one per request)."""
        policies = [policy] * len(requests) if isinstance(policy, str) else list(policy)
        if len(policies) != len(requests):
            raise ValueError(f"got {len(requests)} requests and {len(policies)} policies; pass one policy or one each")
        for name in policies:
            check_policy(name)
        prompt_scores: list[float | None] = [None] * len(requests)
        features: dict[str, Tensor] | None = None
        if self.screens is not None:  # encode each prompt once: for the screen and for the generator
            unique = list(dict.fromkeys(r.prompt for r in requests))
            encoded = self.generator.encode_prompts(unique)
            features = dict(zip(unique, encoded))
            scores = dict(zip(unique, self.screens.prompt_scores_of_features(encoded)))
            prompt_scores = [float(scores[r.prompt]) for r in requests]
        results: list[list[Generated] | None] = [None] * len(requests)
        groups: dict[bool, list[int]] = {}
        for i, name in enumerate(policies):
            if self.screens is not None and name == "block":
                early = self.screens.before_generation(float(prompt_scores[i]))
                if early.flagged:
                    results[i] = self.refused(requests[i].prompt, requests[i].seed, requests[i].variations, early)
                    continue
            groups.setdefault(name == "allow" and self.original is not None, []).append(i)
        for use_original, indices in groups.items():
            generator = self.original if use_original else self.generator
            motions = generator.generate([requests[i] for i in indices], smpl=smpl, prompt_features=features)
            start = 0
            for i in indices:
                count = requests[i].variations
                own = motions[start:start + count]
                start += count
                results[i] = self.review(own, policies[i], prompt_scores[i])
        return results

    def review(self, motions: list[GeneratedMotion], policy: str, prompt_score: float | None,
               edit: bool = False, also_tokens: list[np.ndarray] | None = None) -> list[Generated]:
        """The safety review of generated or edited (`edit`) motions of one prompt under `policy`: every motion with
        its record (all signals of a screened model, whose `prompt_score` the caller has computed); `also_tokens`:
        each motion's second reading of its base ids (flagging.hit_token_indices)."""
        scores = {}
        if self.screens is not None and motions:
            scores = {"screens": self.screens, "prompt_scores": [prompt_score] * len(motions),
                      "motion_scores": self.screens.motion_scores([m.joints for m in motions])}
        records = review(self.generator.models, [m.base_tokens for m in motions], policy, edit=edit,
                         also_tokens=also_tokens, **scores)
        return [Generated(m, None if records is None else r, m.prompt, m.seed, m.variation)
                for m, r in zip(motions, records or [None] * len(motions))]

    def for_policy(self, policy: str) -> Generator:
        """The generator that decodes under `policy`: the original codebooks for `allow` (when the model has them)."""
        check_policy(policy)
        return self.original if policy == "allow" and self.original is not None else self.generator

    def refused(self, prompt: str, seed: int, variations: int, early: Decision) -> list[Generated]:
        """The variations of a prompt the screen refused before generating (no motion, a record saying why)."""
        config = self.generator.models.config
        record = unlearning_record(config)
        threshold = safety_settings(config).threshold
        return [Generated(None, refused_before_generation(early, record.concept, threshold, config.unit_length),
                          prompt, seed + k, k) for k in range(variations)]
