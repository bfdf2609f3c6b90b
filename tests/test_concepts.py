"""Concept keyword rules: the paper's case-sensitive substring rule and SafeMotion's word-boundary rule."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from safemotion.data.concepts import known_concepts, load_concept, matches_concept

# Human Motion Unlearning, Mamiglia/hmu assets/splits.json, HumanML3D "violence".
PAPER_HUMANML3D_VIOLENCE = ["kick", "punch", "hit", "beat", "boxe", "boxing", "jab", "uppercut", "hook"]


def test_paper_rule_uses_the_papers_humanml3d_list():
    assert list(load_concept("violence", "paper").keywords) == PAPER_HUMANML3D_VIOLENCE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a person kicks", True),
        ("Kicks with the left leg", False),  # case-sensitive: capitalised keyword is missed
        ("KICK", False),
        ("a man is hitting a ball", True),  # 'hit' is a substring of 'hitting'
        ("a person in a white shirt walks", True),  # 'hit' inside 'white': the paper's false positive
        ("he carries boxes", True),  # 'boxe' inside 'boxes'
        ("a box jump", False),  # 'box' is not in the HumanML3D list
        ("an upbeat dance", True),
        ("a person waves", False),
        ("a person stabs", False),  # 'stab' only in the Motion-X list
        ("a right hook", True),
    ],
)
def test_paper_rule_is_case_sensitive_substring(text, expected):
    assert matches_concept(text, rule="paper") is expected
    assert matches_concept(text, rule="paper") is any(k in text for k in PAPER_HUMANML3D_VIOLENCE)


@pytest.mark.parametrize(
    "text",
    [
        "a person kicks a ball",
        "soccer player does a kick",
        "someone does a box jump",
        "a person picks up a cardboard box",
        "he dances to the beat of the music",
        "a person in a white shirt walks",
        "an upbeat dance",
        "a man breakdances and does a kick flip",
        "a basketball player dribbles and shoots",
        "a person is hitting a ball with a golf club",
    ],
)
def test_word_boundary_false_friends_are_not_violent(text):
    assert not matches_concept(text)
    assert not matches_concept(text, rule="word_boundary")


@pytest.mark.parametrize(
    "text",
    [
        "a person punches",
        "a person stabs",
        "two people have a sword fight",
        "Kicks with the left leg",  # case-insensitive
        "someone throws a KICK",
        "a boxer jabs",
        "he hits someone in the face",
        "a person performs a karate kata",
        "someone practises kung fu",
        "a person kicks a ball and then kicks the goalkeeper",  # the second kick survives false-friend removal
    ],
)
def test_word_boundary_violent_texts(text):
    assert matches_concept(text)


def test_word_boundary_needs_whole_words():
    assert not matches_concept("a person walks across the hitch")
    assert not matches_concept("punchline")
    assert matches_concept("punching")


def test_unknown_concept_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown concept 'nudity'.*known concepts: violence"):
        matches_concept("a person walks", concept="nudity")
    with pytest.raises(ValueError, match="unknown concept 'weapons' for rule 'word_boundary'"):
        matches_concept("a sword", concept="weapons", rule="word_boundary")
    with pytest.raises(ValueError, match="unknown rule 'regex'"):
        matches_concept("a person walks", rule="regex")


def test_paper_sub_concepts():
    assert "kick" in known_concepts("paper") and "violence" in known_concepts("word_boundary")
    assert matches_concept("a sword", concept="weapons", rule="paper")
    assert not matches_concept("a punch", concept="kick", rule="paper")
    assert matches_concept("he shoots", concept="violence_motionx", rule="paper")
    assert not matches_concept("he shoots", concept="violence", rule="paper")


def test_packaged_keywords_are_the_shared_file(shared_dir: Path):
    packaged = files("safemotion").joinpath("assets", "violence_keywords.json").read_text(encoding="utf-8")
    shared = (shared_dir / "data" / "violence_keywords.json").read_text(encoding="utf-8")
    assert json.loads(packaged) == json.loads(shared)


def test_kit_captions_counts(shared_dir: Path):
    trials = json.loads((shared_dir / "data" / "cmu" / "kitml_cmu_captions.json").read_text())["trials"]

    def matching(rule: str) -> set[str]:
        return {t for t, e in trials.items() if any(matches_concept(c["text"], rule=rule) for c in e["captions"])}

    paper, word = matching("paper"), matching("word_boundary")
    assert len(paper) == 28  # shared/data/README.md §5
    # Word-boundary with false friends removed first: README's 30 counts the patterns alone; removing the false
    # friends drops "kicks a ball" (74_04, 74_05) and "boxes" used as a verb (143_23, 144_21).
    assert len(word) == 26
    assert {"64_09", "74_04", "74_05"} <= paper - word  # golf "hitting a ball", "kicks a ball"
    assert {"135_07", "79_96", "80_03", "106_14"} <= word - paper  # martial arts, gun, fighting
