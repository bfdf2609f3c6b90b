"""Generation under a safety policy: the LCR model, its original-codebook twin for `allow`, and the safety records.

    safe = SafeGenerator.from_dir("path/to/lcr_model_dir")
    results = safe.generate([GenerationRequest("a person walks forward", seconds=4)], policy="sanitize")
    results[0][0].safety.flagged, results[0][0].motion.joints

Policies (safemotion.unlearn.flagging): `sanitize` and `block` decode with the model's (LCR-edited) codebook, `allow`
with the original codebooks kept in the model directory; `block` withholds the flagged motions (`Generated.blocked`).
A model without removed codes has nothing to flag: every policy generates the same motions and `safety` is None.
Who may ask for `allow` is the caller's business (the server grants it to privileged keys only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safemotion.decoding import SamplingConfig
from safemotion.generate import DEFAULT_MODEL_DIR, GeneratedMotion, GenerationRequest, Generator
from safemotion.unlearn.flagging import SafetyRecord, original_codebook_models, review
from safemotion.unlearn.policies import DEFAULT_POLICY, check_policy
from safemotion.unlearn.record import removed_base_codes, unlearning_record


@dataclass
class Generated:
    """A generated motion and its safety record (None for a model without removed codes)."""

    motion: GeneratedMotion
    safety: SafetyRecord | None

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
        if self.removed_codes and record is not None and record.original_codebooks:
            self.original = Generator(original_codebook_models(generator.models, model_dir), generator.text_encoder,
                                      generator.sampling, generator.device, generator.batch_size)

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
        results: list[list[Generated] | None] = [None] * len(requests)
        groups: dict[bool, list[int]] = {}
        for i, name in enumerate(policies):
            groups.setdefault(name == "allow" and self.original is not None, []).append(i)
        for use_original, indices in groups.items():
            generator = self.original if use_original else self.generator
            motions = generator.generate([requests[i] for i in indices], smpl=smpl)
            start = 0
            for i in indices:
                count = requests[i].variations
                own = motions[start:start + count]
                start += count
                results[i] = self.review(own, policies[i])
        return results

    def review(self, motions: list[GeneratedMotion], policy: str) -> list[Generated]:
        """The safety review of generated or edited motions under `policy`: every motion with its record."""
        records = review(self.generator.models, [m.base_tokens for m in motions], policy)
        return [Generated(m, None if records is None else r) for m, r in zip(motions, records or [None] * len(motions))]

    def for_policy(self, policy: str) -> Generator:
        """The generator that decodes under `policy`: the original codebooks for `allow` (when the model has them)."""
        check_policy(policy)
        return self.original if policy == "allow" and self.original is not None else self.generator
