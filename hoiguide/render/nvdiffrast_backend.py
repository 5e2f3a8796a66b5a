"""Optional CUDA backend built on NVIDIA's nvdiffrast (installed by the user).

nvdiffrast is not on PyPI; install it yourself on a machine with a CUDA toolkit::

    pip install --no-build-isolation git+https://github.com/NVlabs/nvdiffrast

What it does (same :class:`~hoiguide.render.RenderOutput` as the portable backend):

* ``nvdiffrast.torch.rasterize`` finds the visible triangle per pixel centre. The camera
  maps pixel ``u`` to NDC ``x = 2 u / W - 1`` and ``v`` to ``y = 2 v / H - 1``, so image row
  ``i`` is nvdiffrast's row ``i`` (no flip); clip-space ``w`` is the camera depth ``z`` and
  the depth range is fitted to the scene (near plane at ``max(NEAR_Z, z_min / 2)``).
* Depth, disparity and normals are then recomputed from the visible triangle by the
  shared torch code (exactly as in the portable backend).
* Soft silhouettes come from ``nvdiffrast.torch.antialias`` applied to one-hot mesh masks
  (union, each mesh's visible region and, for amodal, each mesh rasterised alone): an
  analytic ~1 px coverage blend at silhouette edges, differentiable w.r.t. the vertices.
  ``edge_sigma`` does not apply.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from hoiguide.render.portable import NEAR_Z
from hoiguide.types import Camera

log = logging.getLogger(__name__)

__all__ = ["require_nvdiffrast", "render_nvdiffrast"]

_CONTEXTS: dict[str, Any] = {}

_INSTALL_HINT = (
    "The 'nvdiffrast' render backend needs NVIDIA's nvdiffrast, a CUDA package that is not "
    "on PyPI and that you install yourself on a machine with a CUDA toolkit: "
    "`pip install --no-build-isolation git+https://github.com/NVlabs/nvdiffrast` (see "
    "https://nvlabs.github.io/nvdiffrast/). Without it use backend='portable' (the default "
    "on the CPU; it also runs on CUDA through warp).")


def require_nvdiffrast() -> Any:
    """Import ``nvdiffrast.torch`` or raise an ``ImportError`` saying how to install it."""
    try:
        import nvdiffrast.torch as dr
    except Exception as e:  # ImportError, or a broken build failing at import
        raise ImportError(f"{_INSTALL_HINT} (import failed: {e})") from e
    return dr


def _context(dr: Any, device: torch.device) -> Any:
    key = str(device)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
    return _CONTEXTS[key]


def _clip_positions(verts: torch.Tensor, cam: Camera) -> torch.Tensor | None:
    """``(1, V, 4)`` float32 clip-space positions (differentiable), or None when nothing
    is in front of the camera."""

    v = verts.float()
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    zd = z.detach()
    front = zd[zd > NEAR_Z]
    if front.numel() == 0:
        return None
    near = max(NEAR_Z, 0.5 * float(front.min()))
    far = max(2.0 * float(zd.max()), near * 1.01)
    a = (far + near) / (far - near)
    b = -2.0 * far * near / (far - near)
    W, H = cam.width, cam.height
    pos = torch.stack([(2.0 * cam.fx * x + (2.0 * cam.cx - W) * z) / W,
                       (2.0 * cam.fy * y + (2.0 * cam.cy - H) * z) / H,
                       a * z + b, z], -1)
    return pos[None].contiguous()


def render_nvdiffrast(verts: torch.Tensor, faces: torch.Tensor, face_offsets: torch.Tensor,
                      cam: Camera, amodal: bool) -> dict[str, Any]:
    """Visibility and soft silhouettes with nvdiffrast (same contract as
    :func:`hoiguide.render.portable.render_portable`).

    Args:
        verts: ``(V, 3)`` camera-frame vertices on a CUDA device (metres, differentiable).
        faces: ``(F, 3)`` int64 global vertex indices.
        face_offsets: ``(K + 1,)`` face ranges of the K non-empty meshes.
        cam: camera at the output size.
        amodal: also rasterise each mesh alone.
    """
    dr = require_nvdiffrast()
    dev = verts.device
    if dev.type != "cuda":
        raise ValueError(f"render: the nvdiffrast backend needs CUDA tensors, got {dev}")
    H, W = cam.height, cam.width
    K = face_offsets.numel() - 1
    n_sets = 1 if K == 1 else 1 + K + (K if amodal else 0)
    pos = _clip_positions(verts, cam)
    if pos is None:
        return {"face": torch.full((H * W,), -1, dtype=torch.long, device=dev),
                "soft": torch.zeros(n_sets, H * W, dtype=verts.dtype, device=dev),
                "num_groups": K}
    ctx = _context(dr, dev)
    tri = faces.to(torch.int32).contiguous()
    rast, _ = dr.rasterize(ctx, pos, tri, resolution=[H, W])
    face = rast[0, ..., 3].round().long().reshape(-1) - 1
    hit = face >= 0
    if K == 1:
        colors = hit.float()[:, None]
    else:
        group = torch.searchsorted(face_offsets[1:], face.clamp_min(0), right=True)
        onehot = torch.nn.functional.one_hot(group.clamp_max(K - 1), K).float()
        colors = torch.cat([hit.float()[:, None], onehot * hit.float()[:, None]], -1)
    soft = dr.antialias(colors.reshape(1, H, W, -1).contiguous(), rast, pos, tri)
    planes = [soft[0].reshape(H * W, -1).t()]
    out: dict[str, Any] = {"face": face, "num_groups": K}
    if amodal and K > 1:
        faces_alone = []
        for k in range(K):
            tri_k = tri[int(face_offsets[k]):int(face_offsets[k + 1])].contiguous()
            rast_k, _ = dr.rasterize(ctx, pos, tri_k, resolution=[H, W])
            hit_k = (rast_k[..., 3:4] > 0).float()
            planes.append(dr.antialias(hit_k.contiguous(), rast_k, pos, tri_k)[0]
                          .reshape(1, H * W))
            fk = rast_k[0, ..., 3].round().long().reshape(-1) - 1
            faces_alone.append(torch.where(fk >= 0, fk + face_offsets[k], -1))
        out["amodal_face"] = torch.stack(faces_alone)
    out["soft"] = torch.cat(planes, 0).to(verts.dtype)
    return out
