"""A procedural stand-in SMPL-X model in SMPL-X's own .npz layout (the real model is licence-gated and never bundled).

10,475 vertices and 55 joints like SMPL-X: the first 55 vertices sit on the joints and the joint regressor picks
them, so the rest joints are SMPL's 22 body joints (SafeMotion's procedural rest skeleton) plus jaw, eyes and 2 × 15
finger joints; every other vertex hangs rigidly off its nearest joint. Shape and expression directions are small
random fields (betas move the joints, as in the real model); pose correctives are zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from safemotion.motion import smpl

VERTICES = 10475
JOINTS = 55
# SMPL-X kinematic tree: 22 body joints, jaw/eyes off the head (15), five 3-joint fingers per wrist (20, 21).
PARENTS = list(smpl.PARENTS[:22]) + [15, 15, 15] + [p for wrist, first in ((20, 25), (21, 40))
                                                      for f in range(5) for p in (wrist, first + 3 * f,
                                                                                  first + 3 * f + 1)]


def standin_rest_joints() -> np.ndarray:
    """(55, 3) rest joints: SMPL's body, a jaw and eyes in front of the head, fingers fanned out from the wrists."""
    rest = np.zeros((JOINTS, 3))
    rest[:22] = smpl.smpl_rest_joints()[:22]
    head = rest[15]
    rest[22], rest[23], rest[24] = head + (0, -0.05, 0.08), head + (0.03, 0.03, 0.08), head + (-0.03, 0.03, 0.08)
    for wrist, first, side in ((20, 25, 1.0), (21, 40, -1.0)):
        for finger in range(5):
            for segment in range(3):
                rest[first + 3 * finger + segment] = rest[wrist] + (side * (0.05 + 0.03 * segment), 0.0,
                                                                   0.02 * (finger - 2))
    return rest


def write_standin_smplx(folder: Path, seed: int = 0) -> Path:
    """Write `folder/SMPLX_NEUTRAL.npz` and return the folder."""
    rng = np.random.default_rng(seed)
    rest = standin_rest_joints()
    owner = np.concatenate([np.arange(JOINTS), rng.integers(0, JOINTS, VERTICES - JOINTS)])
    vertices = rest[owner] + np.concatenate([np.zeros((JOINTS, 3)), rng.normal(0, 0.03, (VERTICES - JOINTS, 3))])
    regressor = np.zeros((JOINTS, VERTICES))
    regressor[np.arange(JOINTS), np.arange(JOINTS)] = 1.0
    weights = np.zeros((VERTICES, JOINTS))
    weights[np.arange(VERTICES), owner] = 1.0
    faces = np.arange(VERTICES - VERTICES % 3).reshape(-1, 3)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "SMPLX_NEUTRAL.npz",
        v_template=vertices, f=faces.astype(np.int64), J_regressor=regressor, weights=weights,
        kintree_table=np.array([[4294967295] + PARENTS[1:], list(range(JOINTS))], dtype=np.int64),
        shapedirs=rng.normal(0, 0.002, (VERTICES, 3, 20)), posedirs=np.zeros((VERTICES, 3, 9 * (JOINTS - 1))),
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45), hands_meanl=np.zeros(45),
        hands_meanr=np.zeros(45), lmk_faces_idx=np.arange(51, dtype=np.int64), lmk_bary_coords=np.full((51, 3), 1 / 3),
    )
    return folder
