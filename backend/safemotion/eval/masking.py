"""Masking of concept words in captions, for MM-Safe (distance of a motion to its caption without the forget words).

``mask_concept_words(text, concept, rule)`` replaces every match of the concept's keywords by ``***``; the evaluator's
word vectoriser then maps the masked word to GloVe ``unk`` with POS ``OTHER``. Keywords come from
`safemotion.data.concepts` (package asset `violence_keywords.json`).

- ``paper``: as Mamiglia/hmu `eval_fn_t2m.py` `mask_toxic_words`: one regular expression, the escaped keywords
  joined by ``|`` in list order, **case-insensitive** substring (note: the split rule is case-sensitive, the masking
  is not), each match replaced. hmu applies it to the evaluator's ``word/POS`` token strings; with alphabetic
  keywords that is the same as masking a ``_``-joined token string or the caption, so pass either.
- ``word_boundary``: each match of the concept's regular expressions is replaced, except where it lies inside a
  ``false_friends`` match ("kicks a ball", "box jump", ...); overlapping matches become one ``***``. Multi-word
  patterns ("hit him") only match captions, not ``word/POS`` token strings.
"""

from __future__ import annotations

import re
from functools import cache

from safemotion.data.concepts import DEFAULT_RULE, load_concept

PLACEHOLDER = "***"


def mask_concept_words(
    text: str, concept: str = "violence", rule: str = DEFAULT_RULE, placeholder: str = PLACEHOLDER
) -> str:
    """`text` with every concept-word match replaced by `placeholder`; unchanged when nothing matches."""
    if rule == "paper":
        return _paper_pattern(concept).sub(placeholder, text)
    spans = _word_boundary_spans(text, concept, rule)
    for start, end in reversed(spans):
        text = text[:start] + placeholder + text[end:]
    return text


@cache
def _paper_pattern(concept: str) -> re.Pattern[str]:
    keywords = load_concept(concept, "paper").keywords
    return re.compile("|".join(map(re.escape, keywords)), re.IGNORECASE)


def _word_boundary_spans(text: str, concept: str, rule: str) -> list[tuple[int, int]]:
    """Merged, sorted (start, end) spans of concept matches outside false-friend matches."""
    compiled = load_concept(concept, rule)
    # Blank false friends with equal-length runs of spaces so match offsets stay valid in the original text.
    blanked = text
    for friend in compiled.false_friends:
        blanked = friend.sub(lambda m: " " * len(m.group()), blanked)
    spans = sorted(m.span() for pattern in compiled.patterns for m in pattern.finditer(blanked) if m.end() > m.start())
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
