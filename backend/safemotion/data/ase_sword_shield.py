"""Reallusion sword-and-shield clips from NVIDIA ASE (`shared/data/ase_sword_shield/`) as SMPL-22 joints at 20 fps.

Each `motions/*.npy` file is `np.save` of a poselib `SkeletonMotion` dict (a 0-d object array), so loading it means
unpickling. `read_skeleton_motion` parses the .npy header itself and unpickles through `SkeletonMotionUnpickler`,
which admits only the five globals such a file references (shared/data/ase_sword_shield/README.md, "Format") and
refuses anything else (`os.system`, `builtins.eval`, poselib or torch classes, ...) before it is called.

The skeleton is the AMP humanoid that DeepMimic uses, plus a sword tip and a shield mount (rigid props, not joints):
the 15 body nodes are renamed to DeepMimic's joints and the clip is expressed in DeepMimic's frame (z-up, facing +x,
left +y  ->  Y-up, facing +x, right +z), so `deepmimic.humanoid_joints` resamples it to 20 fps by slerping the local
rotations (the sword swings are under-sampled at ~30 fps; interpolating positions would cut their arcs) and places
the SMPL-22 joints exactly as for DeepMimic clips, facing +Z with the left side at +x.

Clip metadata comes from `labels.tsv` (category; attack vs non-attack from its violent-content column; measured net
displacement) and `captions.tsv` (three checked captions per clip). Three files are byte-identical duplicates
(`duplicate_of` set) and are dropped. Several names give the wrong side (`Fall_Left` lands to the back-right,
`Shield_BlockRight` side-steps left, ...), so `AseClip.travel` is the measured net displacement, never the name.
Floor height is not trusted (some clips float or sink up to 0.19 m): the dataset builder grounds every window on its
lowest joint (`features.canonicalize`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safemotion.data.deepmimic import HUMANOID_JOINTS, humanoid_joints
from safemotion.data.tsv_table import read_tsv
from safemotion.motion import rotations as rot

# (module, name) pairs a SkeletonMotion pickle may reference; everything else is refused.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
})

NODE_NAMES = (
    "pelvis", "torso", "head", "right_upper_arm", "right_lower_arm", "right_hand", "sword", "left_upper_arm",
    "left_lower_arm", "shield", "left_hand", "right_thigh", "right_shin", "right_foot", "left_thigh", "left_shin",
    "left_foot",
)
PARENTS = (-1, 0, 1, 1, 3, 4, 5, 1, 7, 8, 8, 0, 11, 12, 0, 14, 15)

# DeepMimic humanoid joint -> ASE node (the sword tip and shield mount have no SMPL-22 counterpart).
_NODE_OF_JOINT = {
    "root": "pelvis", "chest": "torso", "neck": "head",
    "right_hip": "right_thigh", "right_knee": "right_shin", "right_ankle": "right_foot",
    "right_shoulder": "right_upper_arm", "right_elbow": "right_lower_arm", "right_wrist": "right_hand",
    "left_hip": "left_thigh", "left_knee": "left_shin", "left_ankle": "left_foot",
    "left_shoulder": "left_upper_arm", "left_elbow": "left_lower_arm", "left_wrist": "left_hand",
}
_NODE_INDEX = [NODE_NAMES.index(_NODE_OF_JOINT[name]) for name in HUMANOID_JOINTS]

# ASE world (z up, facing +x, left +y) -> DeepMimic frame (y up, facing +x, right +z): (x, y, z) -> (x, z, -y).
_TO_DEEPMIMIC = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_TO_DEEPMIMIC_Q = rot.matrix_to_quat(_TO_DEEPMIMIC)

MIN_FPS, MAX_FPS = 1.0, 1000.0
IN_PLACE_METRES = 0.5  # net displacement below this: the clip stays in place


class SkeletonMotionUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS and names the file when it refuses anything else."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        """Resolve an allowed global; raise pickle.UnpicklingError for every other one."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.path}: refused to load {module}.{name}: a SkeletonMotion .npy may only reference numpy "
                "arrays, dtypes and scalars and collections.OrderedDict; the file is not an ASE motion clip or has "
                "been tampered with"
            )
        return super().find_class(module, name)


@dataclass(frozen=True)
class SkeletonMotion:
    """A validated ASE clip: local rotations [T, 17, 4] (w, x, y, z), root [T, 3] m, offsets [17, 3] m, z up."""

    rotations: np.ndarray
    root_translation: np.ndarray
    offsets: np.ndarray
    fps: float


def _unpickle_npy(path: Path) -> object:
    """The object stored in a .npy file whose payload is a pickled 0-d object array, unpickled safely."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
        except ValueError as error:
            raise ValueError(f"{path}: not a valid .npy file ({error})") from None
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(
                f"{path}: holds a plain {dtype} array of shape {shape}, not a SkeletonMotion dict (a pickled 0-d "
                "object array); is this an ASE sword-and-shield clip?"
            )
        try:
            array = SkeletonMotionUnpickler(f, path).load()
        except pickle.UnpicklingError as error:
            if str(error).startswith(str(path)):
                raise ValueError(str(error)) from None
            raise ValueError(f"{path}: corrupt pickle payload ({error})") from None
        except (EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError) as error:
            raise ValueError(f"{path}: corrupt pickle payload ({type(error).__name__}: {error})") from None
    if not isinstance(array, np.ndarray) or array.shape != () or array.dtype != np.dtype(object):
        raise ValueError(f"{path}: the pickle holds {type(array).__name__}, not a 0-d object array")
    return array.item()


def _array(data: dict, key: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """data[key]['arr'] (or data[key] for skeleton fields given as dotted keys) checked for shape and finiteness."""
    value: object = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{path}: missing '{key}' (expected a poselib SkeletonMotion dict)")
        value = value[part]
    value = value.get("arr") if isinstance(value, dict) else value
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise ValueError(f"{path}: '{key}' must be a numeric array, got {type(value).__name__}")
    if value.ndim != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
        wanted = "[" + ", ".join("T" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{path}: '{key}' has shape {list(value.shape)}, expected {wanted}")
    if not np.isfinite(value).all():
        raise ValueError(f"{path}: '{key}' contains NaN or infinite values")
    return value.astype(np.float64)


def read_skeleton_motion(path: str | os.PathLike) -> SkeletonMotion:
    """Read and validate one ASE `SkeletonMotion` .npy through the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ASE motion file")
    data = _unpickle_npy(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a SkeletonMotion dict, got {type(data).__name__}")
    tree = data.get("skeleton_tree")
    names = tree.get("node_names") if isinstance(tree, dict) else None
    if names is None or tuple(names) != NODE_NAMES:
        raise ValueError(f"{path}: skeleton nodes {names} are not the 17 AMP sword-and-shield bodies {NODE_NAMES}")
    parents = _array(data, "skeleton_tree.parent_indices", path, (len(NODE_NAMES),))
    if tuple(int(p) for p in parents) != PARENTS:
        raise ValueError(f"{path}: skeleton parents {parents.astype(int).tolist()} differ from {list(PARENTS)}")
    if data.get("is_local") is not True:
        raise ValueError(f"{path}: rotations must be local (is_local True), got is_local={data.get('is_local')!r}")
    rotations = _array(data, "rotation", path, (None, len(NODE_NAMES), 4))
    root = _array(data, "root_translation", path, (len(rotations), 3))
    offsets = _array(data, "skeleton_tree.local_translation", path, (len(NODE_NAMES), 3))
    fps = data.get("fps")
    if not isinstance(fps, (float, int, np.floating, np.integer)) or not MIN_FPS <= float(fps) <= MAX_FPS:
        raise ValueError(f"{path}: fps must be a number in [{MIN_FPS:g}, {MAX_FPS:g}], got {fps!r}")
    if len(rotations) < 2:
        raise ValueError(f"{path}: needs at least 2 frames, has {len(rotations)}")
    norms = np.linalg.norm(rotations, axis=-1)
    if (np.abs(norms - 1.0) > 1e-3).any():
        frame, node = np.argwhere(np.abs(norms - 1.0) > 1e-3)[0]
        raise ValueError(f"{path}: rotation of {NODE_NAMES[node]} in frame {frame} is not a unit quaternion")
    return SkeletonMotion(rotations[..., [3, 0, 1, 2]], root, offsets, float(fps))


def load_ase_motion(path: str | os.PathLike, fps: float = 20.0) -> tuple[np.ndarray, float]:
    """SMPL-22 joints [T, 22, 3] (metres, Y-up, first frame facing +Z, left +x) at `fps`, and the file's own fps."""
    motion = read_skeleton_motion(path)
    frames = len(motion.rotations)
    quats = rot.qmul(
        np.broadcast_to(_TO_DEEPMIMIC_Q, (frames, len(_NODE_INDEX), 4)),
        rot.qmul(motion.rotations[:, _NODE_INDEX], np.broadcast_to(rot.qinv(_TO_DEEPMIMIC_Q), (frames, 1, 4))),
    )
    offsets = {name: _TO_DEEPMIMIC @ motion.offsets[NODE_NAMES.index(node)] for name, node in _NODE_OF_JOINT.items()}
    root = motion.root_translation @ _TO_DEEPMIMIC.T
    times = np.arange(frames) / motion.fps
    return humanoid_joints(times, root, quats, offsets, fps), motion.fps


# --- clip metadata ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AseClip:
    """One file of labels.tsv with its captions: category, attack or not, measured travel, duplicate status."""

    file: str
    clip: str
    category: str
    attack: bool
    travel: str  # "forward", "backward", "left", "right" or "in place": measured, not from the name
    captions: tuple[str, ...]
    duplicate_of: str | None

    @property
    def labels(self) -> tuple[str, ...]:
        """Dataset labels: the category and attack / non-attack."""
        return (f"ase:{self.category}", "attack:yes" if self.attack else "attack:no")


def travel_direction(net_forward_m: float, net_left_m: float) -> str:
    """The dominant direction of a net displacement in the clip's initial facing frame, or "in place"."""
    if max(abs(net_forward_m), abs(net_left_m)) < IN_PLACE_METRES:
        return "in place"
    if abs(net_forward_m) >= abs(net_left_m):
        return "forward" if net_forward_m > 0 else "backward"
    return "left" if net_left_m > 0 else "right"


def read_clips(folder: str | os.PathLike) -> list[AseClip]:
    """Every file of `labels.tsv` (duplicates included, marked) with its captions from `captions.tsv`, in file order."""
    folder = Path(folder)
    captions: dict[str, list[str]] = {}
    for _, row in read_tsv(folder / "captions.tsv", {"file", "caption"}):
        captions.setdefault(row["file"], []).append(row["caption"].strip())
    clips = []
    wanted = {"file", "clip", "category", "violent_content", "net_forward_m", "net_left_m", "duplicate_of"}
    for line, row in read_tsv(folder / "labels.tsv", wanted):
        where = f"{folder / 'labels.tsv'}:{line}"
        try:
            forward, left = float(row["net_forward_m"]), float(row["net_left_m"])
        except ValueError:
            raise ValueError(f"{where}: net_forward_m / net_left_m must be numbers") from None
        duplicate = row["duplicate_of"].strip() or None
        texts = tuple(captions.get(row["file"], ()))
        if duplicate is None and not texts:
            raise ValueError(f"{where}: {row['file']} has no caption in captions.tsv")
        clips.append(AseClip(
            file=row["file"], clip=row["clip"], category=row["category"],
            attack=row["violent_content"].startswith("yes"), travel=travel_direction(forward, left),
            captions=texts, duplicate_of=duplicate,
        ))
    return clips
