"""SMPL body models: a procedural stand-in in SMPL's own file format, loading through smplx, and IK refinement.

The real SMPL model files are licence-gated, so SafeMotion ships none. `write_standin_smpl` builds a body that the real
`smplx.SMPL` loads and poses like the real one: same file layout, 6,890 vertices, 13,776 faces, 24 joints, 10 shape
directions and 207 pose directions. Its mesh is one capsule per bone (plus toes, fingers and a head), joined by small
hidden bridges into a single closed surface; it is generated from the rest joints alone and contains nothing taken from
any SMPL file. `refine_with_smplx` polishes an analytic IK solution through whichever SMPL file it is given (the
stand-in or a licensed model the user owns).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import smplx
import torch
from smplx.lbs import vertices2joints

from safemotion.motion import rotations_torch, smpl

log = logging.getLogger(__name__)

NUM_VERTICES = 6890
NUM_FACES = 13776
NUM_BETAS = 10
NUM_POSE_BASIS = 9 * (smpl.NUM_JOINTS - 1)
ROOT_PARENT = 4294967295  # SMPL files store the root's parent as uint32 -1

SEGMENTS = 16  # vertices per ring on every capsule but the head
HEAD_SEGMENTS = 17  # one more, so the head's ring count can absorb the vertex budget's remainder modulo SEGMENTS
CAP_RINGS = 3  # rings on each hemispherical end, the last one being the equator at the joint
HEIGHT_SCALE_PER_BETA = 0.05  # beta 0: uniform scale about the origin (the floor under the pelvis)
GIRTH_PER_BETA = 0.01  # beta 1: metres added to every capsule radius
SKIN_BLEND = 0.6  # half-width of the skinning blend across a joint, as a fraction of the capsule radius

# Capsule radius (metres) of the bone ending at each joint; joint 0 has no bone.
BONE_RADII = np.array(
    [0.0, 0.09, 0.09, 0.11, 0.075, 0.075, 0.12, 0.055, 0.055, 0.12, 0.04, 0.04,
     0.06, 0.055, 0.055, 0.05, 0.05, 0.05, 0.045, 0.045, 0.037, 0.037, 0.03, 0.03]
)
# Capsules past the leaf joints, moved by the leaf itself: (joint, length in metres, radius, direction or None = along
# the leaf's bone).
_LEAF_CAPSULES = ((10, 0.05, 0.03, None), (11, 0.05, 0.03, None), (15, 0.12, 0.095, (0.0, 1.0, 0.0)),
                  (22, 0.08, 0.02, None), (23, 0.08, 0.02, None))


@dataclass(frozen=True)
class _Capsule:
    """A segment with hemispherical ends around a bone: geometry, the joints that move it, the capsule it hangs off."""

    start: np.ndarray
    end: np.ndarray
    radius: float
    driver: int
    end_joint: int  # joint at `end` whose rotation moves the next bones, -1 past a leaf
    parent: int  # index of the capsule bridged to at `start`, -1 for the first one
    segments: int = SEGMENTS


def _capsules(rest: np.ndarray) -> tuple[list[_Capsule], dict[int, int]]:
    """Capsules for a rest skeleton [24,3], and for each joint the capsule whose end equator is centred on it."""
    capsules: list[_Capsule] = []
    ends_at: dict[int, int] = {}
    # The pelvis -> spine1 capsule comes first: it is the trunk the hips hang off (at its start, the pelvis).
    order = [3] + [j for j in range(1, smpl.NUM_JOINTS) if j != 3]
    for j in order:
        p = smpl.PARENTS[j]
        parent = 0 if p == 0 and j != 3 else ends_at.get(p, -1)
        ends_at[j] = len(capsules)
        capsules.append(_Capsule(rest[p], rest[j], float(BONE_RADII[j]), driver=p, end_joint=j, parent=parent))
    for leaf, length, radius, direction in _LEAF_CAPSULES:
        bone = rest[leaf] - rest[smpl.PARENTS[leaf]]
        axis = np.asarray(direction) if direction is not None else bone / np.linalg.norm(bone)
        segments = HEAD_SEGMENTS if leaf == 15 else SEGMENTS
        capsules.append(
            _Capsule(rest[leaf], rest[leaf] + length * axis, radius, leaf, end_joint=-1, parent=ends_at[leaf],
                     segments=segments)
        )
    return capsules, ends_at


def _allocate_rings(capsules: list[_Capsule]) -> list[int]:
    """Ring count per capsule, by length, so the vertices (rings x segments + 2 poles each) total exactly 6,890."""
    budget = NUM_VERTICES - 2 * len(capsules)
    head = next(i for i, c in enumerate(capsules) if c.segments == HEAD_SEGMENTS)
    # HEAD_SEGMENTS = SEGMENTS + 1, so the head's ring count fixes the remainder modulo SEGMENTS.
    head_rings = budget % SEGMENTS
    while head_rings < 2 * CAP_RINGS + 4:
        head_rings += SEGMENTS
    body_rings = (budget - head_rings * HEAD_SEGMENTS) // SEGMENTS
    others = [i for i in range(len(capsules)) if i != head]
    free = body_rings - 2 * CAP_RINGS * len(others)
    lengths = np.array([np.linalg.norm(capsules[i].end - capsules[i].start) for i in others])
    share = free * lengths / lengths.sum()
    middle = np.floor(share).astype(int)
    # Largest remainders get the leftover rings, so the total is exact.
    for k in np.argsort(middle - share)[: free - middle.sum()]:
        middle[k] += 1
    rings = [0] * len(capsules)
    rings[head] = head_rings
    for i, m in zip(others, middle):
        rings[i] = 2 * CAP_RINGS + int(m)
    return rings


def _ring_layout(capsule: _Capsule, rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial position (metres from start, may be negative / past the end) and radius of each ring."""
    length = float(np.linalg.norm(capsule.end - capsule.start))
    cap = np.arange(1, CAP_RINGS + 1) * (0.5 * np.pi / CAP_RINGS)  # angles from the pole, the last one the equator
    middle = np.arange(1, rings - 2 * CAP_RINGS + 1) / (rings - 2 * CAP_RINGS + 1) * length
    r = capsule.radius
    axial = np.concatenate([-r * np.cos(cap), middle, length + r * np.cos(cap[::-1])])
    radius = np.concatenate([r * np.sin(cap), np.full(len(middle), r), r * np.sin(cap[::-1])])
    return axial, radius


def _basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors e1, e2 with e1 x e2 = axis (unit)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(helper, axis)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)


def _capsule_mesh(
    capsule: _Capsule, rings: int, first: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices [V,3], radial unit directions [V,3], faces [F,3], ring vertex indices [rings,n]; offset by `first`."""
    axis = capsule.end - capsule.start
    axis = axis / np.linalg.norm(axis)
    e1, e2 = _basis(axis)
    n = capsule.segments
    angles = 2 * np.pi * np.arange(n) / n
    around = np.cos(angles)[:, None] * e1 + np.sin(angles)[:, None] * e2  # [n,3]
    axial, radius = _ring_layout(capsule, rings)
    ring_vertices = capsule.start + axial[:, None, None] * axis + radius[:, None, None] * around  # [rings,n,3]
    start_pole = capsule.start - capsule.radius * axis
    end_pole = capsule.end + capsule.radius * axis
    vertices = np.concatenate([[start_pole], ring_vertices.reshape(-1, 3), [end_pole]])
    # Girth direction: away from the axis on the rings, along it at the poles.
    radial = np.concatenate([[-axis], np.broadcast_to(around, (rings, n, 3)).reshape(-1, 3), [axis]])

    ring = first + 1 + np.arange(rings * n).reshape(rings, n)
    nxt = np.roll(ring, -1, axis=1)
    s, e = first, first + 1 + rings * n
    faces = [np.stack([np.full(n, s), nxt[0], ring[0]], axis=1)]
    for i in range(rings - 1):
        faces.append(np.stack([ring[i], nxt[i], nxt[i + 1]], axis=1))
        faces.append(np.stack([ring[i], nxt[i + 1], ring[i + 1]], axis=1))
    faces.append(np.stack([np.full(n, e), ring[-1], nxt[-1]], axis=1))
    return vertices, radial, np.concatenate(faces), ring


def _side_triangle(ring: np.ndarray, next_ring: np.ndarray, slot: int) -> tuple[int, int, int]:
    """The first triangle of quad `slot` in the strip between two consecutive rings (as `_capsule_mesh` makes it)."""
    after = (slot + 1) % len(ring)
    return int(ring[slot]), int(ring[after]), int(next_ring[after])


def _bridge(a: tuple[int, int, int], b: tuple[int, int, int]) -> np.ndarray:
    """Six triangles joining the holes left by removing faces a and b, keeping the surface consistently oriented."""
    b = (b[0], b[2], b[1])
    tris = []
    for i in range(3):
        j = (i + 1) % 3
        tris += [(a[i], a[j], b[j]), (a[i], b[j], b[i])]
    return np.array(tris)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below lo, 1 above hi, a smooth cubic in between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _skinning_weights(vertices: np.ndarray, owner: np.ndarray, capsules: list[_Capsule]) -> np.ndarray:
    """LBS weights [V,24]: each vertex follows its capsule's joint, blending half-and-half at the capsule's end joints.

    Across the start joint the blend goes to the joint that moves the parent bone, across the end joint to the joint
    that moves the child bones; blending is only along the bone, so neighbouring limbs (thighs, arm and torso) never
    pull on each other's vertices.
    """
    weights = np.zeros((len(vertices), smpl.NUM_JOINTS))
    for k, capsule in enumerate(capsules):
        mine = owner == k
        axis = capsule.end - capsule.start
        length = float(np.linalg.norm(axis))
        along = (vertices[mine] - capsule.start) @ axis / length
        width = SKIN_BLEND * capsule.radius
        past_start = _smoothstep(along, -width, width)
        past_end = _smoothstep(along, length - width, length + width)
        driver = capsule.driver
        start_joint = smpl.PARENTS[driver] if driver > 0 else driver
        end_joint = capsule.end_joint if capsule.end_joint >= 0 else driver
        rows = np.nonzero(mine)[0]
        weights[rows, start_joint] += 1 - past_start
        weights[rows, driver] += past_start * (1 - past_end)
        weights[rows, end_joint] += past_start * past_end
    return weights


def build_standin_smpl(rest_joints: np.ndarray | None = None) -> dict:
    """The stand-in body as the dict an SMPL .pkl holds (v_template, shapedirs, posedirs, J_regressor, weights, ...)."""
    rest = smpl.smpl_rest_joints() if rest_joints is None else np.asarray(rest_joints, dtype=np.float64)
    if rest.shape != (smpl.NUM_JOINTS, 3) or not np.isfinite(rest).all():
        raise ValueError(f"build_standin_smpl: expected finite rest joints [24, 3], got shape {rest.shape}")
    bones = np.linalg.norm(rest[1:] - rest[smpl.PARENTS[1:]], axis=1)
    if bones.min() < 1e-3:
        raise ValueError(f"build_standin_smpl: bone ending at joint {int(np.argmin(bones)) + 1} is shorter than 1 mm")
    capsules, ends_at = _capsules(rest)
    rings = _allocate_rings(capsules)

    vertices, radial, faces, ring_ids, owner = [], [], [], [], []
    first = 0
    for k, (capsule, count) in enumerate(zip(capsules, rings)):
        v, d, f, ring = _capsule_mesh(capsule, count, first)
        vertices.append(v)
        radial.append(d)
        faces.append(f)
        ring_ids.append(ring)
        owner.append(np.full(len(v), k))
        first += len(v)
    vertices, radial, owner = np.concatenate(vertices), np.concatenate(radial), np.concatenate(owner)
    faces = np.concatenate(faces)

    # Bridges: each capsule's first side triangle near its start is joined to a side triangle near its parent's end
    # (its start, for the capsules leaving the pelvis), using every fourth quad so that no two bridges share a vertex.
    removed, bridges, used = [], [], {}
    for k, capsule in enumerate(capsules):
        if capsule.parent < 0:
            continue
        at_start = capsule.driver == 0
        slot = 4 * used.get((capsule.parent, at_start), 0)
        used[(capsule.parent, at_start)] = slot // 4 + 1
        parent_rings = ring_ids[capsule.parent]
        a = _side_triangle(*(parent_rings[:2] if at_start else parent_rings[-2:]), slot)
        b = _side_triangle(ring_ids[k][0], ring_ids[k][1], 0)
        removed += [a, b]
        bridges.append(_bridge(a, b))
    face_keys = {tuple(f): i for i, f in enumerate(faces.tolist())}
    keep = np.ones(len(faces), dtype=bool)
    for tri in removed:
        rolled = [tri, (tri[1], tri[2], tri[0]), (tri[2], tri[0], tri[1])]
        index = next(face_keys[t] for t in rolled if t in face_keys)
        keep[index] = False
    faces = np.concatenate([faces[keep]] + bridges)
    assert len(vertices) == NUM_VERTICES and len(faces) == NUM_FACES, (len(vertices), len(faces))

    # Joint regressor: the equator ring centred on each joint (its mean is exactly the joint).
    regressor = np.zeros((smpl.NUM_JOINTS, NUM_VERTICES))
    for j in range(smpl.NUM_JOINTS):
        ring = ring_ids[0][CAP_RINGS - 1] if j == 0 else ring_ids[ends_at[j]][-CAP_RINGS]
        regressor[j, ring] = 1.0 / len(ring)

    weights = _skinning_weights(vertices, owner, capsules)

    shapedirs = np.zeros((NUM_VERTICES, 3, NUM_BETAS))
    shapedirs[:, :, 0] = HEIGHT_SCALE_PER_BETA * vertices
    shapedirs[:, :, 1] = GIRTH_PER_BETA * radial
    kintree = np.stack([smpl.PARENTS, np.arange(smpl.NUM_JOINTS)]).astype(np.int64)
    kintree[0, 0] = ROOT_PARENT
    return {
        "v_template": vertices,
        "f": faces.astype(np.uint32),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "J": regressor @ vertices,
        "weights": weights,
        "kintree_table": kintree,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((NUM_VERTICES, 3, NUM_POSE_BASIS)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_standin_smpl(path: Path, rest_joints: np.ndarray | None = None) -> Path:
    """Write the stand-in body model for rest joints [24,3] (default: smpl_rest_joints()) to an SMPL-format .pkl."""
    path = Path(path)
    data = build_standin_smpl(rest_joints)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(data, handle, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- using a body model through smplx -------------------------------------------------------------------------------


def load_body_model(path: Path, dtype: torch.dtype = torch.float32) -> smplx.SMPL:
    """Load an SMPL .pkl (the stand-in, or a licensed SMPL file the user owns) with smplx."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no SMPL model file here; write a stand-in with write_standin_smpl(path) or pass your SMPL .pkl"
        )
    return smplx.SMPL(model_path=str(path), dtype=dtype)


def model_rest_joints(model: smplx.SMPL) -> np.ndarray:
    """Rest joints [24,3] of a loaded body model with zero shape (J_regressor @ v_template)."""
    with torch.no_grad():
        return vertices2joints(model.J_regressor, model.v_template[None])[0].double().numpy()


def smpl_forward_kinematics_torch(pose: torch.Tensor, transl: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
    """Differentiable joints [T,24,3] of pose [T,24,3] and transl [T,3] on rest joints [24,3] (smplx's kinematics)."""
    local = rotations_torch.axis_angle_to_matrix(pose).unbind(1)
    offsets = (rest_joints[1:] - rest_joints[smpl.PARENTS[1:]]).unbind(0)
    world = [local[0]]
    joints = [rest_joints[0] + transl]
    for j in range(1, smpl.NUM_JOINTS):
        p = smpl.PARENTS[j]
        world.append(world[p] @ local[j])
        joints.append(joints[p] + world[p] @ offsets[j - 1])
    return torch.stack(joints, dim=1)


def refine_with_smplx(
    motion: smpl.SmplMotion,
    target_joints: np.ndarray,
    model_path: Path,
    iters: int = 200,
    lr: float = 0.01,
    stay_close: float = 1e-3,
) -> smpl.SmplMotion:
    """Optimise pose and transl (Adam) so the model's first 22 joints match targets [T,22,3]; never worse per frame.

    The joints are the model's own rest joints (its J_regressor on its template) posed along SMPL's kinematic tree,
    which is what smplx.SMPL does before skinning; the mesh is not skinned on every step. The pose starts from
    `motion`, transl shifted if the model's rest pelvis differs. `stay_close` weighs a pull towards the starting pose,
    which keeps the IK's twists where the joints do not determine them. Each frame keeps the best pose seen, so no
    frame's error grows. For a model whose rest joints differ a lot from `motion.rest_joints`, run
    `smpl.joints_to_smpl(targets, rest_joints=model_rest_joints(model))` first and refine that.
    """
    target = np.asarray(target_joints, dtype=np.float64)
    if target.shape != (motion.num_frames, 22, 3):
        raise ValueError(f"refine_with_smplx: expected target joints [{motion.num_frames}, 22, 3], got {target.shape}")
    if iters < 0:
        raise ValueError(f"refine_with_smplx: iters must be >= 0, got {iters}")
    model = load_body_model(model_path, dtype=torch.float64)
    if not np.array_equal(model.parents.numpy(), smpl.PARENTS):
        raise ValueError(f"{model_path}: kinematic tree {model.parents.tolist()} is not SMPL's 24-joint tree")
    rest = model_rest_joints(model)
    rest_t = torch.from_numpy(rest)
    goal = torch.from_numpy(target)
    start_pose = torch.from_numpy(motion.pose.astype(np.float64))
    pose = start_pose.clone().requires_grad_(True)
    transl = torch.from_numpy(motion.transl + motion.rest_joints[0] - rest[0]).requires_grad_(True)
    best_pose, best_transl = pose.detach().clone(), transl.detach().clone()
    best_error = torch.full((motion.num_frames,), float("inf"), dtype=torch.float64)
    optimiser = torch.optim.Adam([pose, transl], lr=lr)
    for step in range(iters + 1):
        residual = smpl_forward_kinematics_torch(pose, transl, rest_t)[:, :22] - goal
        with torch.no_grad():
            error = residual.norm(dim=-1).mean(dim=-1)
            if step == 0:
                start_error = error.clone()
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_pose[better], best_transl[better] = pose[better], transl[better]
        if step == iters:
            break
        loss = residual.square().sum(-1).mean() + stay_close * (pose - start_pose).square().sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    log.info("refine_with_smplx: MPJPE %.2f mm -> %.2f mm", 1e3 * start_error.mean(), 1e3 * best_error.mean())
    return smpl.SmplMotion(pose=best_pose.numpy(), transl=best_transl.numpy(), rest_joints=rest, fps=motion.fps)
