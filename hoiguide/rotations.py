"""Rotation conversions in torch, differentiable, batched over leading dimensions.

Conventions: rotation matrices act on column vectors (``x' = R @ x``); quaternions are
``(w, x, y, z)`` with the scalar first; axis-angle vectors have the angle (radians) as their
norm. Every function accepts tensors of shape ``(..., k)`` and returns ``(..., 3, 3)`` or the
reverse, and keeps the input's dtype and device.
"""

from __future__ import annotations

import torch

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "rotation_angle",
]


def _check_last(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, shape))}), "
                         f"got {tuple(x.shape)}")


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternion ``(..., 4)`` (w, x, y, z; need not be unit: it is normalised here) to a
    rotation matrix ``(..., 3, 3)``. The gradient flows through the normalisation."""
    _check_last(q, (4,), "quaternion_to_matrix")
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny ** 0.5)
    w, x, y, z = q.unbind(-1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` to a unit quaternion ``(..., 4)`` (w, x, y, z) with
    ``w >= 0``. Numerically stable for every rotation (branch on the largest diagonal term)."""
    _check_last(m, (3, 3), "matrix_to_quaternion")
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cand = torch.stack([
        1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22,
    ], dim=-1)
    r = torch.sqrt(cand.clamp_min(1e-12))  # 2 * |component| for each candidate
    # each row: quaternion computed assuming that component is the largest
    qw = torch.stack([r[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2],
                      m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], dim=-1)
    qx = torch.stack([m[..., 2, 1] - m[..., 1, 2], r[..., 1] ** 2,
                      m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], dim=-1)
    qy = torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1],
                      r[..., 2] ** 2, m[..., 2, 1] + m[..., 1, 2]], dim=-1)
    qz = torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2],
                      m[..., 2, 1] + m[..., 1, 2], r[..., 3] ** 2], dim=-1)
    allq = torch.stack([qw, qx, qy, qz], dim=-2) / (2 * r[..., None])
    best = cand.argmax(dim=-1)
    q = torch.gather(allq, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``(..., 3)`` (angle in radians = norm) to a rotation matrix ``(..., 3, 3)``
    by Rodrigues' formula, smooth at zero angle."""
    _check_last(aa, (3,), "axis_angle_to_matrix")
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with Taylor expansions near zero
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` to axis-angle ``(..., 3)``, angle in [0, pi]."""
    q = matrix_to_quaternion(m)
    vec = q[..., 1:]
    s = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    scale = torch.where(s > 1e-12, angle / s.clamp_min(1e-12), torch.full_like(s, 2.0))
    return vec * scale


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Continuous 6D representation ``(..., 6)`` (the first two columns of R, unnormalised) to
    a rotation matrix by Gram-Schmidt."""
    _check_last(d6, (6,), "rotation_6d_to_matrix")
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` to its 6D representation (first two columns)."""
    _check_last(m, (3, 3), "matrix_to_rotation_6d")
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def rotation_angle(m: torch.Tensor) -> torch.Tensor:
    """Angle in radians of rotation matrices ``(..., 3, 3)`` (geodesic distance to identity).

    ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)``: accurate near 0 and near pi, where
    ``acos`` of the trace loses about half the digits (one ulp of the trace reads as 2e-8
    rad at 0)."""
    _check_last(m, (3, 3), "rotation_angle")
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    vee = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                       m[..., 1, 0] - m[..., 0, 1]], dim=-1)
    return torch.atan2(vee.norm(dim=-1) / 2, (tr - 1) / 2)
