"""Joint-map presets that place the 22 SMPL/HumanML3D joints on mocap skeletons (shared/data/README.md §10).

Each preset lists, in SMPL-22 order, either a source joint name or a `Lerp` between two source joints. Source names may
carry any prefix that ends in ':' or '_' (Maya namespaces such as `mixamorig:` / `mixamorig7:`, or `Neo_`), as long as
all joints of a skeleton share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safemotion.motion.skeleton import SMPL22_NAMES


@dataclass(frozen=True)
class Lerp:
    """A point on the segment between two source joints: a + t * (b - a)."""

    a: str
    b: str
    t: float


Entry = str | Lerp

PRESETS: dict[str, tuple[Entry, ...]] = {
    # SafeMotion's own BVH output (bvh.bvh_from_joints on the SMPL-22 skeleton): identity.
    "smpl": SMPL22_NAMES,
    # Bandai Namco Research Motion Dataset (Hips + 21 joints; Chest sits between SMPL spine2 and spine3).
    "bandai": (
        "Hips", "UpperLeg_L", "UpperLeg_R", "Spine", "LowerLeg_L", "LowerLeg_R",
        Lerp("Spine", "Chest", 0.5), "Foot_L", "Foot_R", "Chest", "Toes_L", "Toes_R",
        "Neck", "Shoulder_L", "Shoulder_R", "Head", "UpperArm_L", "UpperArm_R",
        "LowerArm_L", "LowerArm_R", "Hand_L", "Hand_R",
    ),
    # Reallusion iClone / Character Creator CC_Base rig (100 joints, mostly twist and finger helpers).
    "cc_base": (
        "CC_Base_Hip", "CC_Base_L_Thigh", "CC_Base_R_Thigh", "CC_Base_Waist", "CC_Base_L_Calf", "CC_Base_R_Calf",
        "CC_Base_Spine01", "CC_Base_L_Foot", "CC_Base_R_Foot", "CC_Base_Spine02", "CC_Base_L_ToeBase",
        "CC_Base_R_ToeBase", "CC_Base_NeckTwist01", "CC_Base_L_Clavicle", "CC_Base_R_Clavicle", "CC_Base_Head",
        "CC_Base_L_Upperarm", "CC_Base_R_Upperarm", "CC_Base_L_Forearm", "CC_Base_R_Forearm",
        "CC_Base_L_Hand", "CC_Base_R_Hand",
    ),
    # CMU mocap in the cgspeed BVH conversion (31 joints; no collar bone, spine3 and collars interpolated).
    "cmu": (
        "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg",
        "Spine1", "LeftFoot", "RightFoot", Lerp("Spine1", "Neck1", 0.35), "LeftToeBase", "RightToeBase",
        "Neck1", Lerp("Spine1", "LeftArm", 0.4), Lerp("Spine1", "RightArm", 0.4), "Head", "LeftArm", "RightArm",
        "LeftForeArm", "RightForeArm", "LeftHand", "RightHand",
    ),
    # Mixamo-style names (mixamorig:Hips, mixamorig1:Hips, Neo_Hips in the keijiro CMU FBX files, plain Hips).
    "mixamo": (
        "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg",
        "Spine1", "LeftFoot", "RightFoot", "Spine2", "LeftToeBase", "RightToeBase",
        "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm", "RightArm",
        "LeftForeArm", "RightForeArm", "LeftHand", "RightHand",
    ),
    # BVH skeletons with Hips/Ab/Chest and collar joints that sit at the neck (assimp's Boxing_Toes.bvh); spine2
    # halfway up the Ab-Chest segment, collars halfway out to the shoulders.
    "ab_chest": (
        "Hips", "LeftHip", "RightHip", "Ab", "LeftKnee", "RightKnee",
        Lerp("Ab", "Chest", 0.5), "LeftAnkle", "RightAnkle", "Chest", "LeftToes", "RightToes",
        "Neck", Lerp("LeftCollar", "LeftShoulder", 0.5), Lerp("RightCollar", "RightShoulder", 0.5), "Head",
        "LeftShoulder", "RightShoulder", "LeftElbow", "RightElbow", "LeftWrist", "RightWrist",
    ),
}
assert all(len(entries) == len(SMPL22_NAMES) for entries in PRESETS.values())


def _needed(preset: str) -> list[str]:
    """Source joint names a preset reads, in first-use order."""
    names: list[str] = []
    for entry in PRESETS[preset]:
        for name in (entry.a, entry.b) if isinstance(entry, Lerp) else (entry,):
            if name not in names:
                names.append(name)
    return names


def _match(joint_names: list[str], preset: str) -> tuple[str, dict[str, int]]:
    """The shared name prefix that matches most of a preset's joints, and the indices it finds."""
    needed = _needed(preset)
    prefixes = {""}
    for name in joint_names:
        for base in needed:
            prefix = name[: len(name) - len(base)]
            if name.endswith(base) and (prefix == "" or prefix[-1] in ":_"):
                prefixes.add(prefix)
    index = {name: i for i, name in reversed(list(enumerate(joint_names)))}
    best_prefix, best = "", {}
    for prefix in sorted(prefixes, key=len):
        found = {base: index[prefix + base] for base in needed if prefix + base in index}
        if len(found) > len(best):
            best_prefix, best = prefix, found
    return best_prefix, best


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown joint-map preset {preset!r}; choose one of {sorted(PRESETS)}")


def detect_preset(joint_names: list[str] | tuple[str, ...]) -> str:
    """The preset whose joints all occur in `joint_names` (with one shared prefix); raises when none fits."""
    joint_names = list(joint_names)
    coverage = {}
    for preset in PRESETS:
        _, found = _match(joint_names, preset)
        if len(found) == len(_needed(preset)):
            return preset
        coverage[preset] = len(found) / len(_needed(preset))
    closest = max(coverage, key=coverage.get)
    missing = [name for name in _needed(closest) if name not in _match(joint_names, closest)[1]]
    raise ValueError(
        f"no joint-map preset fits this skeleton ({len(joint_names)} joints, e.g. {joint_names[:4]}); closest is "
        f"{closest!r}, missing {missing}; rename the joints or pass a preset from {sorted(PRESETS)}"
    )


def apply_joint_map(world_positions: np.ndarray, joint_names: list[str] | tuple[str, ...], preset: str) -> np.ndarray:
    """SMPL-22 joint positions [T, 22, 3] picked (or interpolated) from source joint positions [T, J, 3]."""
    _check_preset(preset)
    world_positions = np.asarray(world_positions)
    joint_names = list(joint_names)
    if world_positions.ndim != 3 or world_positions.shape[1:] != (len(joint_names), 3):
        raise ValueError(
            f"apply_joint_map: positions {world_positions.shape} do not match {len(joint_names)} joint names; "
            "expected [T, J, 3]"
        )
    prefix, found = _match(joint_names, preset)
    missing = [name for name in _needed(preset) if name not in found]
    if missing:
        raise ValueError(
            f"apply_joint_map: preset {preset!r} needs joints {[prefix + m for m in missing]} that the skeleton lacks "
            f"(joints: {joint_names[:6]}...); pick another preset or use detect_preset()"
        )
    columns = []
    for entry in PRESETS[preset]:
        if isinstance(entry, Lerp):
            a, b = world_positions[:, found[entry.a]], world_positions[:, found[entry.b]]
            columns.append(a + entry.t * (b - a))
        else:
            columns.append(world_positions[:, found[entry]])
    return np.stack(columns, axis=1)
