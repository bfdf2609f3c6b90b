"""Motion-X clips (motionx_format.md §2–§4): 322-d SMPL-X parameters at 30 fps → SMPL-22 joints at 20 fps.

Input layout (the user's own copy; Motion-X is licensed for non-commercial research only and never bundled):

    <root>/motion_data/smplx_322/<subset>/.../<clip>.npy     (T, 322) float, 30 fps
    <root>/texts/semantic_labels/<subset>/.../<clip>.txt     one caption per line (`caption#...` lines keep the caption)

A clip may also be an `.npz` with arrays `motion` (T, 322) and `fps`, which must be 30 (Motion-X is unified at 30 fps;
plain `.npy` files carry no frame rate). The body is posed by the real `smplx` package with the user's neutral SMPL-X
model (`SMPLX_NEUTRAL.npz`): global orientation, body, hands (full axis-angle, no PCA), jaw, the first 10 expression
coefficients (as Motion-X's own `humanml.py`), betas and translation; joints 0–21 are SMPL's 22 body joints.
Resampling to 20 fps slerps the rotations and interpolates the rest before posing, so bone lengths stay exact.

Known upstream conversion problems that are not reproduced: the translation is applied once (the official
`raw_pose_processing.py:108` adds it a second time, issue #113); an SMPL model (6,890 vertices) given in place of
SMPL-X is refused instead of failing later (issue #68); motions are resampled to 20 fps (the official features stay at
30 fps, issue #80).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from safemotion.motion import rotations as rot

MOTIONX_DIM = 322
MOTIONX_FPS = 30.0
TARGET_FPS = 20.0
SMPLX_VERTICES = 10475
SMPLX_JOINTS = 55
NUM_EXPRESSION = 10
POSE = slice(0, 156)  # root 3 + body 63 + hands 90, axis-angle
JAW, EXPRESSION, TRANSL, BETAS = slice(156, 159), slice(159, 159 + NUM_EXPRESSION), slice(309, 312), slice(312, 322)
# Arrays smplx.SMPLX reads from a model file (the face-contour landmarks are not used).
SMPLX_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights",
              "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr", "lmk_faces_idx",
              "lmk_bary_coords")


def read_motionx_motion(path: Path) -> np.ndarray:
    """(T, 322) float64 parameters of one clip; a wrong width, frame rate, NaN or too few frames raise ValueError."""
    path = Path(path)
    fps = MOTIONX_FPS
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                if "motion" not in loaded or "fps" not in loaded:
                    raise ValueError(f"{path}: an .npz clip needs arrays 'motion' (T, 322) and 'fps'")
                fps, motion = float(loaded["fps"]), loaded["motion"]
        else:
            motion = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable Motion-X array ({err})") from None
    if fps != MOTIONX_FPS:
        raise ValueError(f"{path}: frame rate {fps:g} fps; Motion-X clips are 30 fps (resample the clip to 30 fps)")
    if motion.ndim != 2 or motion.shape[1] != MOTIONX_DIM:
        raise ValueError(f"{path}: shape {list(motion.shape)}; Motion-X SMPL-X parameters are (frames, 322) "
                         "(the older 212-d variant without face parameters is not supported)")
    if not np.issubdtype(motion.dtype, np.floating):
        raise ValueError(f"{path}: dtype {motion.dtype}; Motion-X parameters are floating point")
    if len(motion) < 2:
        raise ValueError(f"{path}: {len(motion)} frame(s); a clip needs at least 2")
    bad = np.argwhere(~np.isfinite(motion))
    if len(bad):
        raise ValueError(f"{path}: contains NaN or infinite values (first at frame {bad[0][0]}, column {bad[0][1]})")
    return motion.astype(np.float64)


def smplx_model_file(path: Path) -> Path:
    """The neutral SMPL-X .npz: `path` itself or `path/SMPLX_NEUTRAL.npz` (or `path/smplx/SMPLX_NEUTRAL.npz`)."""
    path = Path(path)
    for candidate in (path, path / "SMPLX_NEUTRAL.npz", path / "smplx" / "SMPLX_NEUTRAL.npz"):
        if candidate.is_file() and candidate.suffix == ".npz":
            return candidate
    raise FileNotFoundError(f"{path}: no SMPL-X model found; pass --smplx-model with the folder holding "
                            "SMPLX_NEUTRAL.npz (download SMPL-X v1.1 from smpl-x.is.tue.mpg.de; it is never bundled)")


@lru_cache(maxsize=2)
def load_smplx(path: Path) -> torch.nn.Module:
    """The neutral SMPL-X body through `smplx` (float64), from a checked copy holding only plain arrays."""
    import smplx

    file = smplx_model_file(path)
    arrays = {}
    try:
        with np.load(file, allow_pickle=False) as data:
            for key in SMPLX_KEYS:
                if key not in data:
                    raise ValueError(f"{file}: array '{key}' is missing; is this an SMPL-X model file?")
                arrays[key] = data[key]
    except (OSError, ValueError) as err:
        if str(err).startswith(str(file)):
            raise
        raise ValueError(f"{file}: not a readable SMPL-X model ({err})") from None
    vertices, joints = len(arrays["v_template"]), arrays["J_regressor"].shape[0]
    if vertices != SMPLX_VERTICES or joints != SMPLX_JOINTS:
        raise ValueError(f"{file}: {vertices:,} vertices and {joints} joints, expected SMPL-X's {SMPLX_VERTICES:,} "
                         f"and {SMPLX_JOINTS} (an SMPL or SMPL+H model cannot pose Motion-X clips)")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "SMPLX_NEUTRAL.npz"
        np.savez(copy, **arrays)
        return smplx.SMPLX(str(copy), gender="neutral", use_pca=False, flat_hand_mean=True, num_betas=10,
                           num_expression_coeffs=NUM_EXPRESSION, dtype=torch.float64).eval()


def resample_parameters(motion: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """(T, 322) parameters sampled at `target_fps` over the same duration: rotations slerped, the rest lerped."""
    last = len(motion) - 1
    count = int(np.floor(last / fps * target_fps + 1e-6)) + 1
    source = np.arange(count) * (fps / target_fps)
    i0 = np.minimum(np.floor(source + 1e-9).astype(int), last)
    i1 = np.minimum(i0 + 1, last)
    alpha = np.clip(source - i0, 0.0, 1.0)
    out = motion[i0] + alpha[:, None] * (motion[i1] - motion[i0])
    for block in (POSE, JAW):
        quats = rot.axis_angle_to_quat(motion[:, block].reshape(len(motion), -1, 3))
        out[:, block] = rot.quat_to_axis_angle(rot.qslerp(quats[i0], quats[i1], alpha[:, None])).reshape(count, -1)
    return out


@torch.no_grad()
def smplx_joints(motion: np.ndarray, model: torch.nn.Module) -> np.ndarray:
    """SMPL-22 joints (T, 22, 3) in metres of (T, 322) parameters, posed by the SMPL-X model (translation once)."""
    p = torch.from_numpy(motion)
    frames = len(p)
    zeros = torch.zeros(frames, 3, dtype=torch.float64)
    output = model(global_orient=p[:, 0:3], body_pose=p[:, 3:66], left_hand_pose=p[:, 66:111],
                   right_hand_pose=p[:, 111:156], jaw_pose=p[:, JAW], leye_pose=zeros, reye_pose=zeros,
                   expression=p[:, EXPRESSION], betas=p[:, BETAS], transl=p[:, TRANSL])
    return output.joints[:, :22].numpy()


def load_motionx_joints(path: Path, smplx_model: Path) -> np.ndarray:
    """SMPL-22 joints (T', 22, 3) at 20 fps of one Motion-X clip."""
    motion = read_motionx_motion(path)
    return smplx_joints(resample_parameters(motion, MOTIONX_FPS, TARGET_FPS), load_smplx(Path(smplx_model)))


def motionx_clips(root: Path) -> Iterator[tuple[str, Path, tuple[str, ...]]]:
    """(id, motion file, captions) of every clip under root, sorted by id; a clip without captions raises."""
    motions = Path(root) / "motion_data" / "smplx_322"
    texts = Path(root) / "texts" / "semantic_labels"
    if not motions.is_dir():
        raise FileNotFoundError(f"{motions}: Motion-X motion folder not found (expected "
                                "<root>/motion_data/smplx_322/<subset>/.../<clip>.npy)")
    files = sorted(p for p in motions.rglob("*") if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise FileNotFoundError(f"{motions}: no .npy clips")
    for file in files:
        clip_id = file.relative_to(motions).with_suffix("").as_posix()
        text = texts / f"{clip_id}.txt"
        if not text.is_file():
            raise FileNotFoundError(f"{text}: caption file missing for Motion-X clip {clip_id}")
        captions = tuple(line.split("#", 1)[0].strip() for line in text.read_text(encoding="utf-8").splitlines())
        captions = tuple(c for c in captions if c)
        if not captions:
            raise ValueError(f"{text}: no caption for Motion-X clip {clip_id}")
        yield clip_id, file, captions
