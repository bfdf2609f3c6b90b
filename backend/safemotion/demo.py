"""`make demo`: the longest real path through SafeMotion that exists today, end to end, with measured errors.

mocap clip → HumanML3D 263-d features → joints recovered from the features → SMPL pose by analytic IK → a stand-in
body model in SMPL's file format posed by the real smplx code → `motion.npz`, `motion.bvh`, `report.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from safemotion.data.bvh import bvh_from_smpl_joints, write_bvh
from safemotion.data.deepmimic import load_deepmimic
from safemotion.motion import skeleton
from safemotion.motion.body_model import load_body_model, write_standin_smpl
from safemotion.motion.features import extract_features, recover_from_ric
from safemotion.motion.smpl import joints_to_smpl, smpl_forward_kinematics

DEEPMIMIC_WALK = Path(__file__).resolve().parents[3] / "shared" / "data" / "deepmimic" / "humanoid3d_walk.txt"


def procedural_walk(seconds: float = 4.0, fps: float = 20.0) -> np.ndarray:
    """A simple walk cycle [T,22,3] on HumanML3D's rest skeleton: swinging legs and arms, pelvis moving forward."""
    rest = skeleton.rest_joints()
    frames = int(seconds * fps)
    phase = 2 * np.pi * 1.8 * np.arange(frames) / fps
    joints = np.repeat(rest[None], frames, axis=0)
    for side, sign in ((skeleton.LEFT_CHAIN, 1.0), (skeleton.RIGHT_CHAIN, -1.0)):
        hip, knee, ankle, foot = side[:4]
        shoulder, elbow, wrist = side[5:8]
        swing = 0.45 * sign * np.sin(phase)
        for start, chain in ((hip, (knee, ankle, foot)), (shoulder, (elbow, wrist))):
            angle = swing if start == hip else -0.6 * swing
            pivot = joints[:, start].copy()
            for j in chain:
                d = rest[j] - rest[start]
                joints[:, j, 1] = pivot[:, 1] + d[1] * np.cos(angle) - d[2] * np.sin(angle)
                joints[:, j, 2] = pivot[:, 2] - d[1] * np.sin(angle) + d[2] * np.cos(angle)
    joints[..., 2] += 1.2 * np.arange(frames)[:, None] / fps
    joints[..., 1] += 0.02 * np.cos(2 * phase)[:, None]
    return joints


def loop_clip(cycle: np.ndarray, repeats: int) -> np.ndarray:
    """Repeat a looping clip [T,22,3], carrying its horizontal travel over so each loop starts where the last ended."""
    step = cycle[-1, 0] - cycle[0, 0]
    step[1] = 0.0
    step *= len(cycle) / (len(cycle) - 1)
    return np.concatenate([cycle + k * step for k in range(repeats)])


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_demo(out: Path) -> dict:
    """Run the pipeline into `out` and return the report (also written as report.json)."""
    out.mkdir(parents=True, exist_ok=True)
    if DEEPMIMIC_WALK.is_file():
        source_name = f"DeepMimic walk ({DEEPMIMIC_WALK})"
        cycle, _ = load_deepmimic(DEEPMIMIC_WALK)
        joints = loop_clip(cycle, repeats=3)
    else:
        source_name = "procedural walk cycle (../shared/data not present)"
        joints = procedural_walk()

    features = extract_features(joints)
    recovered = recover_from_ric(features)
    motion = joints_to_smpl(recovered, fps=20.0)
    fk = smpl_forward_kinematics(motion.pose, motion.transl, motion.rest_joints)[:, :22]
    ik_error = np.linalg.norm(fk - recovered, axis=-1).mean()

    model_path = write_standin_smpl(out / "standin_smpl.pkl", motion.rest_joints)
    body = load_body_model(model_path)
    with torch.no_grad():
        posed = body(
            global_orient=torch.from_numpy(motion.pose[:, 0]).float(),
            body_pose=torch.from_numpy(motion.pose[:, 1:].reshape(len(motion.pose), -1)).float(),
            transl=torch.from_numpy(motion.transl).float(),
        )
    smplx_error = (posed.joints[:, :22].double().numpy() - recovered).__abs__().max()

    _atomic_save_npz(
        out / "motion.npz", joints=recovered.astype(np.float32), features=features,
        pose=motion.pose.astype(np.float32), transl=motion.transl.astype(np.float32),
        rest_joints=motion.rest_joints.astype(np.float32), fps=np.float32(20.0),
    )
    write_bvh(bvh_from_smpl_joints(recovered, fps=20.0), out / "motion.bvh")
    report = {
        "source": source_name,
        "frames": int(recovered.shape[0]),
        "seconds": recovered.shape[0] / 20.0,
        "travel_m": float(np.linalg.norm(recovered[-1, 0, [0, 2]] - recovered[0, 0, [0, 2]])),
        "ik_round_trip_mpjpe_m": float(ik_error),
        "smplx_vs_recovered_max_abs_m": float(smplx_error),
        "body_model_vertices": int(posed.vertices.shape[1]),
        "outputs": sorted({p.name for p in out.iterdir()} | {"report.json"}),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of `make demo`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    report = run_demo(parser.parse_args(argv).out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
