"""Foot skating, contact and penetration metrics (eval.foot_skating) on hand-made motions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safemotion.eval.foot_skating import contact_ratio, foot_metrics, mean_metrics, penetration, skating_ratio
from safemotion.motion import skeleton

FPS = 20.0
L_TOE, R_TOE, L_ANKLE = 10, 11, 7
FRAMES = 41  # 40 steps


def standing(toe_height: float = 0.02) -> np.ndarray:
    """The rest pose held still, toes `toe_height` above the floor and ankles 8 cm above."""
    joints = np.repeat(skeleton.rest_joints()[None], FRAMES, axis=0)
    joints[:, [L_TOE, R_TOE], 1] = toe_height
    joints[:, [7, 8], 1] = 0.08
    return joints


def slide(joints: np.ndarray, joint: int, speed: float, frames: slice = slice(None)) -> np.ndarray:
    """`joint` moving forward at `speed` m/s during `frames` (and holding its place otherwise)."""
    out = joints.copy()
    moving = np.zeros(FRAMES)
    moving[frames] = speed / FPS
    out[:, joint, 2] += np.concatenate([[0.0], np.cumsum(moving[1:])])
    return out


def test_a_toe_sliding_fast_on_the_floor_skates_every_step():
    assert skating_ratio(slide(standing(), L_TOE, 1.0), FPS) == 1.0
    assert skating_ratio(standing(), FPS) == 0.0


def test_skating_needs_both_height_and_speed():
    assert skating_ratio(slide(standing(toe_height=0.08), L_TOE, 1.0), FPS) == 0.0  # in the air: a swing
    assert skating_ratio(slide(standing(), L_TOE, 0.4), FPS) == 0.0  # below 2.5 cm per frame
    # a 1-step flick is not skating: GMD also asks the 5-step mean to be above the threshold
    flick = standing()
    flick[21:, L_TOE, 2] += 0.05
    assert skating_ratio(flick, FPS) == 0.0
    # sliding during steps 10..29 (20 of 40): those steps skate
    assert skating_ratio(slide(standing(), L_TOE, 1.0, slice(11, 31)), FPS) == pytest.approx(20 / 40)


def test_contact_ratio_counts_planted_toes_of_both_feet():
    assert contact_ratio(standing(), FPS) == 1.0
    assert contact_ratio(slide(standing(), L_TOE, 1.0), FPS) == pytest.approx(0.5)  # one foot slides all along
    assert contact_ratio(slide(standing(), L_TOE, 0.1), FPS) == 1.0  # 10 cm/s is still planted
    assert contact_ratio(standing(toe_height=0.06), FPS) == 0.0  # floating toes are not planted


def test_penetration_depth_of_the_lowest_foot_joint():
    joints = standing()
    joints[10:30, L_ANKLE, 1] = -0.03  # 20 of 41 frames 3 cm below the floor
    deepest, mean = penetration(joints)
    assert deepest == pytest.approx(0.03) and mean == pytest.approx(0.03 * 20 / 41)
    assert penetration(standing()) == (0.0, 0.0)


def test_foot_metrics_and_their_mean():
    walk, sliding = foot_metrics(standing(), FPS), foot_metrics(slide(standing(), L_TOE, 1.0), FPS)
    assert (walk.skating_ratio, walk.contact_ratio) == (0.0, 1.0)
    both = mean_metrics([walk, sliding])
    assert both.skating_ratio == pytest.approx(0.5) and both.contact_ratio == pytest.approx(0.75)
    with pytest.raises(ValueError, match="22, 3"):
        foot_metrics(np.zeros((10, 24, 3)), FPS)


def test_eval_feet_reports_generated_and_real_clips_of_the_split(tmp_path, capsys):
    from server_support import build_tiny_lcr_model

    from safemotion import cli

    data = tmp_path / "data"
    (data / "new_joints").mkdir(parents=True)
    takes = {"B000000": ("bandai-1", "dataset-1_walk_normal_001", standing()),  # test: counted with its mirror
             "B000001": ("bandai-1", "dataset-1_walk-back_normal_001", standing()),  # another content
             "B000002": ("bandai-2", "dataset-2_walk_active_004", slide(standing(), L_TOE, 1.0)),  # train split
             "B000003": ("bandai-2", "dataset-2_run_active_010", slide(standing(), L_TOE, 1.0))}  # test run
    rows = ["id,source,take,start_frame,end_frame"]
    for motion_id, (source, take, joints) in takes.items():
        rows.append(f"{motion_id},{source},{take},0,{FRAMES}")
        for name in (motion_id, f"M{motion_id}"):
            np.save(data / "new_joints" / f"{name}.npy", joints.astype(np.float32))
    (data / "index.csv").write_text("\n".join(rows) + "\n")
    (data / "test.txt").write_text("B000000\nMB000000\nB000001\nMB000001\nB000003\nMB000003\n")
    model = build_tiny_lcr_model(tmp_path / "tiny")
    assert cli.main(["eval-feet", "--model", str(model), "--data", str(data), "--seeds", "2", "--seconds", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real"]["walk"]["clips"] == 2 and report["real"]["walk"]["contact_ratio"] == 1.0
    assert report["real"]["run"]["clips"] == 2 and report["real"]["run"]["skating_ratio"] == 1.0
    for kind in ("walk", "run"):
        generated = report["generated"][kind]
        assert [s["seed"] for s in generated["per_seed"]] == [0, 1]
        assert generated["cleaned"]["max_penetration_m"] < 1e-6  # grounded: no foot below the floor
        assert set(generated["raw"]) == {"skating_ratio", "contact_ratio", "max_penetration_m", "mean_penetration_m"}
