"""Contact-aware foot clean-up of decoded motion: detect contacts, ground the motion, pin planted feet with leg IK.

    cleaned = clean_feet(motion.joints, motion.features, fps=20.0)
    cleaned.joints, cleaned.contacts, cleaned.report.to_dict()

1. Contacts, per foot joint (ankle, toe): the model's own contact channels of the 263-d features (above
   `contact_threshold`), overruled by velocity where the two disagree: a joint the model calls planted but that moves
   faster than `release_speed` is in the air; one it calls free but that is slower than `plant_speed` and within
   `plant_height` of the floor is planted. Runs shorter than `min_contact_frames` are dropped.
2. Grounding: the whole motion is shifted vertically so that its planted toes sit `toe_height` over the floor (y = 0)
   in the median frame: generated feet plant at varying heights, and grounding on the lowest contact left most of
   them floating. Without planted toes the lowest planted foot joint goes to the floor, and without any contact the
   lowest foot joint.
3. Stance slide: where the body stands (both feet, by ankle or toe, planted for `stand_frames` frames in a row, a
   foot lifted for up to STAND_GAP_FRAMES not ending it), the whole motion is moved horizontally against the mean
   slide of the planted feet. A planted foot does not move, so its slide is the body drifting over the floor: the
   decoder's root velocity is biased for some codes (a real standing-still clip round-tripped through the VQ drifts
   up to 1.35 m in 9 s), which made "stands still" wander.
4. Pinning: each contact run holds its joint at one anchor (where the joint is at the run's middle frame, as the hip
   passes over a planted foot in mid-stance, moved up or down so that the foot rests on the floor: its toe at
   `toe_height`, or its ankle that high over the toe's floor height as the foot is when both are planted, whichever
   is lower), cut to the frames where the leg can reach it. The ankle goes to its
   anchor, or, where only the toe is planted, to wherever keeps the toe on its anchor with the foot's generated
   orientation; the toe follows the ankle, turned towards its own anchor while planted. Targets blend in and out of
   each run with a smoothstep over `blend_frames`, so positions and velocities stay continuous. An ankle that would
   sit below the floor gets its target raised; a toe below it is pitched up about the ankle onto the floor.
5. Analytic two-bone IK per frame (hip fixed, knee kept in the plane of the generated leg) places knee, ankle and toe
   at each frame's own generated bone lengths, so no bone changes length.

Joints are (T, 22, 3) HumanML3D positions in metres, Y up. The root, spine and arms are only shifted (by grounding and
the stance slide).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from safemotion.motion import skeleton
from safemotion.motion.features import CONTACTS, FEATURE_DIM, NUM_JOINTS

# Foot joints in the order of the features' contact channels: left ankle, left toe, right ankle, right toe.
FOOT_JOINTS = (skeleton.FOOT_LEFT[0], skeleton.FOOT_LEFT[1], skeleton.FOOT_RIGHT[0], skeleton.FOOT_RIGHT[1])
FOOT_NAMES = ("left_ankle", "left_toe", "right_ankle", "right_toe")
# Per leg: (hip, knee, ankle, toe) joint indices and the contact columns of its ankle and toe.
LEGS = (((1, 4, 7, 10), (0, 1)), ((2, 5, 8, 11), (2, 3)))
_UP = np.array([0.0, 1.0, 0.0])
STAND_GAP_FRAMES = 3  # a foot lifted this briefly (0.15 s at 20 fps) while standing: a weight shift, not a step
FLOOR_TOLERANCE_M = 1e-6  # an ankle the IK put on the floor may land a rounding error below it


@dataclass(frozen=True)
class FootCleanupConfig:
    """Thresholds of the foot clean-up; speeds in m/s, heights and distances in metres."""

    contact_threshold: float = 0.5  # the model's contact channel: planted above this
    release_speed: float = 1.5  # a joint the model calls planted is in the air when it moves faster than this
    plant_speed: float = 0.2  # a joint the model calls free is planted when slower than this and near the floor
    plant_height: float = 0.05  # ... i.e. at most this far above the floor
    min_contact_frames: int = 2  # shorter contact runs are dropped
    blend_frames: int = 4  # smoothstep in and out of each contact run
    reach: float = 0.999  # a pinned ankle may be at most this share of the leg's length from the hip
    # Height of HumanML3D's toe joint on a planted foot: the median of the slow frames of 60 real Bandai walks
    # (0.7 cm, 5th-95th percentile 0.2-1.7 cm). Generated feet plant 3-6 cm higher.
    toe_height: float = 0.007
    # Both feet planted this many frames in a row (1 s at 20 fps) is standing, and their slide the body drifting;
    # a walk's double support is shorter (generated walks: 4-13 frames, with the model's long contacts).
    stand_frames: int = 20

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        for name in ("release_speed", "plant_speed", "plant_height"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FootCleanupConfig.{name} is {getattr(self, name)}; it must be > 0")
        if self.min_contact_frames < 1 or self.blend_frames < 0 or self.stand_frames < 2:
            raise ValueError(f"FootCleanupConfig: min_contact_frames must be >= 1, blend_frames >= 0 and stand_frames "
                             f">= 2, got {self.min_contact_frames}, {self.blend_frames} and {self.stand_frames}")
        if not 0.5 < self.reach < 1.0:
            raise ValueError(f"FootCleanupConfig.reach is {self.reach}; it must be in (0.5, 1)")


@dataclass
class FootCleanupReport:
    """What the clean-up did: the vertical shift, contact frames and pinning accuracy (for the result metadata)."""

    floor_shift_m: float  # added to every joint's height
    slide_removed_m: float  # horizontal distance the last frame was moved by the stance-slide correction
    contact_frames: dict[str, int]  # per foot joint, after the velocity check and reach limits
    contact_runs: int
    max_pin_error_m: float  # largest distance of a planted ankle from its target (unreachable targets)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"floor_shift_m": self.floor_shift_m, "slide_removed_m": self.slide_removed_m,
                "contact_frames": dict(self.contact_frames),
                "contact_runs": self.contact_runs, "max_pin_error_m": self.max_pin_error_m}


@dataclass
class FootCleanup:
    """The cleaned joints (T, 22, 3), the contacts used (T, 4) and the report."""

    joints: np.ndarray
    contacts: np.ndarray = field(repr=False)
    report: FootCleanupReport


# ---------------------------------------------------------------------------------------------- contacts

def joint_speeds(joints: np.ndarray, fps: float) -> np.ndarray:
    """Horizontal speed (m/s) of each foot joint (T, 4): the step to the next frame (the last frame repeats)."""
    feet = joints[:, FOOT_JOINTS][..., [0, 2]]
    step = np.linalg.norm(np.diff(feet, axis=0), axis=-1) * fps
    return np.concatenate([step, step[-1:]], axis=0) if len(step) else np.zeros((len(joints), 4))


def contact_runs(contacts: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the True runs of a (T,) boolean array."""
    padded = np.concatenate([[False], contacts.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _drop_short(contacts: np.ndarray, min_frames: int) -> np.ndarray:
    out = contacts.copy()
    for start, end in contact_runs(contacts):
        if end - start < min_frames:
            out[start:end] = False
    return out


def ground_shift(joints: np.ndarray, contacts: np.ndarray, toe_height: float) -> float:
    """The vertical shift that grounds a motion (step 2 of the module doc)."""
    toes = [toe for _, (_, toe) in LEGS]  # contact columns of the toes
    planted_toes = joints[:, [FOOT_JOINTS[k] for k in toes], 1][contacts[:, toes]]
    if planted_toes.size:
        return toe_height - float(np.median(planted_toes))
    return -floor_height(joints, contacts)


def floor_height(joints: np.ndarray, contacts: np.ndarray) -> float:
    """Height of the lowest planted foot joint, or of the lowest foot joint when nothing is planted."""
    heights = joints[:, FOOT_JOINTS, 1]
    return float(heights[contacts].min() if contacts.any() else heights.min())


def detect_contacts(joints: np.ndarray, features: np.ndarray, fps: float,
                    config: FootCleanupConfig = FootCleanupConfig()) -> np.ndarray:
    """Contacts (T, 4) of the foot joints from the model's channels, overruled by velocity where they disagree."""
    speeds = joint_speeds(joints, fps)
    model = features[:, CONTACTS] > config.contact_threshold
    planted = model & (speeds <= config.release_speed)
    floor = floor_height(joints, planted)
    near_floor = joints[:, FOOT_JOINTS, 1] - floor <= config.plant_height
    contacts = planted | (~model & (speeds < config.plant_speed) & near_floor)
    return np.stack([_drop_short(contacts[:, k], config.min_contact_frames) for k in range(4)], axis=1)


def remove_stance_slide(joints: np.ndarray, contacts: np.ndarray, stand_frames: int) -> np.ndarray:
    """Joints (T, 22, 3) moved horizontally, frame by frame, against the mean slide of the feet wherever the body
    stands: both feet (ankle or toe) planted for at least `stand_frames` frames in a row (step 3 of the module doc)."""
    both_feet = np.all([contacts[:, ankle] | contacts[:, toe] for _, (ankle, toe) in LEGS], axis=0)
    for start, end in contact_runs(~both_feet):  # a weight shift does not end a stand
        if end - start <= STAND_GAP_FRAMES and start > 0 and end < len(both_feet):
            both_feet[start:end] = True
    standing = np.zeros(len(joints), dtype=bool)
    for start, end in contact_runs(both_feet):
        if end - start >= stand_frames:
            standing[start:end] = True
    steps = np.diff(joints[:, FOOT_JOINTS][..., [0, 2]], axis=0)  # (T - 1, 4, 2)
    planted = (contacts[1:] & contacts[:-1] & (standing[1:] & standing[:-1])[:, None])[..., None]
    slide = (steps * planted).sum(axis=1) / np.maximum(planted.sum(axis=1), 1)  # mean over the planted joints
    offset = np.concatenate([np.zeros((1, 2)), -np.cumsum(slide, axis=0)])
    out = joints.copy()
    out[..., 0] += offset[:, None, 0]
    out[..., 2] += offset[:, None, 1]
    return out


# ---------------------------------------------------------------------------------------------- IK

def two_bone_ik(hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray, target: np.ndarray,
                forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (knee, ankle), each (T, 3), reaching for `target` from a fixed hip with the leg's own bone lengths.

    The knee stays on the side of the hip-ankle line where the generated knee was (the leg's bending plane turns
    with the new hip-ankle direction); a straight generated leg bends towards `forward`. Targets out of reach are
    approached along the same direction as far as the leg extends.
    """
    thigh = np.linalg.norm(knee - hip, axis=-1, keepdims=True)
    shin = np.linalg.norm(ankle - knee, axis=-1, keepdims=True)
    reach = target - hip
    distance = np.linalg.norm(reach, axis=-1, keepdims=True)
    old = ankle - hip
    axis = np.where(distance > 1e-9, reach, old) / np.maximum(np.where(distance > 1e-9, distance,
                                                                        np.linalg.norm(old, axis=-1, keepdims=True)),
                                                               1e-12)
    distance = np.clip(distance, np.abs(thigh - shin) + 1e-9, thigh + shin - 1e-9)
    along = (thigh**2 - shin**2 + distance**2) / (2.0 * distance)
    height = np.sqrt(np.maximum(thigh**2 - along**2, 0.0))
    old_axis = old / np.maximum(np.linalg.norm(old, axis=-1, keepdims=True), 1e-12)
    bend = (knee - hip) - ((knee - hip) * old_axis).sum(-1, keepdims=True) * old_axis
    straight = np.linalg.norm(bend, axis=-1, keepdims=True) < 1e-4 * thigh
    bend = np.where(straight, forward, bend)
    bend = bend - (bend * axis).sum(-1, keepdims=True) * axis
    bend = bend / np.maximum(np.linalg.norm(bend, axis=-1, keepdims=True), 1e-12)
    return hip + along * axis + height * bend, hip + distance * axis


def body_forward(joints: np.ndarray) -> np.ndarray:
    """Unit horizontal facing (T, 3) from the hips and shoulders (HumanML3D's up × across)."""
    r_hip, l_hip, r_sdr, l_sdr = skeleton.FACE_JOINTS
    across = joints[:, r_hip] - joints[:, l_hip] + joints[:, r_sdr] - joints[:, l_sdr]
    forward = np.cross(_UP, across)
    forward[:, 1] = 0.0
    norm = np.linalg.norm(forward, axis=-1, keepdims=True)
    return np.where(norm > 1e-9, forward / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------------------------- pinning

def _smoothstep(x: float) -> float:
    return x * x * (3.0 - 2.0 * x)


def _pin_targets(positions: np.ndarray, contacts: np.ndarray, reachable: Callable[[np.ndarray], np.ndarray],
                 blend_frames: int, lift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: blend weight (T,), anchor (T, 3) and the contacts kept after the reach limit (T,) of one joint.

    Each contact run is anchored where the joint is at its middle frame, raised by that frame's `lift` (T,), then cut
    to the frames around that one at which `reachable(anchor)` (T,) says the leg reaches the anchor; weights ramp out
    of each run over at most `blend_frames`, and at most half the gap to the neighbouring run.
    """
    frames = len(positions)
    runs = []
    for start, end in contact_runs(contacts):
        middle = (start + end - 1) // 2
        anchor = positions[middle] + lift[middle] * _UP
        ok = reachable(anchor)
        first, last = middle, middle + 1
        while first > start and ok[first - 1]:
            first -= 1
        while last < end and ok[last]:
            last += 1
        runs.append((first, last, anchor))
    weights = np.zeros(frames)
    anchors = np.zeros((frames, 3))
    kept = np.zeros(frames, dtype=bool)
    for k, (start, end, anchor) in enumerate(runs):
        weights[start:end] = 1.0
        anchors[start:end] = anchor
        kept[start:end] = True
        before = start - (runs[k - 1][1] if k else -blend_frames * 2 - 2)
        after = (runs[k + 1][0] if k + 1 < len(runs) else frames + blend_frames * 2 + 2) - end
        for side, room in ((-1, before), (1, after)):
            ramp = min(blend_frames, room // 2)
            for i in range(1, ramp + 1):
                frame = start - i if side < 0 else end - 1 + i
                if 0 <= frame < frames:
                    weights[frame] = _smoothstep(1.0 - i / (ramp + 1))
                    anchors[frame] = anchor
    return weights, anchors, kept


def pin_feet(joints: np.ndarray, contacts: np.ndarray, config: FootCleanupConfig = FootCleanupConfig(),
             swing_lift: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Joints with the planted feet pinned by leg IK and the free feet raised by `swing_lift` (m), the contacts kept
    after the reach limit, the largest ankle pin error (m)."""
    out = joints.copy()
    kept_all = np.zeros_like(contacts)
    forward = body_forward(joints)
    worst = 0.0
    for (hip_j, knee_j, ankle_j, toe_j), (ankle_c, toe_c) in LEGS:
        hip, knee, ankle, toe = (joints[:, j] for j in (hip_j, knee_j, ankle_j, toe_j))
        foot = toe - ankle
        reach = config.reach * (np.linalg.norm(knee - hip, axis=-1) + np.linalg.norm(ankle - knee, axis=-1))

        def ankle_reachable(anchor: np.ndarray) -> np.ndarray:
            return np.linalg.norm(anchor - hip, axis=-1) <= reach

        def toe_reachable(anchor: np.ndarray) -> np.ndarray:
            return np.linalg.norm(anchor - foot - hip, axis=-1) <= reach

        # How far the foot must move up (negative: down) for its lower joint to rest on the floor.
        ankle_over_toe = _flat_foot_height(ankle, toe, contacts[:, ankle_c] & contacts[:, toe_c])
        lift = config.toe_height - np.minimum(toe[:, 1], ankle[:, 1] - ankle_over_toe)
        w_ankle, a_ankle, kept_all[:, ankle_c] = _pin_targets(ankle, contacts[:, ankle_c], ankle_reachable,
                                                              config.blend_frames, lift)
        w_toe, a_toe, kept_all[:, toe_c] = _pin_targets(toe, contacts[:, toe_c], toe_reachable, config.blend_frames,
                                                        lift)
        w_ankle, w_toe = w_ankle[:, None], w_toe[:, None]
        # The ankle goes to its anchor; as far as it is free, the whole foot moves to put the toe on its anchor.
        target = ankle + w_ankle * (a_ankle - ankle) + (1.0 - w_ankle) * w_toe * (a_toe - toe)
        target += (1.0 - np.maximum(w_ankle, w_toe)) * swing_lift * _UP
        new_knee, new_ankle = two_bone_ik(hip, knee, ankle, target, forward)
        if (new_ankle[:, 1] < 0).any():  # the ankle below the floor: raise its target and solve again
            target[:, 1] += np.maximum(-new_ankle[:, 1], 0.0)
            new_knee, new_ankle = two_bone_ik(hip, knee, ankle, target, forward)
        new_toe = _keep_toe_above_floor(new_ankle, _place_toe(new_ankle, foot, w_toe, a_toe))
        planted = kept_all[:, ankle_c] | kept_all[:, toe_c]
        if planted.any():
            worst = max(worst, float(np.linalg.norm(new_ankle - target, axis=-1)[planted].max()))
        out[:, knee_j], out[:, ankle_j], out[:, toe_j] = new_knee, new_ankle, new_toe
    return out, kept_all, worst


def _flat_foot_height(ankle: np.ndarray, toe: np.ndarray, both_planted: np.ndarray) -> float:
    """The ankle's height over the toe on a flat foot: the median over frames where both are planted, else the
    lowest tenth of all frames (no lower than 0)."""
    above = ankle[:, 1] - toe[:, 1]
    return float(np.median(above[both_planted]) if both_planted.any() else max(np.percentile(above, 10), 0.0))


def _place_toe(ankle: np.ndarray, foot: np.ndarray, w_toe: np.ndarray, toe_anchor: np.ndarray) -> np.ndarray:
    """Toe at the foot's own length from the ankle: the generated foot direction, turned to the anchor while planted."""
    length = np.linalg.norm(foot, axis=-1, keepdims=True)
    free = ankle + foot
    aim = free + w_toe * (toe_anchor - free) - ankle
    norm = np.linalg.norm(aim, axis=-1, keepdims=True)
    direction = np.where(norm > 1e-9, aim / np.maximum(norm, 1e-12), foot / np.maximum(length, 1e-12))
    return ankle + length * direction


def _keep_toe_above_floor(ankle: np.ndarray, toe: np.ndarray) -> np.ndarray:
    """The toe, where it is below the floor, pitched up about the ankle onto the floor (the foot keeps its length)."""
    foot = toe - ankle
    below = (toe[:, 1] < 0) & (ankle[:, 1] > -FLOOR_TOLERANCE_M) & (np.linalg.norm(foot[:, [0, 2]], axis=-1) > 1e-9)
    if not below.any():
        return toe
    length = np.linalg.norm(foot[below], axis=-1)
    rise = -ankle[below, 1]  # the foot's height change that puts the toe at y = 0
    flat = foot[below][:, [0, 2]]
    flat = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
    flat *= np.sqrt(np.maximum(length**2 - rise**2, 0.0))[:, None]
    out = toe.copy()
    out[below] = ankle[below] + np.stack([flat[:, 0], rise, flat[:, 1]], axis=-1)
    return out


# ---------------------------------------------------------------------------------------------- all together

def clean_feet(joints: np.ndarray, features: np.ndarray, fps: float,
               config: FootCleanupConfig = FootCleanupConfig()) -> FootCleanup:
    """Detect contacts, ground the motion on its lowest contact and pin the planted feet (see the module doc)."""
    config.validate()
    joints = np.asarray(joints)
    features = np.asarray(features)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"clean_feet: expected joints of shape [T, {NUM_JOINTS}, 3], got {joints.shape}")
    if features.shape != (len(joints), FEATURE_DIM):
        raise ValueError(f"clean_feet: expected features of shape [{len(joints)}, {FEATURE_DIM}] (one row per "
                         f"frame of the joints), got {features.shape}")
    if not (np.isfinite(joints).all() and np.isfinite(features).all()):
        raise ValueError("clean_feet: joints or features contain NaN or inf")
    if not fps > 0:
        raise ValueError(f"clean_feet: fps is {fps}; it must be > 0")
    positions = joints.astype(np.float64)
    contacts = detect_contacts(positions, features.astype(np.float64), fps, config)
    shift = ground_shift(positions, contacts, config.toe_height)
    positions[..., 1] += shift
    # Grounding on the median planted toe lowers the body more than grounding on the lowest contact would; the free
    # feet are raised back by the difference, so that a swinging foot keeps its clearance.
    swing_lift = max(-floor_height(positions, contacts), 0.0)
    slid = remove_stance_slide(positions, contacts, config.stand_frames)
    slide_removed = float(np.linalg.norm((slid - positions)[-1, 0, [0, 2]]))
    pinned, kept, worst = pin_feet(slid, contacts, config, swing_lift)
    report = FootCleanupReport(
        floor_shift_m=shift, slide_removed_m=slide_removed, contact_frames={name: int(kept[:, k].sum()) for k, name in enumerate(FOOT_NAMES)},
        contact_runs=sum(len(contact_runs(kept[:, k])) for k in range(4)), max_pin_error_m=worst)
    return FootCleanup(pinned.astype(joints.dtype), kept, report)
