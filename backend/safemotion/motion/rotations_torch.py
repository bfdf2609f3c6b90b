"""Rotation maths in torch, same names and conventions as `rotations` (quaternions w, x, y, z; column vectors).

All functions broadcast over leading dimensions and are differentiable away from their singular points (zero-length
vectors, the exact antiparallel case of `qbetween`, angle 0 of `matrix_to_axis_angle` is handled smoothly).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def _check_last(x: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """Raise if the last dimension of x is not `size`."""
    if x.shape[-1:] != (size,):
        raise ValueError(f"{name}: expected a tensor with last dimension {size}, got shape {tuple(x.shape)}")
    return x


def _check_matrix(m: torch.Tensor, name: str) -> torch.Tensor:
    """Raise if m is not [..., 3, 3]."""
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"{name}: expected rotation matrices of shape [..., 3, 3], got shape {tuple(m.shape)}")
    return m


def _normalize(v: torch.Tensor) -> torch.Tensor:
    """Scale vectors along the last axis to unit length (zero vectors stay zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b [..., 4] (rotation b, then a)."""
    aw, ax, ay, az = _check_last(a, 4, "qmul").unbind(-1)
    bw, bx, by, bz = _check_last(b, 4, "qmul").unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def qinv(q: torch.Tensor) -> torch.Tensor:
    """Inverse of unit quaternions (the conjugate) [..., 4]."""
    q = _check_last(q, 4, "qinv")
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def qrot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v [..., 3] by unit quaternions q [..., 4]."""
    q, v = _check_last(q, 4, "qrot"), _check_last(v, 3, "qrot")
    shape = torch.broadcast_shapes(q.shape[:-1], v.shape[:-1])
    q, v = q.expand(shape + (4,)), v.expand(shape + (3,))
    w, u = q[..., :1], q[..., 1:]
    uv = torch.cross(u, v, dim=-1)
    return v + 2.0 * (w * uv + torch.cross(u, uv, dim=-1))


def qbetween(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shortest-arc unit quaternion rotating direction u onto direction v [..., 4]; a half turn when antiparallel."""
    u, v = _check_last(u, 3, "qbetween"), _check_last(v, 3, "qbetween")
    shape = torch.broadcast_shapes(u.shape[:-1], v.shape[:-1])
    u, v = u.expand(shape + (3,)), v.expand(shape + (3,))
    w = torch.sqrt((u * u).sum(-1) * (v * v).sum(-1)) + (u * v).sum(-1)
    q = torch.cat([w[..., None], torch.cross(u, v, dim=-1)], dim=-1)
    # Antiparallel (or degenerate) pairs: any axis perpendicular to u gives a valid half turn.
    scale = (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(_EPS)
    flat = (w / scale < 1e-9)[..., None]
    un = _normalize(u)
    x_axis, y_axis = un.new_tensor([1.0, 0.0, 0.0]), un.new_tensor([0.0, 1.0, 0.0])
    helper = torch.where(un[..., :1].abs() < 0.9, x_axis, y_axis)
    axis = _normalize(torch.cross(un, helper, dim=-1))
    half_turn = torch.cat([torch.zeros_like(axis[..., :1]), axis], dim=-1)
    return _normalize(torch.where(flat, half_turn, q))


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (normalised first)."""
    w, x, y, z = _normalize(_check_last(q, 4, "quat_to_matrix")).unbind(-1)
    m = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(m.shape[:-1] + (3, 3))


def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] with w >= 0 from rotation matrices [..., 3, 3]."""
    m = _check_matrix(m, "matrix_to_quat")
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four algebraically equal solutions; pick per element the one with the largest (best-conditioned) pivot.
    four_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    candidates = torch.stack(
        [
            torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], dim=-1),
        ],
        dim=-2,
    )
    best = four_sq.argmax(dim=-1)
    index = best[..., None, None].expand(best.shape + (1, 4))
    q = _normalize(torch.gather(candidates, -2, index)[..., 0, :])
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from axis-angle vectors [..., 3] (axis * angle in radians)."""
    aa = _check_last(aa, 3, "axis_angle_to_matrix")
    # Small-angle-safe norm: the epsilon keeps the gradient finite at zero.
    angle = torch.sqrt((aa * aa).sum(-1, keepdim=True) + 1e-16)
    half = angle / 2
    quat = torch.cat([torch.cos(half), aa * (torch.sin(half) / angle)], dim=-1)
    return quat_to_matrix(quat)


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors [..., 3] (angle in [0, pi]) from rotation matrices [..., 3, 3]."""
    q = matrix_to_quat(m)
    sin_half = torch.sqrt((q[..., 1:] ** 2).sum(-1, keepdim=True) + 1e-24)
    angle = 2.0 * torch.atan2(sin_half, q[..., :1])
    return q[..., 1:] * (angle / sin_half)


def matrix_to_cont6d(m: torch.Tensor) -> torch.Tensor:
    """6-D representation [..., 6]: the first two columns (R00, R10, R20, R01, R11, R21)."""
    m = _check_matrix(m, "matrix_to_cont6d")
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def cont6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from 6-D vectors by Gram-Schmidt (x = a, z = x × b, y = z × x as columns)."""
    d6 = _check_last(d6, 6, "cont6d_to_matrix")
    x = _normalize(d6[..., :3])
    z = _normalize(torch.cross(x, d6[..., 3:], dim=-1))
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)
