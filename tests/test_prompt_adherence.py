"""Prompt adherence (issue 3): the physical checks on synthetic joints, then the suite on the committed mini model."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from safemotion.data import caption_grammar
from safemotion.eval.adherence import (
    PARAPHRASE_CHECKS,
    PARAPHRASE_SPEEDS,
    J,
    bows,
    facing,
    jumps,
    raises_hand,
    run_suite,
    speed,
    stays_still,
    walks_backwards,
    walks_forward,
)
from safemotion.generate import DEFAULT_MODEL_DIR, Generator
from safemotion.motion.skeleton import rest_joints

FRAMES = 80


def standing(frames: int = FRAMES) -> np.ndarray:
    """The rest pose (facing +Z) held for `frames` frames, arms lowered to the hips."""
    joints = np.repeat(rest_joints()[None], frames, axis=0)
    for side in ("left", "right"):
        joints[:, J[f"{side}_wrist"], 1] = joints[:, J["pelvis"], 1]
    return joints


def moved(joints: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Joints translated linearly from 0 to `total` over the clip."""
    return joints + np.linspace(0, 1, len(joints))[:, None, None] * total


def test_rest_pose_faces_plus_z():
    np.testing.assert_allclose(facing(standing(2)), [[0, 1], [0, 1]], atol=1e-9)


def test_walk_checks():
    forward, backward = moved(standing(), np.array([0, 0, 1.2])), moved(standing(), np.array([0, 0, -0.6]))
    assert walks_forward(forward)[0] and not walks_forward(moved(standing(), np.array([0, 0, 0.8])))[0]
    assert walks_backwards(backward)[0] and not walks_backwards(forward)[0]
    assert walks_backwards(backward)[1]["along_facing_m"] == pytest.approx(-0.6)
    assert speed(forward, fps=20) == pytest.approx(1.2 * 20 / (FRAMES - 1))


def test_raised_hand_checks_both_sides():
    joints = standing()
    joints[40, J["right_wrist"], 1] = joints[40, J["head"], 1] + 0.2
    passed, measured = raises_hand("right")(joints)
    assert passed and measured["right_wrist_over_head_m"] == pytest.approx(0.2)
    assert not raises_hand("left")(joints)[0]
    joints[40, J["left_wrist"], 1] = joints[40, J["left_shoulder"], 1] + 0.05  # the other hand up too: fails
    assert not raises_hand("right")(joints)[0]


def test_bow_and_jump_checks():
    bow = standing()
    bow[30:50, J["head"], 1] -= 0.2
    assert bows(bow)[0]
    assert not bows(moved(bow, np.array([0, 0, 1.0])))[0]
    assert not bows(standing())[0]
    jump = standing()
    jump[30:40] += np.array([0, 0.2, 0])
    assert jumps(jump)[0] and not jumps(standing())[0]


def test_stays_still_check():
    assert stays_still(standing())[0]
    assert stays_still(moved(standing(), np.array([0.3, 0, 0.3])))[0]  # 42 cm: still within 0.5 m
    passed, measured = stays_still(moved(standing(), np.array([0, 0, 0.6])))
    assert not passed and measured["pelvis_wander_m"] == pytest.approx(0.6)
    there_and_back = standing()
    there_and_back[20:60, J["pelvis"], 0] += 0.7  # wanders off and comes back: not still
    assert not stays_still(there_and_back)[0]


# Every paraphrased prompt; "a person walks forward" is the in-domain walk they are compared with.
PARAPHRASES = ({prompt for prompt, _, _ in PARAPHRASE_CHECKS.values()}
               | {prompt for pair in PARAPHRASE_SPEEDS.values() for prompt in pair}) - {"a person walks forward"}


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def test_paraphrases_are_held_out_from_the_caption_grammar():
    """The grammar never writes a held-out prompt (tests/test_caption_grammar.py), and every paraphrase is one."""
    assert len(PARAPHRASE_CHECKS) + len(PARAPHRASE_SPEEDS) >= 6
    assert {caption_grammar.normalize(p) for p in PARAPHRASES} <= caption_grammar.held_out_prompts()


def test_paraphrases_are_not_cmu_captions(shared_dir):
    cmu = shared_dir / "data" / "cmu"
    kit = json.loads((cmu / "kitml_cmu_captions.json").read_text(encoding="utf-8"))["trials"]
    known = {words(c["text"]) for trial in kit.values() for c in trial["captions"]}
    with (cmu / "cmu_trials.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["Motion Description"].strip():
                known |= {words(c) for c in caption_grammar.cmu_description_captions(row["Motion Description"],
                                                                                     int(row["Subject"]))}
    assert len(known) > 1000
    assert not {words(p) for p in PARAPHRASES} & known


@pytest.fixture(scope="module")
def suite():
    torch.manual_seed(0)
    return run_suite(Generator.from_dir(DEFAULT_MODEL_DIR), seeds=range(5))


# The committed mini model does not yet bow on request (15 Bandai takes; MODEL_CARD.md gives the measured rates), nor
# stand still or stroll slowly when asked in words outside its captions (0/10 each). These stay strict xfails so that a
# better model turns them red.
KNOWN_MISSES = {"bow lowers the head ≥ 15 cm, pelvis in place", "'stays still': pelvis within 0.5 m over 3 s",
                "'strolls ahead at an easy pace' slower than 'walks forward'"}
CHECKS = ["walk forward ≥ 1 m in 4 s", "walk backwards against the facing", "right hand above head, left below shoulder",
          "left hand above head, right below shoulder", "run faster than walk", "jump lifts the pelvis ≥ 15 cm",
          "bow lowers the head ≥ 15 cm, pelvis in place", *PARAPHRASE_CHECKS, *PARAPHRASE_SPEEDS]


@pytest.mark.parametrize("check", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="model card: not "
                                                                               "learned yet")) if name in KNOWN_MISSES
                                   else name for name in CHECKS])
def test_committed_mini_model_follows_in_domain_prompts(suite, check):
    results = {result.name: result for result in suite}
    assert set(results) == set(CHECKS)
    result = results[check]
    assert result.pass_rate >= 0.8, (result.pass_rate, result.measured)
