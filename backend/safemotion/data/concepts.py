"""Concept keyword rules (e.g. violence) that decide whether a caption belongs to the forget set.

The keyword lists ship inside the package (`safemotion/assets/violence_keywords.json`, a copy of SafeMotion's
`shared/data/violence_keywords.json`). Two rules:

- ``paper``: the Human Motion Unlearning benchmark rule (arXiv 2503.18674, `Mamiglia/hmu`
  `scripts/utils/split_dataset.sh`): case-sensitive plain substring match (`grep -E "kw1|kw2|..."`). The concept
  ``violence`` uses the paper's **HumanML3D** list (`paper_compatible.humanml3d_violence`), because SafeMotion datasets
  use the HumanML3D layout and the paper applies its Motion-X list only to Motion-X. The paper's sub-splits
  (``kick``, ``punch_jab_box_hit_beat``, ``weapons``, ``martial_arts``, ``gun_shoot``) are available as concepts too,
  and ``violence_motionx`` selects the Motion-X list.
- ``word_boundary`` (SafeMotion default): case-insensitive whole-word regular expressions with inflections; spans
  matching a ``false_friends`` pattern ("kicks a ball", "box jump", ...) are removed from the text first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

RULES = ("word_boundary", "paper")
DEFAULT_RULE = "word_boundary"

# All concepts so far live in one asset file; (concept, rule) -> key path inside it.
_KEYWORD_FILE = "violence_keywords.json"
_CONCEPT_SOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("violence", "paper"): ("paper_compatible", "humanml3d_violence"),
    ("violence_motionx", "paper"): ("paper_compatible", "motionx_violence"),
    ("kick", "paper"): ("paper_compatible", "sub_concepts", "kick"),
    ("punch_jab_box_hit_beat", "paper"): ("paper_compatible", "sub_concepts", "punch_jab_box_hit_beat"),
    ("weapons", "paper"): ("paper_compatible", "sub_concepts", "weapons"),
    ("martial_arts", "paper"): ("paper_compatible", "sub_concepts", "martial_arts"),
    ("gun_shoot", "paper"): ("paper_compatible", "sub_concepts", "gun_shoot"),
    ("violence", "word_boundary"): ("word_boundary",),
}


@dataclass(frozen=True)
class ConceptRule:
    """A compiled concept rule: keywords (paper) or regexes minus false friends (word_boundary)."""

    concept: str
    rule: str
    keywords: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    false_friends: tuple[re.Pattern[str], ...] = ()

    def matches(self, text: str) -> bool:
        """True when the text contains the concept under this rule."""
        if self.rule == "paper":
            return any(keyword in text for keyword in self.keywords)
        for friend in self.false_friends:
            text = friend.sub(" ", text)
        return any(pattern.search(text) for pattern in self.patterns)


def known_concepts(rule: str = DEFAULT_RULE) -> tuple[str, ...]:
    """Concept names available for a rule."""
    _check_rule(rule)
    return tuple(name for name, r in _CONCEPT_SOURCES if r == rule)


@cache
def load_concept(concept: str = "violence", rule: str = DEFAULT_RULE) -> ConceptRule:
    """Load and compile the keyword rule of a concept from the package assets."""
    _check_rule(rule)
    key = _CONCEPT_SOURCES.get((concept, rule))
    if key is None:
        raise ValueError(
            f"unknown concept {concept!r} for rule {rule!r}; known concepts: {', '.join(known_concepts(rule))}"
        )
    table = json.loads(files("safemotion").joinpath("assets", _KEYWORD_FILE).read_text(encoding="utf-8"))
    for part in key:
        table = table[part]
    if rule == "paper":
        return ConceptRule(concept, rule, keywords=tuple(table))
    return ConceptRule(
        concept,
        rule,
        patterns=tuple(re.compile(p, re.IGNORECASE) for p in table["violence"]),
        false_friends=tuple(re.compile(p, re.IGNORECASE) for p in table["false_friends"]),
    )


def matches_concept(text: str, concept: str = "violence", rule: str = DEFAULT_RULE) -> bool:
    """True when `text` mentions `concept` under `rule` ("word_boundary" or "paper")."""
    return load_concept(concept, rule).matches(text)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}")
