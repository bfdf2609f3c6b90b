"""Prompt adherence (issue 3): the physical checks on synthetic joints, then the suite on the committed mini model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safemotion.eval.adherence import (
    J,
    bows,
    facing,
    jumps,
    raises_hand,
    run_suite,
    speed,
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


@pytest.fixture(scope="module")
def suite():
    torch.manual_seed(0)
    return run_suite(Generator.from_dir(DEFAULT_MODEL_DIR), seeds=range(5))


# The committed mini model does not yet bow on request (15 Bandai takes; MODEL_CARD.md gives the measured rates).
# This stays a strict xfail so that a better model turns it red.
KNOWN_MISSES = {"bow lowers the head ≥ 15 cm, pelvis in place"}
CHECKS = ["walk forward ≥ 1 m in 4 s", "walk backwards against the facing", "right hand above head, left below shoulder",
          "left hand above head, right below shoulder", "run faster than walk", "jump lifts the pelvis ≥ 15 cm",
          "bow lowers the head ≥ 15 cm, pelvis in place"]


@pytest.mark.parametrize("check", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="model card: not "
                                                                               "learned yet")) if name in KNOWN_MISSES
                                   else name for name in CHECKS])
def test_committed_mini_model_follows_in_domain_prompts(suite, check):
    results = {result.name: result for result in suite}
    assert set(results) == set(CHECKS)
    result = results[check]
    assert result.pass_rate >= 0.8, (result.pass_rate, result.measured)
