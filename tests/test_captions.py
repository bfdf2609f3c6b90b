"""Left/right swapping for mirrors and the HumanML3D caption line."""

from __future__ import annotations

import re

import pytest

from safemotion.data import captions as cap

LINE_RE = re.compile(r"^[^#]+#([a-z]+/[A-Z]+)( [a-z]+/[A-Z]+)*#0\.0#0\.0$")


@pytest.mark.parametrize(
    "text, mirrored",
    [
        ("a person waves the left hand", "a person waves the right hand"),
        ("turns right, then left", "turns left, then right"),
        ("Left foot forward", "Right foot forward"),
        ("steps leftwards and then rightward", "steps rightwards and then leftward"),
        ("spins counterclockwise", "spins clockwise"),
        ("spins counter-clockwise then clockwise", "spins clockwise then counterclockwise"),
        ("spins anticlockwise", "spins clockwise"),
        ("the leftmost arm", "the rightmost arm"),
        ("he sits down right away on the left", "he sits down right away on the right"),
        ("a person walks", "a person walks"),
        ("a leftover cleft", "a leftover cleft"),
    ],
)
def test_mirror_caption(text, mirrored):
    assert cap.mirror_caption(text) == mirrored


def test_mirror_twice_is_identity_for_side_words():
    text = "a person waves the left hand then turns right and spins clockwise"
    assert cap.mirror_caption(cap.mirror_caption(text)) == text


def test_caption_line_format_and_tags():
    line = cap.caption_line("A person kicks with the LEFT leg, then walks backwards quickly.")
    assert LINE_RE.match(line), line
    caption, tokens, start, end = line.split("#")
    assert caption == "a person kicks with the left leg, then walks backwards quickly."
    assert tokens.split() == [
        "a/DET", "person/NOUN", "kick/VERB", "with/ADP", "the/DET", "left/ADJ", "leg/NOUN", "then/ADV",
        "walk/VERB", "backwards/ADV", "quickly/ADV",
    ]
    assert (start, end) == ("0.0", "0.0")


def test_tagger_lemmas_and_nouns():
    assert cap.tag_tokens("someone is running and jumped over two boxes") == [
        ("someone", "PRON"), ("is", "AUX"), ("run", "VERB"), ("and", "CCONJ"), ("jump", "VERB"), ("over", "ADP"),
        ("two", "NUM"), ("box", "NOUN"),
    ]
    # a verb after a determiner is a noun; closed-class words stay as written; hyphens go, as in HumanML3D
    assert cap.tag_tokens("does a spin-kick to the left") == [
        ("does", "AUX"), ("a", "DET"), ("spinkick", "NOUN"), ("to", "ADP"), ("the", "DET"), ("left", "NOUN"),
    ]


def test_tagger_objects_and_gerunds_after_verbs():
    assert cap.tag_tokens("throws punches then starts running") == [
        ("throw", "VERB"), ("punch", "NOUN"), ("then", "ADV"), ("start", "VERB"), ("run", "VERB"),
    ]


def test_clean_caption_rejects_empty_and_strips_separator():
    assert cap.clean_caption("  Walks #  fast ") == "walks fast"
    with pytest.raises(ValueError, match="empty caption"):
        cap.clean_caption(" # ")


@pytest.mark.parametrize("phrase, expected", [
    ("walks forward", "walking forward"), ("does a backflip", "doing a backflip"), ("runs and jumps", "running and jumping"),
    ("lies down", "lying down"), ("strolls", "strolling"), ("idles on the spot", "idling on the spot"),
    ("goes on foot", "going on foot"), ("stands and waits", "standing and waiting"),
    ("climbs, sits, dangles legs", "climbing, sitting, dangling legs"), ("practises a kata", "practises a kata"),
])
def test_progressive(phrase, expected):
    assert cap.progressive(phrase) == expected
