"""Core value types shared by every part of hoiguide: one camera, one similarity, one mesh.

Frames and units (see README, "Conventions"):

* **Image-aligned frame**: the OpenCV camera frame of the (cropped) input image: +x right,
  +y down, +z forward (away from the camera), metres, camera centre at the origin.
* **Pixels**: ``u`` to the right, ``v`` down, continuous coordinates in which the centre of
  pixel ``(col, row)`` is ``(col + 0.5, row + 0.5)``; the image spans ``[0, W] x [0, H]``.
* **Similarity**: ``x' = s R x + t`` acting on column vectors. A similarity "about a centre
  ``c``" (the reference's parametrisation, ``x' = s R (x - c) + c + t``) is built with
  :meth:`Similarity.about` and stored in the same canonical form.
* **Mesh**: triangles wound counter-clockwise when seen from outside, so face normals
  ``(v1 - v0) x (v2 - v0)`` point outward.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from hoiguide.rotations import (
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
    rotation_angle,
)

__all__ = ["Camera", "Similarity", "SimilarityParams", "Mesh", "ArrayLike", "Observations",
           "ClipObservations"]

log = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype or x.dtype, device=device or x.device)
    arr = np.asarray(x)
    if dtype is None:
        dtype = torch.float64 if arr.dtype == np.float64 else (
            torch.float32 if np.issubdtype(arr.dtype, np.floating) else None)
    t = torch.as_tensor(arr, device=device)
    return t.to(dtype) if dtype is not None else t


# --------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the OpenCV convention (+x right, +y down, +z forward), no distortion.

    Attributes:
        fx, fy: focal lengths in pixels (> 0).
        cx, cy: principal point in pixels, in the continuous pixel coordinates of the module
            docstring (an image centre is ``(W / 2, H / 2)``).
        width, height: image size in pixels (> 0).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            v = float(getattr(self, name))
            if not math.isfinite(v):
                raise ValueError(f"Camera.{name} must be finite, got {v}")
            object.__setattr__(self, name, v)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Camera focal lengths must be positive, got fx={self.fx}, "
                             f"fy={self.fy}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or int(v) <= 0:
                raise ValueError(f"Camera.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))

    # construction -----------------------------------------------------------------------
    @classmethod
    def from_K(cls, K: ArrayLike, width: int, height: int) -> "Camera":
        """From a 3x3 intrinsics matrix in pixels (OpenCV layout, zero skew)."""
        K = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"Camera.from_K: expected K of shape (3, 3), got {K.shape}")
        if abs(K[0, 1]) > 1e-9 or abs(K[2, 2] - 1) > 1e-9 or np.abs(K[2, :2]).max() > 1e-9:
            raise ValueError(f"Camera.from_K: expected [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K}")
        return cls(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height)

    @classmethod
    def from_fov(cls, fov_x_deg: float, width: int, height: int) -> "Camera":
        """Square pixels, principal point at the image centre, horizontal field of view in
        degrees."""
        if not 0 < fov_x_deg < 180:
            raise ValueError(f"Camera.from_fov: field of view must be in (0, 180) degrees, "
                             f"got {fov_x_deg}")
        f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
        return cls(f, f, width / 2, height / 2, width, height)

    # properties ------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsics in pixels (float64 numpy)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.height, self.width

    def K_tensor(self, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
        return torch.as_tensor(self.K, dtype=dtype, device=device)

    # derived cameras -------------------------------------------------------------------
    def resized(self, width: int, height: int) -> "Camera":
        """The same view rendered at another resolution (intrinsics scaled per axis)."""
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def cropped(self, x0: float, y0: float, crop_w: float, crop_h: float,
                out_width: int, out_height: int) -> "Camera":
        """Camera of the crop ``[x0, x0 + crop_w] x [y0, y0 + crop_h]`` (pixels of this
        camera) resampled to ``out_width x out_height``."""
        if crop_w <= 0 or crop_h <= 0:
            raise ValueError(f"Camera.cropped: crop size must be positive, got {crop_w}x{crop_h}")
        sx, sy = out_width / crop_w, out_height / crop_h
        return Camera(self.fx * sx, self.fy * sy, (self.cx - x0) * sx, (self.cy - y0) * sy,
                      out_width, out_height)

    # projection ------------------------------------------------------------------------
    def project(self, points: ArrayLike) -> torch.Tensor | np.ndarray:
        """Project camera-frame points ``(..., 3)`` (metres) to pixels ``(..., 2)``.

        Works on numpy arrays and on torch tensors (differentiable). Points with ``z <= 0``
        are behind the camera: their projection is returned as NaN rather than a mirrored,
        plausible-looking pixel.
        """
        is_np = not isinstance(points, torch.Tensor)
        p = np.asarray(points, dtype=np.float64) if is_np else points
        if p.shape[-1] != 3:
            raise ValueError(f"Camera.project: expected points of shape (..., 3), got "
                             f"{tuple(p.shape)}")
        z = p[..., 2]
        if is_np:
            with np.errstate(divide="ignore", invalid="ignore"):
                zs = np.where(z > 0, z, np.nan)
                return np.stack([self.fx * p[..., 0] / zs + self.cx,
                                 self.fy * p[..., 1] / zs + self.cy], -1)
        zs = torch.where(z > 0, z, torch.full_like(z, float("nan")))
        return torch.stack([self.fx * p[..., 0] / zs + self.cx,
                            self.fy * p[..., 1] / zs + self.cy], -1)

    def unproject(self, uv: ArrayLike, depth: ArrayLike) -> torch.Tensor | np.ndarray:
        """Pixels ``(..., 2)`` and depth ``(...)`` (metres along +z) to camera-frame points
        ``(..., 3)``. numpy in, numpy out; torch in, torch out."""
        if isinstance(uv, torch.Tensor):
            d = torch.as_tensor(depth, dtype=uv.dtype, device=uv.device)
            x = (uv[..., 0] - self.cx) / self.fx * d
            y = (uv[..., 1] - self.cy) / self.fy * d
            return torch.stack([x, y, d.expand_as(x)], -1)
        uv = np.asarray(uv, dtype=np.float64)
        d = np.asarray(depth, dtype=np.float64)
        if uv.shape[-1] != 2:
            raise ValueError(f"Camera.unproject: expected uv of shape (..., 2), got {uv.shape}")
        x = (uv[..., 0] - self.cx) / self.fx * d
        y = (uv[..., 1] - self.cy) / self.fy * d
        return np.stack([x, y, np.broadcast_to(d, x.shape)], -1)

    def pixel_rays(self, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
        """Ray directions ``(H, W, 3)`` through every pixel centre, with ``z = 1``."""
        v, u = torch.meshgrid(torch.arange(self.height, dtype=dtype, device=device) + 0.5,
                              torch.arange(self.width, dtype=dtype, device=device) + 0.5,
                              indexing="ij")
        return torch.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy,
                            torch.ones_like(u)], -1)

    def to_dict(self) -> dict[str, float]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        return cls(**{k: d[k] for k in ("fx", "fy", "cx", "cy", "width", "height")})


# --------------------------------------------------------------------------------------
# Similarity
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Similarity:
    """A 3D similarity transform ``x' = s R x + t``.

    Attributes:
        scale: scalar tensor, ``s > 0`` (dimensionless).
        rotation: ``(3, 3)`` rotation matrix.
        translation: ``(3,)`` translation, metres in the target frame.

    The tensors may carry gradients (see :class:`SimilarityParams`). Built from Python
    numbers or numpy they are float64.
    """

    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def __post_init__(self) -> None:
        s = _as_tensor(self.scale, dtype=None)
        if not s.is_floating_point():
            s = s.double()
        R = _as_tensor(self.rotation, dtype=s.dtype, device=s.device)
        t = _as_tensor(self.translation, dtype=s.dtype, device=s.device)
        s = s.reshape(())
        if R.shape != (3, 3):
            raise ValueError(f"Similarity: rotation must be (3, 3), got {tuple(R.shape)}")
        if t.shape != (3,):
            raise ValueError(f"Similarity: translation must be (3,), got {tuple(t.shape)}")
        if not bool(s.detach() > 0):
            raise ValueError(f"Similarity: scale must be positive, got {float(s)}")
        if not (torch.isfinite(R.detach()).all() and torch.isfinite(t.detach()).all()):
            raise ValueError("Similarity: rotation and translation must be finite")
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    # construction -----------------------------------------------------------------------
    @classmethod
    def identity(cls, dtype: torch.dtype = torch.float64) -> "Similarity":
        return cls(torch.ones((), dtype=dtype), torch.eye(3, dtype=dtype),
                   torch.zeros(3, dtype=dtype))

    @classmethod
    def about(cls, center: ArrayLike, scale: ArrayLike | float = 1.0,
              rotation: ArrayLike | None = None,
              translation: ArrayLike | None = None) -> "Similarity":
        """The similarity ``x' = s R (x - c) + c + t`` (scale and rotate about ``c``, then
        translate), stored in canonical form."""
        c = _as_tensor(center, dtype=torch.float64) if not isinstance(center, torch.Tensor) \
            else center
        dt = c.dtype
        s = _as_tensor(scale, dtype=dt, device=c.device).reshape(())
        R = torch.eye(3, dtype=dt, device=c.device) if rotation is None else \
            _as_tensor(rotation, dtype=dt, device=c.device)
        t = torch.zeros(3, dtype=dt, device=c.device) if translation is None else \
            _as_tensor(translation, dtype=dt, device=c.device)
        return cls(s, R, c + t - s * (R @ c))

    @classmethod
    def from_matrix(cls, M: ArrayLike) -> "Similarity":
        """From a 4x4 matrix ``[[sR, t], [0, 1]]``."""
        M = _as_tensor(M, dtype=torch.float64) if not isinstance(M, torch.Tensor) else M
        if M.shape != (4, 4):
            raise ValueError(f"Similarity.from_matrix: expected (4, 4), got {tuple(M.shape)}")
        A = M[:3, :3]
        det = torch.linalg.det(A)
        if not bool(det > 0):
            raise ValueError("Similarity.from_matrix: the 3x3 block must have positive "
                             f"determinant (a rotation times a positive scale), got {float(det)}")
        s = det.abs() ** (1.0 / 3.0)
        return cls(s, A / s, M[:3, 3])

    # algebra ---------------------------------------------------------------------------
    def matrix(self) -> torch.Tensor:
        """4x4 homogeneous matrix."""
        M = torch.eye(4, dtype=self.rotation.dtype, device=self.rotation.device)
        M = M.clone()
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    def apply(self, points: ArrayLike) -> torch.Tensor | np.ndarray:
        """Transform points ``(..., 3)``. numpy in, numpy out (float64); torch in, torch out
        in the points' dtype (differentiable w.r.t. both points and this similarity)."""
        if not isinstance(points, torch.Tensor):
            p = np.asarray(points, dtype=np.float64)
            if p.shape[-1] != 3:
                raise ValueError(f"Similarity.apply: expected (..., 3), got {p.shape}")
            s = float(self.scale.detach())
            R = self.rotation.detach().cpu().double().numpy()
            t = self.translation.detach().cpu().double().numpy()
            return s * p @ R.T + t
        if points.shape[-1] != 3:
            raise ValueError(f"Similarity.apply: expected (..., 3), got {tuple(points.shape)}")
        dt, dev = points.dtype, points.device
        s, R, t = (x.to(dtype=dt, device=dev) for x in (self.scale, self.rotation, self.translation))
        return s * points @ R.transpose(0, 1) + t

    __call__ = apply

    def compose(self, other: "Similarity") -> "Similarity":
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        dt = torch.promote_types(self.scale.dtype, other.scale.dtype)
        s1, R1, t1 = self.scale.to(dt), self.rotation.to(dt), self.translation.to(dt)
        s2, R2, t2 = other.scale.to(dt), other.rotation.to(dt), other.translation.to(dt)
        return Similarity(s1 * s2, R1 @ R2, s1 * (R1 @ t2) + t1)

    __matmul__ = compose

    def inverse(self) -> "Similarity":
        Rt = self.rotation.transpose(0, 1)
        return Similarity(1.0 / self.scale, Rt, -(Rt @ self.translation) / self.scale)

    def detach(self) -> "Similarity":
        return Similarity(self.scale.detach(), self.rotation.detach(), self.translation.detach())

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> "Similarity":
        return Similarity(*(x.to(dtype=dtype or x.dtype, device=device or x.device)
                            for x in (self.scale, self.rotation, self.translation)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (scale, row-major rotation, translation in metres)."""
        d = self.detach().to(torch.float64, "cpu")
        return {"scale": float(d.scale), "rotation": d.rotation.tolist(),
                "translation": d.translation.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Similarity":
        return cls(torch.tensor(float(d["scale"]), dtype=torch.float64),
                   torch.tensor(d["rotation"], dtype=torch.float64),
                   torch.tensor(d["translation"], dtype=torch.float64))

    def __repr__(self) -> str:
        d = self.to_dict()
        t = ", ".join(f"{x:.4g}" for x in d["translation"])
        ang = math.degrees(float(rotation_angle(self.rotation.detach())))
        return f"Similarity(scale={d['scale']:.4g}, rotation={ang:.3g} deg, translation=[{t}])"


class SimilarityParams(torch.nn.Module):
    """Optimisable similarity about a fixed centre: ``x' = exp(log_s) R(q) (x - c) + c + t``.

    The three parameter groups (``log_scale``, ``rotation``, ``translation``) are separate
    ``nn.Parameter`` objects so that an optimiser can give each its own learning rate (the
    phase schedules do). ``rotation`` is an unnormalised quaternion (w, x, y, z), normalised
    when used, as in the reference; ``rotation_repr="6d"`` uses the continuous 6D form.

    Args:
        center: ``(3,)`` rotation/scale centre (e.g. the mesh's bounding-box centre), metres.
        init: an initial similarity (canonical form); its action is reproduced exactly.
        dtype, device: of the parameters.
    """

    def __init__(self, center: ArrayLike | None = None, init: Similarity | None = None,
                 rotation_repr: str = "quaternion", dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if rotation_repr not in ("quaternion", "6d"):
            raise ValueError(f"rotation_repr must be 'quaternion' or '6d', got {rotation_repr!r}")
        self.rotation_repr = rotation_repr
        c = torch.zeros(3, dtype=dtype, device=device) if center is None else \
            _as_tensor(center, dtype=dtype, device=device).reshape(3)
        self.register_buffer("center", c)
        init = init or Similarity.identity()
        s = init.scale.detach().to(dtype=dtype, device=device)
        R = init.rotation.detach().to(dtype=dtype, device=device)
        t0 = init.translation.detach().to(dtype=dtype, device=device)
        # canonical t0 = c + t - s R c  =>  t = t0 - c + s R c
        t = t0 - c + s * (R @ c)
        self.log_scale = torch.nn.Parameter(torch.log(s).reshape(()))
        rot = matrix_to_quaternion(R) if rotation_repr == "quaternion" else \
            matrix_to_rotation_6d(R)
        self.rotation = torch.nn.Parameter(rot)
        self.translation = torch.nn.Parameter(t)

    def rotation_matrix(self) -> torch.Tensor:
        if self.rotation_repr == "quaternion":
            return quaternion_to_matrix(self.rotation)
        return rotation_6d_to_matrix(self.rotation)

    def similarity(self) -> Similarity:
        """The current value as a :class:`Similarity` (differentiable w.r.t. parameters)."""
        s = torch.exp(self.log_scale)
        R = self.rotation_matrix()
        c = self.center
        return Similarity(s, R, c + self.translation - s * (R @ c))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Apply to points ``(..., 3)`` (differentiable)."""
        s = torch.exp(self.log_scale)
        R = self.rotation_matrix().to(points.dtype)
        c = self.center.to(points.dtype)
        return s.to(points.dtype) * (points - c) @ R.transpose(0, 1) + c + \
            self.translation.to(points.dtype)

    def param_groups(self) -> dict[str, torch.nn.Parameter]:
        """``{"scale": ..., "rotation": ..., "translation": ...}`` for per-group learning
        rates."""
        return {"scale": self.log_scale, "rotation": self.rotation,
                "translation": self.translation}


# --------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: ``(V, 3)`` floating tensor, metres, in whatever frame the producer states
            (usually the image-aligned frame). May carry gradients.
        faces: ``(F, 3)`` int64 tensor of vertex indices, wound counter-clockwise seen from
            outside (outward normals).
        vertex_colors: optional ``(V, 3)`` or ``(V, 4)`` float tensor in ``[0, 1]``.

    An empty mesh (``V == 0`` or ``F == 0``) is valid and reported by :attr:`is_empty`;
    functions that cannot work on one raise a clear ``ValueError`` naming it.
    Construction validates shapes, index range and finiteness of the vertices.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = self.vertices
        if not isinstance(v, torch.Tensor):
            v = _as_tensor(np.asarray(v, dtype=np.float32).reshape(-1, 3)
                           if np.size(v) == 0 else v)
        if not v.is_floating_point():
            v = v.float()
        if v.ndim != 2 or v.shape[-1] != 3:
            if v.numel() == 0:
                v = v.reshape(0, 3)
            else:
                raise ValueError(f"Mesh: vertices must be (V, 3), got {tuple(v.shape)}")
        f = self.faces
        f = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f,
                            device=v.device)
        if f.numel() == 0:
            f = f.reshape(0, 3)
        if f.is_floating_point():
            if not torch.equal(f, f.round()):
                raise ValueError("Mesh: faces must be integer vertex indices")
        f = f.long()
        if f.ndim != 2 or f.shape[-1] != 3:
            raise ValueError(f"Mesh: faces must be (F, 3), got {tuple(f.shape)}")
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
            raise ValueError(f"Mesh: face indices must be in [0, {v.shape[0]}), got range "
                             f"[{int(f.min())}, {int(f.max())}]")
        if v.numel() and not bool(torch.isfinite(v.detach()).all()):
            bad = int((~torch.isfinite(v.detach()).all(-1)).sum())
            raise ValueError(f"Mesh: {bad} vertices are NaN or inf")
        c = self.vertex_colors
        if c is not None:
            c = _as_tensor(c)
            if c.dtype == torch.uint8:
                c = c.float() / 255.0
            c = c.to(device=v.device, dtype=torch.float32)
            if c.ndim != 2 or c.shape[0] != v.shape[0] or c.shape[1] not in (3, 4):
                raise ValueError(f"Mesh: vertex_colors must be (V, 3|4) with V={v.shape[0]}, "
                                 f"got {tuple(c.shape)}")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)
        object.__setattr__(self, "vertex_colors", c)

    # basic properties --------------------------------------------------------------------
    @classmethod
    def empty(cls, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> "Mesh":
        return cls(torch.zeros(0, 3, dtype=dtype, device=device),
                   torch.zeros(0, 3, dtype=torch.long, device=device))

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def is_empty(self) -> bool:
        return self.num_vertices == 0 or self.num_faces == 0

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vertices.dtype

    def require_nonempty(self, what: str = "this operation") -> None:
        """Raise ``ValueError`` if the mesh is empty, naming the caller's operation."""
        if self.is_empty:
            raise ValueError(f"{what} needs a non-empty mesh, got one with "
                             f"{self.num_vertices} vertices and {self.num_faces} faces")

    # derived quantities ------------------------------------------------------------------
    def face_normals(self, normalize: bool = True) -> torch.Tensor:
        """``(F, 3)`` face normals (outward for correctly wound meshes). Zero-area faces get
        a zero normal, never NaN."""
        v = self.vertices
        tri = v[self.faces]
        n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        if not normalize:
            return n
        norm = n.norm(dim=-1, keepdim=True)
        return torch.where(norm > 0, n / norm.clamp_min(1e-30), torch.zeros_like(n))

    def face_areas(self) -> torch.Tensor:
        return 0.5 * self.face_normals(normalize=False).norm(dim=-1)

    def vertex_normals(self) -> torch.Tensor:
        """``(V, 3)`` area-weighted vertex normals (zero for isolated vertices)."""
        fn = self.face_normals(normalize=False)
        vn = torch.zeros_like(self.vertices)
        vn = vn.index_add(0, self.faces.reshape(-1), fn.repeat_interleave(3, dim=0))
        norm = vn.norm(dim=-1, keepdim=True)
        return torch.where(norm > 0, vn / norm.clamp_min(1e-30), torch.zeros_like(vn))

    def bounds(self) -> torch.Tensor:
        """``(2, 3)``: min and max corner."""
        self.require_nonempty("Mesh.bounds")
        return torch.stack([self.vertices.min(0).values, self.vertices.max(0).values])

    def bbox_center(self) -> torch.Tensor:
        return self.bounds().mean(0)

    def bbox_diagonal(self) -> torch.Tensor:
        b = self.bounds()
        return (b[1] - b[0]).norm()

    # transforms -------------------------------------------------------------------------
    def transformed(self, transform: "Similarity | SimilarityParams") -> "Mesh":
        """This mesh with vertices mapped by a similarity (differentiable)."""
        v = transform(self.vertices) if isinstance(transform, SimilarityParams) else \
            transform.apply(self.vertices)
        return Mesh(v, self.faces, self.vertex_colors, dict(self.metadata))

    def with_vertices(self, vertices: torch.Tensor) -> "Mesh":
        return Mesh(vertices, self.faces, self.vertex_colors, dict(self.metadata))

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "Mesh":
        c = None if self.vertex_colors is None else self.vertex_colors.to(device=device)
        return Mesh(self.vertices.to(device=device, dtype=dtype or self.dtype),
                    self.faces.to(device=device), c, dict(self.metadata))

    def detach(self) -> "Mesh":
        c = None if self.vertex_colors is None else self.vertex_colors.detach()
        return Mesh(self.vertices.detach(), self.faces, c, dict(self.metadata))

    @staticmethod
    def concatenate(meshes: Sequence["Mesh"]) -> "Mesh":
        """One mesh holding all parts (face indices offset). Colours are kept only if every
        part has them (with the same channel count)."""
        meshes = [m for m in meshes]
        if not meshes:
            return Mesh.empty()
        dtype = meshes[0].dtype
        verts, faces, cols, off = [], [], [], 0
        for m in meshes:
            verts.append(m.vertices.to(dtype))
            faces.append(m.faces + off)
            cols.append(m.vertex_colors)
            off += m.num_vertices
        keep = all(c is not None for c in cols) and len({c.shape[1] for c in cols}) == 1
        return Mesh(torch.cat(verts), torch.cat(faces), torch.cat(cols) if keep else None)

    # numpy / trimesh / files ---------------------------------------------------------------
    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices float64 (V,3), faces int64 (F,3))``."""
        return (self.vertices.detach().cpu().double().numpy(),
                self.faces.detach().cpu().numpy().astype(np.int64))

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (no processing: vertices and faces kept as they are)."""
        import trimesh

        v, f = self.numpy()
        colors = None
        if self.vertex_colors is not None:
            c = self.vertex_colors.detach().cpu().numpy()
            if c.shape[1] == 3:
                c = np.concatenate([c, np.ones((len(c), 1))], 1)
            colors = (np.clip(c, 0, 1) * 255).round().astype(np.uint8)
        return trimesh.Trimesh(vertices=v, faces=f, vertex_colors=colors, process=False)

    @classmethod
    def from_trimesh(cls, tm, dtype: torch.dtype = torch.float32) -> "Mesh":
        """From a ``trimesh.Trimesh`` (a ``trimesh.Scene`` is concatenated into one mesh)."""
        import trimesh

        if isinstance(tm, trimesh.Scene):
            geoms = [g for g in tm.dump() if isinstance(g, trimesh.Trimesh)] \
                if hasattr(tm, "dump") else []
            if not geoms:
                return cls.empty(dtype)
            tm = trimesh.util.concatenate(geoms)
        if not isinstance(tm, trimesh.Trimesh):
            raise TypeError(f"Mesh.from_trimesh: expected trimesh.Trimesh or Scene, got "
                            f"{type(tm).__name__}")
        colors = None
        vc = getattr(tm.visual, "vertex_colors", None) if tm.visual.kind == "vertex" else None
        if vc is not None and len(vc) == len(tm.vertices):
            colors = torch.as_tensor(np.asarray(vc)[:, :4], dtype=torch.float32) / 255.0
        return cls(torch.as_tensor(np.asarray(tm.vertices), dtype=dtype),
                   torch.as_tensor(np.asarray(tm.faces, dtype=np.int64)), colors)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "Mesh":
        """Load GLB/GLTF/PLY/OBJ/STL/OFF (anything trimesh reads) without processing."""
        import trimesh

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Mesh.load: no such file: {path}")
        return cls.from_trimesh(trimesh.load(str(path), process=False), dtype=dtype)

    def export(self, path: str | Path) -> Path:
        """Write to ``path``; the format follows the suffix (``.glb``, ``.ply``, ``.obj``,
        ``.stl``, ``.off``). Parent folders are created. Returns the path."""
        path = Path(path)
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in ("glb", "gltf", "ply", "obj", "stl", "off"):
            raise ValueError(f"Mesh.export: unsupported format {path.suffix!r}; use .glb, "
                             ".ply, .obj, .stl or .off")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_trimesh().export(str(path), file_type=suffix)
        return path

    def __repr__(self) -> str:
        return (f"Mesh(V={self.num_vertices}, F={self.num_faces}, dtype={self.dtype}, "
                f"device={self.device}{', colors' if self.vertex_colors is not None else ''})")


# --------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------


def _image_tensor(x: ArrayLike | None, name: str, shape: tuple[int, ...],
                  dtype: torch.dtype) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if tuple(t.shape) != shape:
        raise ValueError(f"Observations.{name}: expected shape {shape} (the camera's image "
                         f"size), got {tuple(t.shape)}")
    if dtype == torch.bool:
        return t.bool() if t.dtype == torch.bool else t > 0.5
    return t.to(dtype)


@dataclass(frozen=True, eq=False)
class Observations:
    """Everything the guidance engine consumes, in the image-aligned frame.

    All 3D quantities are in the OpenCV camera frame of the (cropped) image, metres; all 2D
    quantities in pixels of ``camera`` (``H x W = camera.height x camera.width``). They can
    come from the foundation-model adapters, from synthetic scenes, or be built by hand from
    your own data: only ``camera``, ``object_image``, the masks, ``hand_mesh`` and
    ``gen_to_image`` are required; missing targets simply disable the losses that need them.

    Attributes:
        camera: intrinsics of the crop.
        object_image: ``(h, w, 3|4)`` uint8 image of the object alone (hand removed,
            background transparent or white): the generator's condition.
        mask_hand, mask_object, mask_union: ``(H, W)`` bool. ``mask_object`` is the VISIBLE
            object; ``mask_union = hand | object`` (computed when not given).
        mask_object_amodal: optional ``(H, W)`` bool full object extent (e.g. from the
            inpainted object image); used by the object silhouette so the part hidden by the
            hand is not penalised.
        image: optional ``(H, W, 3)`` uint8 crop image (for pictures only).
        target_normals: optional ``(H, W, 3)`` unit normals, camera frame (facing the
            camera means negative z).
        target_disparity: optional ``(H, W)`` 1/depth in 1/metres (0 where invalid).
        target_valid: optional ``(H, W)`` bool where the monocular geometry is valid.
        partial_points: optional ``(N, 3)`` partial point cloud (metres).
        hand_mesh: the hand in the image frame (e.g. MANO, 778 vertices).
        hand_keypoints_3d: optional ``(21, 3)`` hand keypoints in the image frame (OpenPose
            order), carried along with the hand similarity.
        keypoints_2d: optional ``(21, 2)`` detected 2D keypoints in pixels;
            ``keypoint_confidence`` optional ``(21,)`` in ``[0, 1]``.
        gen_to_image: similarity from the generator frame (the decode box) to the image frame.
        metadata: free-form provenance (scene id, adapter versions, ...).
    """

    camera: Camera
    object_image: np.ndarray
    mask_hand: torch.Tensor
    mask_object: torch.Tensor
    hand_mesh: Mesh
    gen_to_image: Similarity
    mask_union: torch.Tensor | None = None
    mask_object_amodal: torch.Tensor | None = None
    image: np.ndarray | None = None
    target_normals: torch.Tensor | None = None
    target_disparity: torch.Tensor | None = None
    target_valid: torch.Tensor | None = None
    partial_points: torch.Tensor | None = None
    hand_keypoints_3d: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoint_confidence: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.camera, Camera):
            raise TypeError(f"Observations.camera: expected Camera, got "
                            f"{type(self.camera).__name__}")
        H, W = self.camera.height, self.camera.width
        oi = np.asarray(self.object_image)
        if oi.ndim != 3 or oi.shape[2] not in (3, 4) or oi.dtype != np.uint8:
            raise ValueError(f"Observations.object_image: expected (h, w, 3|4) uint8, got "
                             f"{oi.shape} {oi.dtype}")
        object.__setattr__(self, "object_image", oi)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for k in ("mask_hand", "mask_object", "mask_union", "mask_object_amodal",
                  "target_valid"):
            set_(k, _image_tensor(getattr(self, k), k, (H, W), torch.bool))
        if self.mask_union is None:
            set_("mask_union", self.mask_hand | self.mask_object)
        set_("target_normals", _image_tensor(self.target_normals, "target_normals", (H, W, 3),
                                             torch.float32))
        set_("target_disparity", _image_tensor(self.target_disparity, "target_disparity",
                                               (H, W), torch.float32))
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape != (H, W, 3) or img.dtype != np.uint8:
                raise ValueError(f"Observations.image: expected ({H}, {W}, 3) uint8, got "
                                 f"{img.shape} {img.dtype}")
            set_("image", img)
        if not isinstance(self.hand_mesh, Mesh):
            raise TypeError(f"Observations.hand_mesh: expected Mesh, got "
                            f"{type(self.hand_mesh).__name__}")
        self.hand_mesh.require_nonempty("Observations.hand_mesh")
        if not isinstance(self.gen_to_image, Similarity):
            raise TypeError("Observations.gen_to_image: expected Similarity, got "
                            f"{type(self.gen_to_image).__name__}")
        for k, shape in (("partial_points", (None, 3)), ("hand_keypoints_3d", (21, 3)),
                         ("keypoints_2d", (21, 2)), ("keypoint_confidence", (21,))):
            v = getattr(self, k)
            if v is None:
                continue
            t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
            t = t.float()
            if t.ndim != len(shape) or any(s is not None and s != d
                                           for s, d in zip(shape, t.shape)):
                raise ValueError(f"Observations.{k}: expected shape "
                                 f"{tuple('N' if s is None else s for s in shape)}, got "
                                 f"{tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"Observations.{k}: contains NaN or inf")
            set_(k, t)
        if not bool(self.mask_object.any()):
            raise ValueError("Observations.mask_object is empty: no object pixels to guide by")


# --------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClipObservations:
    """``T`` frames of ONE rigid object held by one hand: what clip guidance consumes.

    Each usable frame is an :class:`Observations` in that frame's image-aligned frame (the
    OpenCV camera frame, metres; a static camera makes it the same 3D frame in every frame,
    only the crop intrinsics may differ). The object is rigid: one shape and one scale over
    the clip; its pose per frame starts at that frame's ``gen_to_image`` (e.g. per-frame ICP
    of the generator's sample, or the grasp carried along with the hand). The hand
    articulates: each frame has its own ``hand_mesh`` (the same vertex count in every frame,
    e.g. MANO's 778, for the temporal terms to apply).

    Build one from your own data by making one :class:`Observations` per frame (see its
    docstring) and passing them with their times; a frame where neither a usable object
    mask nor a hand was observed is ``None`` (its poses are interpolated from its
    neighbours).

    Attributes:
        frames: ``T`` per-frame :class:`Observations` or ``None``.
        times: ``(T,)`` float64 frame times in seconds, strictly increasing (default
            ``0, 1/fps, 2/fps, ...`` with ``fps=30``).
        reference: index of the reference frame: the generator's condition, the frame the
            single-image baseline uses and the frame the object mesh is reported in
            (default: the frame with the most visible object pixels).
        metadata: free-form provenance (clip id, frame indices in the source video, ...).
    """

    frames: tuple
    times: torch.Tensor | None = None
    reference: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = tuple(self.frames) if not isinstance(self.frames, (str, bytes)) else None
        if frames is None or not frames:
            raise ValueError("ClipObservations.frames: expected a non-empty sequence of "
                             "hoiguide.Observations (None for unusable frames)")
        for i, f in enumerate(frames):
            if f is not None and not isinstance(f, Observations):
                raise TypeError(f"ClipObservations.frames[{i}]: expected hoiguide.Observations "
                                f"or None, got {type(f).__name__}")
        valid = [i for i, f in enumerate(frames) if f is not None]
        if not valid:
            raise ValueError("ClipObservations: no frame has observations (every frame is None)")
        object.__setattr__(self, "frames", frames)
        T = len(frames)
        times = self.times
        if times is None:
            times = torch.arange(T, dtype=torch.float64) / 30.0
        t = torch.as_tensor(np.asarray(times) if not isinstance(times, torch.Tensor) else times)
        t = t.detach().to(torch.float64).reshape(-1)
        if t.shape[0] != T:
            raise ValueError(f"ClipObservations.times: expected {T} values (one per frame), "
                             f"got {t.shape[0]}")
        if not bool(torch.isfinite(t).all()) or (T > 1 and not bool((t[1:] > t[:-1]).all())):
            raise ValueError("ClipObservations.times: expected finite, strictly increasing "
                             "frame times in seconds")
        object.__setattr__(self, "times", t)
        ref = self.reference
        if ref is None:
            ref = max(valid, key=lambda i: (int(frames[i].mask_object.sum()), -i))
        if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or \
                not 0 <= int(ref) < T:
            raise ValueError(f"ClipObservations.reference: expected a frame index in "
                             f"[0, {T - 1}], got {ref!r}")
        if frames[int(ref)] is None:
            raise ValueError(f"ClipObservations.reference: frame {int(ref)} has no "
                             "observations; choose an observed frame")
        object.__setattr__(self, "reference", int(ref))

    @property
    def num_frames(self) -> int:
        """``T``, observed or not."""
        return len(self.frames)

    @property
    def observed(self) -> list[int]:
        """Indices of the frames that have observations."""
        return [i for i, f in enumerate(self.frames) if f is not None]

    @property
    def reference_observations(self) -> Observations:
        """The reference frame's :class:`Observations` (what a single-image run would use)."""
        return self.frames[self.reference]

    @classmethod
    def from_frames(cls, frames: Sequence[Observations | None], fps: float = 30.0,
                    reference: int | None = None, **metadata: Any) -> "ClipObservations":
        """A clip of ``frames`` taken at ``fps`` frames per second (times ``i / fps``)."""
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"ClipObservations.from_frames: fps must be a positive number, "
                             f"got {fps!r}")
        frames = tuple(frames)
        return cls(frames, torch.arange(len(frames), dtype=torch.float64) / float(fps),
                   reference, dict(metadata))

    def __repr__(self) -> str:
        return (f"ClipObservations(T={self.num_frames}, observed={len(self.observed)}, "
                f"reference={self.reference})")
