"""The caption grammar: label grammars per source, measured paraphrase families, held-out prompts never copied."""

from __future__ import annotations

import csv
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from safemotion.data import caption_grammar as grammar
from safemotion.data.captions import caption_line, progressive
from safemotion.data.concepts import matches_concept
from safemotion.eval import adherence
from safemotion.motion import skeleton
from safemotion.unlearn.prompt_sets import PROMPT_SETS, load_prompt_set

FACTS = {
    (kind, travel, speed): grammar.MotionFacts(speed=speed, forward_m=dz, left_m=dx, body_speed=0.5)
    for kind, (travel, dz, dx), speed in product(
        ("walk", "run"),
        (("forward", 3.0, 0.0), ("backward", -3.0, 0.0), ("left", 0.0, 3.0), ("right", 0.0, -3.0)),
        (0.5, 1.2, 2.0, 3.0, 5.0),
    )
}


def all_grammar_captions() -> list[str]:
    """Every caption the grammar writes for every label and measured case it knows."""
    captions = []
    for content, style in product(grammar.BANDAI_CONTENT, grammar.BANDAI_STYLE):
        captions += grammar.bandai_captions(content, style, key=f"{content}_{style}_001")
    for name in grammar.DEEPMIMIC_PHRASES:
        captions += grammar.deepmimic_captions(name)
    for (kind, _, _), facts in FACTS.items():
        for key in range(5):
            captions += grammar.window_captions(kind, (), facts, key=f"{kind}{key}")
    still = grammar.MotionFacts(speed=0.05, forward_m=0.1, left_m=0.0, body_speed=0.05)
    for key in range(20):
        captions += grammar.window_captions("idle", (), still, key=f"idle{key}")
    for content, phrases in grammar.BANDAI_CONTENT.items():
        captions += grammar.window_captions("gesture", phrases, still, key=content)
    return captions


def test_held_out_prompts_cover_the_prompt_sets_and_the_adherence_suite():
    held_out = grammar.held_out_prompts()
    assert {grammar.normalize(p) for name in PROMPT_SETS for p in load_prompt_set(name)} <= held_out
    assert {grammar.normalize(prompt) for prompt, _ in adherence.SINGLE_CHECKS.values()} <= held_out
    assert "a person walks forward slowly" in held_out and "a person runs" in held_out


def test_no_grammar_caption_copies_a_held_out_prompt():
    captions = all_grammar_captions()
    assert len(captions) > 1500
    copies = {c for c in captions if grammar.copies_held_out_prompt(c)}  # the caption or its mirror
    assert not copies


def test_compose_skips_a_held_out_prompt_it_would_otherwise_write():
    captions = grammar.compose(("walks forward",), [("slowly",)], 6, key="k")
    assert "a person walks forward slowly" not in captions and len(captions) == 6
    assert all("walk" in c and "slowly" in c for c in captions)


def test_a_caption_whose_mirror_is_a_held_out_prompt_is_skipped():
    assert "a person waves with the right hand" in grammar.held_out_prompts()
    captions = grammar.compose(("waves with the left hand",), [], 6, key="wave")
    assert len(captions) == 6 and "a person waves with the left hand" not in captions


def test_label_grammars_give_three_distinct_captions_with_varied_verbs_and_frames(shared_dir: Path):
    for content, style in product(grammar.BANDAI_CONTENT, grammar.BANDAI_STYLE):
        captions = grammar.bandai_captions(content, style, key=f"dataset-2_{content}_{style}_001")
        assert len(set(captions)) == 3, (content, style)
    captions = grammar.bandai_captions("wave-left-hand", "happy", key="dataset-2_wave-left-hand_happy_001", seed=3)
    assert captions == grammar.bandai_captions("wave-left-hand", "happy", key="dataset-2_wave-left-hand_happy_001",
                                               seed=3)
    assert all("left" in c for c in captions)
    with pytest.raises(ValueError, match="unknown Bandai content label 'juggle'"):
        grammar.bandai_captions("juggle", "happy", key="x")
    # Across all Bandai clips, every subject and both frames are used.
    every = [c for content in grammar.BANDAI_CONTENT for c in grammar.bandai_captions(content, "sad", key=content)]
    assert all(any(c.startswith(s + " ") for c in every) for s in grammar.SUBJECTS)
    assert any(" is " in c and "ing" in c for c in every)
    with open(shared_dir / "data" / "cmu" / "cmu_trials.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:400]
    for row in rows:
        captions = grammar.cmu_description_captions(row["Motion Description"], int(row["Subject"]), key=row["Trial #"])
        assert len(set(captions)) == 3, row


def test_a_progressive_frame_always_gets_a_participle():
    captions = all_grammar_captions() + [c for d in ("playground - climb, sit, dangle legs", "breakdance - practise "
                                                     "fancy footwork") for c in grammar.cmu_description_captions(d, 1)]
    for caption in captions:
        words = caption.split()
        if "is" in words:
            assert words[words.index("is") + 1].rstrip(",").endswith("ing"), caption


def test_cmu_description_captions_keep_the_description():
    assert any("runs or jogs" in c for c in grammar.cmu_description_captions("run/jog", 2))
    assert any("performs forward dribble while playing basketball" in c
               for c in grammar.cmu_description_captions("basketball - forward dribble", 6))
    assert any("bassai" in c and "karate kata" in c for c in grammar.cmu_description_captions("Bassai", 135))
    assert any("punches or strikes" in c for c in grammar.cmu_description_captions("punch/strike", 2))


def test_family_wording_never_matches_the_violence_rules():
    families = [grammar.STILL, grammar.IN_PLACE, *grammar.WALK.values(), *grammar.RUN.values(),
                *grammar.DIRECTION.values()]
    for phrase in (p for family in families for p in family):
        assert not matches_concept(phrase) and not matches_concept(caption_line(phrase), rule="paper"), phrase


def walking_pose(frames: int, step: np.ndarray, swing: float = 0.0) -> np.ndarray:
    """A rest pose moved by `step` (m per frame); arms swing by `swing` m."""
    pose = skeleton.rest_joints()
    joints = np.repeat(pose[None], frames, axis=0) + np.arange(frames)[:, None, None] * step
    joints[:, 20:22, 2] += swing * np.sin(np.arange(frames) / 3.0)[:, None]
    return joints


def test_measured_facts_choose_the_family():
    slow = grammar.measure_motion(walking_pose(81, np.array([0.0, 0.0, 0.6 / 20])))  # 0.6 m/s along +Z
    assert slow.travel == "forward" and slow.speed == pytest.approx(0.6)
    assert grammar.speed_class("walk", slow.speed) == "slow"
    captions = grammar.window_captions("walk", (), slow, key="w")
    assert len(captions) == 2
    assert all(any(p in c or progressive(p) in c for p in grammar.WALK["slow"]) for c in captions)
    assert all(any(d in c for d in grammar.DIRECTION["forward"]) for c in captions)
    left = grammar.measure_motion(walking_pose(81, np.array([1.8 / 20, 0.0, 0.0])))
    assert left.travel == "left" and grammar.speed_class("walk", left.speed) == "fast"
    still = grammar.measure_motion(walking_pose(81, np.zeros(3)))
    assert still.still
    assert all(any(p in c for p in grammar.STILL) for c in grammar.window_captions("idle", (), still, "i"))
    waving = grammar.measure_motion(walking_pose(81, np.zeros(3), swing=1.0))
    assert waving.travel == "in place" and not waving.still
    assert grammar.window_captions("idle", (), waving, "i") == []
    gesture = grammar.window_captions("gesture", ("waves the right hand",), waving, "g")
    assert len(gesture) == 1 and any(m in gesture[0] for m in grammar.IN_PLACE)
    assert grammar.window_captions("walk", (), still, "w") == []  # ends in place: no direction or speed claimed
    assert grammar.window_captions(None, (), slow, "n") == []


def standing_pose(frames: int, arms_out: bool = False) -> np.ndarray:
    """The rest pose (arms hanging down) held for `frames` frames, or with the arms raised sideways (a T-pose)."""
    pose = skeleton.rest_joints()
    if arms_out:
        for shoulder, chain, sign in ((16, [16, 18, 20], 1.0), (17, [17, 19, 21], -1.0)):
            quarter_turn = np.array([[0.0, -sign, 0.0], [sign, 0.0, 0.0], [0.0, 0.0, 1.0]])  # about z
            pose[chain] = (pose[chain] - pose[shoulder]) @ quarter_turn.T + pose[shoulder]
    return np.repeat(pose[None], frames, axis=0)


def test_still_ranges_find_a_resting_stand_and_nothing_else():
    walk = walking_pose(31, np.array([0.0, 0.0, 1.2 / 20]))
    stand = standing_pose(61) + walk[-1, 0] * np.array([1.0, 0.0, 1.0])
    wave = stand[:50].copy()
    wave[:, 20, 1] = stand[0, 15, 1] + 0.2  # the left wrist held above the head: a gesture, not a rest
    joints = np.concatenate([walk, stand[1:], wave])
    [(start, end)] = grammar.still_ranges(joints)
    assert 30 <= start <= 36 and 84 <= end <= 92 and end - start >= grammar.STILL_MIN_FRAMES  # the stand only
    assert grammar.still_ranges(standing_pose(100, arms_out=True)) == []  # a held T-pose
    assert grammar.still_ranges(standing_pose(grammar.STILL_MIN_FRAMES)) == []  # too short
    crouched = standing_pose(100)
    crouched[:, 15, 1] = crouched[:, 0, 1] + 0.3
    assert grammar.still_ranges(crouched) == []
    with pytest.raises(ValueError, match="expected joints"):
        grammar.still_ranges(np.zeros((50, 21, 3)))


def test_still_captions_come_from_the_still_family_only():
    captions = grammar.still_captions("take@0:still")
    assert len(set(captions)) == grammar.CAPTIONS_PER_CLIP
    assert all(any(p in c or progressive(p) in c for p in grammar.STILL) for c in captions)
    assert captions == grammar.still_captions("take@0:still")  # seeded by the key


def test_a_gesture_over_the_head_says_so():
    raised = standing_pose(60)
    raised[20:40, 20, 1] = raised[0, 15, 1] + 0.15  # the left wrist above the head for a second
    facts = grammar.measure_motion(raised)
    assert facts.hand_over_head_m == pytest.approx(0.15) and facts.travel == "in place"
    captions = grammar.window_captions("gesture", ("raises the left hand",), facts, "g")
    assert len(captions) == 2 and any(m in captions[0] for m in grammar.IN_PLACE)
    assert "raises the left hand" in captions[1] or "raising the left hand" in captions[1]
    assert any(m in captions[1] for m in grammar.OVER_HEAD)
    low = grammar.measure_motion(standing_pose(60))
    assert low.hand_over_head_m < 0
    assert not any(m in c for c in grammar.window_captions("gesture", ("raises the left hand",), low, "g")
                   for m in grammar.OVER_HEAD)
