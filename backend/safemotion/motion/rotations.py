"""Rotation maths in numpy: quaternions (w, x, y, z), matrices, axis-angle, 6-D and Euler angles.

Every function broadcasts over leading dimensions and works in float64 (float32 input stays float32 where numpy keeps it).
Matrices act on column vectors: v' = R @ v. Quaternion products follow the Hamilton convention, so qmul(a, b) applies
b first, then a.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12
_EULER_AXES = {"X": 0, "Y": 1, "Z": 2}


def _check_last(x: np.ndarray, size: int, name: str) -> np.ndarray:
    """Return x as an array, raising if its last dimension is not `size`."""
    x = np.asarray(x)
    if x.shape[-1:] != (size,):
        raise ValueError(f"{name}: expected an array with last dimension {size}, got shape {x.shape}")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_matrix(m: np.ndarray, name: str) -> np.ndarray:
    """Return m as an array, raising if it is not [..., 3, 3]."""
    m = np.asarray(m)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"{name}: expected rotation matrices of shape [..., 3, 3], got shape {m.shape}")
    return m if np.issubdtype(m.dtype, np.floating) else m.astype(np.float64)


def _normalize(v: np.ndarray) -> np.ndarray:
    """Scale vectors along the last axis to unit length (zero vectors stay zero)."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


# --- quaternions ---------------------------------------------------------------------------------------------------


def qnormalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4]."""
    return _normalize(_check_last(q, 4, "qnormalize"))


def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b [..., 4] (rotation b, then a)."""
    a, b = _check_last(a, 4, "qmul"), _check_last(b, 4, "qmul")
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def qinv(q: np.ndarray) -> np.ndarray:
    """Inverse of unit quaternions (the conjugate) [..., 4]."""
    q = _check_last(q, 4, "qinv")
    return q * np.array([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v [..., 3] by unit quaternions q [..., 4]."""
    q, v = _check_last(q, 4, "qrot"), _check_last(v, 3, "qrot")
    w, u = q[..., :1], q[..., 1:]
    uv = np.cross(u, v)
    return v + 2.0 * (w * uv + np.cross(u, uv))


def qbetween(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest-arc unit quaternion rotating direction u onto direction v [..., 4]; a half turn when antiparallel."""
    u, v = _check_last(u, 3, "qbetween"), _check_last(v, 3, "qbetween")
    u, v = np.broadcast_arrays(u, v)
    w = np.sqrt((u * u).sum(-1) * (v * v).sum(-1)) + (u * v).sum(-1)
    q = np.concatenate([w[..., None], np.cross(u, v)], axis=-1)
    # Antiparallel (or degenerate) pairs: any axis perpendicular to u gives a valid half turn.
    scale = np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), _EPS)
    flat = w / scale < 1e-9
    if np.any(flat):
        uf = _normalize(u[flat])
        helper = np.where(np.abs(uf[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        axis = _normalize(np.cross(uf, helper))
        q[flat] = np.concatenate([np.zeros_like(axis[:, :1]), axis], axis=-1)
    return _normalize(q)


def qslerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation along the shortest arc; t broadcasts over the leading dims of q0/q1."""
    q0, q1 = qnormalize(q0), qnormalize(q1)
    t = np.asarray(t, dtype=q0.dtype)[..., None]
    dot = (q0 * q1).sum(-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6
    safe_sin = np.where(near, 1.0, sin_theta)
    w0 = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / safe_sin)
    w1 = np.where(near, t, np.sin(t * theta) / safe_sin)
    return _normalize(w0 * q0 + w1 * q1)


def qcontinuous(q: np.ndarray) -> np.ndarray:
    """Flip quaternion signs along axis 0 (time) so consecutive quaternions have a non-negative dot product."""
    q = _check_last(q, 4, "qcontinuous")
    if q.shape[0] < 2:
        return q.copy()
    flips = (q[1:] * q[:-1]).sum(-1) < 0
    odd = np.cumsum(flips, axis=0) % 2 == 1
    out = q.copy()
    out[1:][odd] *= -1
    return out


# --- matrices -------------------------------------------------------------------------------------------------------


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (normalised first)."""
    w, x, y, z = np.moveaxis(qnormalize(q), -1, 0)
    m = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return m.reshape(m.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] with w >= 0 from rotation matrices [..., 3, 3]."""
    m = _check_matrix(m, "matrix_to_quat")
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four algebraically equal solutions; pick per element the one with the largest (best-conditioned) pivot.
    four_sq = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1
    )
    candidates = np.stack(
        [
            np.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], axis=-1),
            np.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], axis=-1),
            np.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], axis=-1),
        ],
        axis=-2,
    )
    best = np.argmax(four_sq, axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = _normalize(q)
    return np.where(q[..., :1] < 0, -q, q)


# --- axis-angle -----------------------------------------------------------------------------------------------------


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] from axis-angle vectors [..., 3] (axis * angle in radians)."""
    aa = _check_last(aa, 3, "axis_angle_to_quat")
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = angle < 1e-6
    # sin(angle/2)/angle, with its Taylor series near zero.
    ratio = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2), aa * ratio], axis=-1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [..., 3] with angle in [0, pi] from quaternions [..., 4]."""
    q = qnormalize(q)
    q = np.where(q[..., :1] < 0, -q, q)
    sin_half = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    small = sin_half < 1e-6
    # angle / sin(angle/2), with its Taylor series near zero.
    ratio = np.where(small, 2.0 + angle**2 / 12.0, angle / np.where(small, 1.0, sin_half))
    return q[..., 1:] * ratio


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from axis-angle vectors [..., 3]."""
    return quat_to_matrix(axis_angle_to_quat(aa))


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [..., 3] (angle in [0, pi]) from rotation matrices [..., 3, 3]."""
    return quat_to_axis_angle(matrix_to_quat(m))


# --- continuous 6-D -------------------------------------------------------------------------------------------------


def matrix_to_cont6d(m: np.ndarray) -> np.ndarray:
    """6-D representation [..., 6]: the first two columns (R00, R10, R20, R01, R11, R21)."""
    m = _check_matrix(m, "matrix_to_cont6d")
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def cont6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] from 6-D vectors by Gram-Schmidt (x = a, z = x × b, y = z × x as columns)."""
    d6 = _check_last(d6, 6, "cont6d_to_matrix")
    x = _normalize(d6[..., :3])
    z = _normalize(np.cross(x, d6[..., 3:]))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


# --- Euler angles ---------------------------------------------------------------------------------------------------


def _euler_axes(order: str) -> tuple[int, int, int]:
    """Axis indices of an intrinsic Euler order such as "ZXY"."""
    if len(order) != 3 or sorted(order) != ["X", "Y", "Z"]:
        raise ValueError(
            f"Euler order {order!r}: expected three distinct upper-case axes such as 'ZXY' (BVH/intrinsic convention)"
        )
    return _EULER_AXES[order[0]], _EULER_AXES[order[1]], _EULER_AXES[order[2]]


def _elementary(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] about one coordinate axis."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(angle.shape + (3, 3), dtype=c.dtype)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    m[..., axis, axis] = 1.0
    m[..., i, i] = c
    m[..., j, j] = c
    m[..., i, j] = -s
    m[..., j, i] = s
    return m


def euler_to_matrix(angles: np.ndarray, order: str, degrees: bool = True) -> np.ndarray:
    """R = R_{order[0]}(a0) @ R_{order[1]}(a1) @ R_{order[2]}(a2) from angles [..., 3] listed in `order`."""
    angles = _check_last(angles, 3, "euler_to_matrix")
    axes = _euler_axes(order)
    if degrees:
        angles = np.deg2rad(angles)
    r0, r1, r2 = (_elementary(a, angles[..., k]) for k, a in enumerate(axes))
    return r0 @ r1 @ r2


def matrix_to_euler(m: np.ndarray, order: str, degrees: bool = True) -> np.ndarray:
    """Angles [..., 3] in `order` such that euler_to_matrix(angles, order) == m; middle angle in [-90°, 90°]."""
    m = _check_matrix(m, "matrix_to_euler")
    i, j, k = _euler_axes(order)
    # +1 for cyclic orders (XYZ, YZX, ZXY), -1 for the others.
    s = 1.0 if (j - i) % 3 == 1 else -1.0
    cos_b = np.hypot(m[..., i, i], m[..., i, j])
    b = np.arctan2(s * m[..., i, k], cos_b)
    locked = cos_b < 1e-9
    a = np.where(locked, np.arctan2(s * m[..., k, j], m[..., j, j]), np.arctan2(-s * m[..., j, k], m[..., k, k]))
    c = np.where(locked, 0.0, np.arctan2(-s * m[..., i, j], m[..., i, i]))
    angles = np.stack([a, b, c], axis=-1)
    return np.rad2deg(angles) if degrees else angles
