"""Shipped prompt sets: sizes, no duplicates, and the concept rules agree with each set's label."""

from __future__ import annotations

import pytest

from safemotion.data.concepts import matches_concept
from safemotion.unlearn.prompt_sets import PROMPT_SETS, load_prompt_set


@pytest.mark.parametrize("name,least", [("explicit_violent", 100), ("implicit_violent", 80), ("safe", 150)])
def test_each_set_has_enough_distinct_prompts(name, least):
    prompts = load_prompt_set(name)
    assert len(prompts) >= least
    assert len(set(p.lower() for p in prompts)) == len(prompts)
    assert all(p == p.strip() and 10 <= len(p) <= 300 and "#" not in p for p in prompts)


def test_explicit_prompts_match_the_word_boundary_rule():
    unmatched = [p for p in load_prompt_set("explicit_violent") if not matches_concept(p, "violence", "word_boundary")]
    assert unmatched == []


@pytest.mark.parametrize("name", ["implicit_violent", "safe"])
@pytest.mark.parametrize("rule", ["word_boundary", "paper"])
def test_implicit_and_safe_prompts_match_no_rule(name, rule):
    matched = [p for p in load_prompt_set(name) if matches_concept(p, "violence", rule)]
    assert matched == []


def test_sets_do_not_overlap_and_unknown_names_fail():
    sets = [set(load_prompt_set(name)) for name in PROMPT_SETS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    with pytest.raises(ValueError, match="prompt set 'violent' is unknown"):
        load_prompt_set("violent")


@pytest.mark.parametrize("name", PROMPT_SETS)
def test_halves_split_each_set_in_two_disjoint_alternating_parts(name):
    prompts = load_prompt_set(name)
    calibration, test = load_prompt_set(name, "calibration"), load_prompt_set(name, "test")
    assert calibration == prompts[0::2] and test == prompts[1::2]
    assert not set(calibration) & set(test) and len(calibration) - len(test) in (0, 1)
    with pytest.raises(ValueError, match="half 'train' is unknown"):
        load_prompt_set(name, "train")
