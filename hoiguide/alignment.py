"""Bring the foundation models' outputs into one image-aligned frame (docs/method.md section 1,
steps 4, 7 and 8) and assemble :class:`~hoiguide.types.Observations`.

The same code serves the real adapters and the simulated observers of :mod:`hoiguide.synth`:

1. partial point cloud: the monocular point map's pixels inside the union mask, valid, and
   away from depth edges. It defines the image-aligned frame (OpenCV camera frame, metres).
2. target maps: normals and disparity of the point map's grid mesh at its pixels
   (:func:`hoiguide.geometry.point_map_targets`).
3. ICP a: coarse hand-object mesh (generator frame) -> partial point cloud gives
   ``gen_to_image``.
4. ICP b: hand mesh -> coarse mesh, composed with a, brings the hand into the image frame.
5. ICP c (ours; ``object_icp="object_sample"``, when the generator's object-alone sample is
   given): that sample -> the partial points under the object mask gives the OBJECT's
   ``gen_to_image`` (see :attr:`AlignmentOptions.object_icp` for why).

ICP a differs from the reference by default (``gen_icp="visibility"``). The partial cloud
is one view of the surface; the coarse mesh is all of it. Matching them as they are lets
partial points latch onto the hidden back side (the reference's direction, coarse ->
partial, even pulls the back onto the front and shrinks the mesh). We match the partial
cloud against only the coarse points that the camera would see under the current
transform (a point z-buffer in image cells), in both directions, alternating visibility
and ICP updates (symmetric trimmed correspondences, steps stretched while that lowers the
cost), keeping the lowest-cost result. Starts: the 24 rotations of the cube at two scales (a
generator's canonical frame can be any rotation away from the camera's), each with the
coarse centroid placed BEHIND the partial centroid along the viewing ray (the partial cloud
is the front surface; starting centred on it, every start on our development scenes fell
into a shrunken wrong fit).

Measured on 6 development scenes with the default simulated-observer noise (noisy coarse
geometry, masks and depth): gen -> image within 2.7-6.8 degrees, 1-3 % scale and 1-5 mm,
5-11 s per image on this CPU with 10 iterations per start (now 20: a 96 px test scene needed them; about 1.5x the time) (``simulate_observations`` on the first 6 scenes of
``hoiguide synth --n 30 --seed 0 --objects pybullet:0-699+procedural:all``). The reference's ICP a ended 30-177 degrees off on the
same kind of input, and the visibility-aware ICP without the behind-the-front start failed
on 4 of 6.
``AlignmentOptions.reference()`` restores the reference's ICP a.

ICP b, by default, registers the hand mesh to the partial points under the hand mask
(``hand_target="partial"``, correspondences from the points to the hand surface) instead of
to the coarse hand-object mesh: the coarse mesh is "poor as geometry" while the partial
cloud is the image frame itself. ``hand_target="coarse"`` is the reference's ICP b, with
the start described next.

One more change, in ICP b with the coarse target: the reference starts ICP b by matching
centroids and bounding-box diagonals of the hand and of the WHOLE hand-object mesh, so the
start scale is that of hand+object. The hand model's own camera placement (HaMeR's
``pred_cam_t``) already puts the hand roughly in the camera frame; we start ICP b from that
placement mapped into the generator frame by the inverse of ICP a (``init_hand="camera"``,
the default). ``init_hand="reference"`` restores the reference's start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hoiguide.geometry import (
    depth_edges,
    fit_similarity,
    icp,
    initial_similarity,
    point_map_targets,
    sample_surface,
)
from hoiguide.types import Camera, Mesh, Observations, Similarity

log = logging.getLogger(__name__)

__all__ = ["AlignmentOptions", "partial_points", "visible_points", "align_frames",
           "place_object", "build_observations"]


@dataclass
class AlignmentOptions:
    """Options of the two ICPs and of the partial point cloud.

    Attributes:
        edge_rtol: relative depth jump that marks a depth edge.
        edge_dilate: pixels removed around depth edges.
        max_points: partial points kept (random subset, seeded) for ICP.
        trim, scale_range, iterations: ICP settings (reference: 0.2, (0.7, 3.0), (50, 100)).
        init_hand: ``"camera"`` (start ICP b from the hand model's camera placement) or
            ``"reference"`` (centroids and diagonals, as the reference).
        hand_icp_points: surface samples of the coarse mesh used by both ICPs.
        hand_target: ``"partial"`` (ICP b against the partial points under the hand mask)
            or ``"coarse"`` (the reference: against the coarse hand-object mesh).
        gen_icp: ICP a: ``"visibility"`` (see the module docstring; needs the camera),
            ``"partial_to_coarse"`` (plain ICP with correspondences from the partial points,
            same starts) or ``"reference"`` (coarse -> partial from centroids and diagonals).
        start_scales: scale multipliers tried at each of the 24 starting rotations.
        start_depth_offset: starts put the coarse centroid this fraction of the partial
            cloud's diagonal (times the scale multiplier) behind the partial centroid, along
            the viewing ray (the partial cloud is the object's front).
        visibility_rounds: ICP iterations (visibility recomputed at each) from every start,
            then from the best three.
        visibility_cell_px: smallest z-buffer cell in pixels (cells grow so each holds
            about four front points of the coarse cloud).
        start_points, refine_points: point subsets (each cloud) of the start and refine
            stages.
        object_icp: placement of the OBJECT in the image frame. ``"object_sample"`` (ours,
            used when :func:`build_observations` gets ``coarse_object``): a third ICP (c)
            registers the generator's unguided sample of the object alone (conditioned on the
            object image, as guidance will be) to the partial points under the object mask,
            with the same visibility-aware multistart ICP as ICP a, the hand's pixels
            counted as occluders; its result is ``gen_to_image``. ``"none"`` (the reference):
            the object takes the hand-object mesh's transform of ICP a. A generator
            normalises every shape to its box, so the hand-object sample and the object-alone
            sample have different scales: with ICP a's transform the object comes out 1.4-3.2x
            too large on our first 8 development scenes, and 0.65-2.0x (6 of 8 within 10 %) with
            ICP c (``benchmarks/tuning/README.md``).
        object_min_points: fewer partial object points than this -> ICP c is skipped (logged)
            and ICP a's transform is kept.
    """

    edge_rtol: float = 0.04
    edge_dilate: int = 1
    max_points: int = 20000
    trim: float = 0.2
    scale_range: tuple[float, float] = (0.7, 3.0)
    iterations: tuple[int, int] = (50, 100)
    init_hand: str = "camera"
    hand_icp_points: int = 10000
    hand_target: str = "partial"
    gen_icp: str = "visibility"
    start_scales: tuple[float, ...] = (1.0, 1.4)
    start_depth_offset: float = 0.35
    visibility_rounds: tuple[int, int] = (20, 80)
    visibility_cell_px: float = 2.0
    start_points: int = 2000
    refine_points: int = 6000
    object_icp: str = "object_sample"
    object_min_points: int = 50

    @classmethod
    def reference(cls) -> "AlignmentOptions":
        """The reference implementation's alignment (see the module docstring)."""
        return cls(init_hand="reference", hand_target="coarse", gen_icp="reference",
                   object_icp="none")


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def partial_points(point_map, valid, mask_union, *, edge_rtol: float = 0.04,
                   edge_dilate: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The partial point cloud: point-map pixels inside ``mask_union``, valid, not at depth
    edges. Returns ``(points (N, 3) float64, keep (H, W) bool)`` (camera frame, metres)."""

    P = _np(point_map).astype(np.float64)
    ok = _np(valid).astype(bool) & _np(mask_union).astype(bool)
    ok &= np.isfinite(P).all(-1) & (np.nan_to_num(P[..., 2]) > 0)
    edges = depth_edges(np.where(ok, P[..., 2], 0.0), ok, rtol=edge_rtol, dilate=edge_dilate)
    keep = ok & ~edges
    return P[keep], keep


def align_frames(coarse_hoi: Mesh | np.ndarray, partial: np.ndarray, hand_mesh: Mesh, *,
                 camera: Camera | None = None, partial_hand: np.ndarray | None = None,
                 options: AlignmentOptions | None = None, seed: int = 0
                 ) -> tuple[Similarity, Similarity, dict[str, Any]]:
    """The two ICPs. Returns ``(gen_to_image, hand_to_image, info)``.

    Args:
        coarse_hoi: coarse hand-object geometry in the generator frame (mesh or points).
        partial: ``(N, 3)`` partial point cloud, image frame (metres).
        hand_mesh: the hand model's mesh in ITS camera frame (metres).
        camera: the crop camera (needed by the visibility-aware ICP a).
        partial_hand: the partial points under the hand mask (image frame); needed when
            ``options.hand_target == "partial"``.
        options: :class:`AlignmentOptions`.
    Returns:
        ``gen_to_image`` (generator -> image), ``hand_to_image`` (hand model camera frame ->
        image frame) and ``info`` (ICP costs and iteration counts).
    """

    o = options or AlignmentOptions()
    if len(partial) < 10:
        raise ValueError(f"align_frames: only {len(partial)} partial points; the masks and "
                         "the monocular geometry do not overlap")
    rng = np.random.default_rng(seed)
    if len(partial) > o.max_points:
        partial = partial[rng.choice(len(partial), o.max_points, replace=False)]
    if isinstance(coarse_hoi, Mesh):
        coarse_hoi.require_nonempty("align_frames: coarse_hoi")
        coarse_pts = sample_surface(coarse_hoi, o.hand_icp_points, seed=seed)
    else:
        coarse_pts = _np(coarse_hoi)
    coarse_pts = np.asarray(coarse_pts, np.float64)
    if coarse_pts.ndim != 2 or coarse_pts.shape[1] != 3 or len(coarse_pts) < 10:
        raise ValueError(f"align_frames: expected coarse_hoi as a mesh or (N >= 10, 3) points, "
                         f"got {coarse_pts.shape}")
    if o.gen_icp == "reference":
        g2i, info_a = icp(coarse_pts, partial, trim=o.trim, scale_range=o.scale_range,
                          iterations=o.iterations, correspondences="source_to_target",
                          seed=seed, return_info=True)
        info_a = _info_dict(info_a)
    elif o.gen_icp in ("visibility", "partial_to_coarse"):
        if o.gen_icp == "visibility" and camera is None:
            raise ValueError("align_frames: gen_icp='visibility' needs the camera")
        g2i, info_a = _multistart_icp(coarse_pts, partial, camera, o, seed)
    else:
        raise ValueError(f"AlignmentOptions.gen_icp: expected 'visibility', "
                         f"'partial_to_coarse' or 'reference', got {o.gen_icp!r}")
    hand_pts = hand_mesh.detach().to(dtype=torch.float64)
    if o.hand_target == "partial":
        if partial_hand is None or len(partial_hand) < 10:
            raise ValueError("align_frames: hand_target='partial' needs at least 10 partial "
                             f"points under the hand mask, got "
                             f"{0 if partial_hand is None else len(partial_hand)}")
        hand_to_image, info_b = icp(hand_pts, np.asarray(partial_hand, np.float64),
                                    trim=o.trim, scale_range=o.scale_range,
                                    iterations=o.iterations, correspondences="target_to_source",
                                    init=Similarity.identity(dtype=torch.float64),
                                    seed=seed, return_info=True)
        info = {"icp_gen_to_image": info_a, "icp_hand_to_image": _info_dict(info_b),
                "num_partial_points": int(len(partial))}
        log.info("alignment: gen->image scale %.4g (cost %.3g), hand scale %.4g (cost %.3g)",
                 float(g2i.scale), info["icp_gen_to_image"]["cost"],
                 float(hand_to_image.scale), info["icp_hand_to_image"]["cost"])
        return g2i, hand_to_image, info
    if o.hand_target != "coarse":
        raise ValueError(f"AlignmentOptions.hand_target: expected 'partial' or 'coarse', got "
                         f"{o.hand_target!r}")
    if o.init_hand == "camera":
        init = g2i.inverse()
    elif o.init_hand == "reference":
        init = initial_similarity(hand_pts, coarse_pts)
    else:
        raise ValueError(f"AlignmentOptions.init_hand: expected 'camera' or 'reference', got "
                         f"{o.init_hand!r}")
    h2g, info_b = icp(hand_pts, coarse_pts, init=init, trim=o.trim,
                      scale_range=o.scale_range, iterations=o.iterations,
                      correspondences="source_to_target", seed=seed, return_info=True)
    hand_to_image = g2i.compose(h2g)
    info = {"icp_gen_to_image": info_a, "icp_hand_to_gen": _info_dict(info_b),
            "num_partial_points": int(len(partial))}
    log.info("alignment: gen->image scale %.4g (cost %.3g), hand scale %.4g (cost %.3g)",
             float(g2i.scale), info["icp_gen_to_image"]["cost"], float(hand_to_image.scale),
             info["icp_hand_to_gen"]["cost"])
    return g2i, hand_to_image, info


def visible_points(points: np.ndarray, camera: Camera, *, cell_px: float = 2.0,
                   rtol: float = 0.01, erode: int = 0) -> np.ndarray:
    """Which points (camera frame, metres) the camera sees: a point z-buffer.

    Points are binned into ``cell_px`` image cells; a point is visible when it is in front of
    the camera, inside the image (with a one-cell margin) and within ``rtol`` (relative) of
    the nearest depth in its cell; with ``erode`` the outermost ``erode`` rings of occupied
    cells are dropped. Returns an ``(N,)`` bool mask.
    """
    q = np.asarray(points, np.float64)
    z = q[:, 2]
    ok = z > 1e-9
    zs = np.where(ok, z, 1.0)
    u = (camera.fx * q[:, 0] / zs + camera.cx) / cell_px
    v = (camera.fy * q[:, 1] / zs + camera.cy) / cell_px
    W = int(math.ceil(camera.width / cell_px)) + 2
    H = int(math.ceil(camera.height / cell_px)) + 2
    ok &= (u > -1) & (v > -1) & (u < W - 1) & (v < H - 1)
    key = np.where(ok, (np.floor(v).astype(np.int64) + 1) * (W + 1)
                   + np.floor(u).astype(np.int64) + 1, -1)
    zz = np.where(ok, z, np.inf)
    zmin = np.full((H + 2) * (W + 1), np.inf)
    np.minimum.at(zmin, key[ok], zz[ok])
    vis = ok & (zz <= zmin[np.maximum(key, 0)] * (1 + rtol))
    if erode > 0:
        # drop the outline: a depth map loses its silhouette pixels to depth-edge removal,
        # so outline points would have no partner in the partial cloud
        from scipy.ndimage import binary_erosion

        occupied = np.isfinite(zmin).reshape(H + 2, W + 1)
        inner = binary_erosion(occupied, iterations=int(erode)).reshape(-1)
        vis &= inner[np.maximum(key, 0)]
    return vis


def _projects_into(points: np.ndarray, camera: Camera, mask: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the point (camera frame) projects into a True pixel of ``mask``."""
    q = np.asarray(points, np.float64)
    z = np.maximum(q[:, 2], 1e-9)
    u = np.floor(camera.fx * q[:, 0] / z + camera.cx).astype(np.int64)
    v = np.floor(camera.fy * q[:, 1] / z + camera.cy).astype(np.int64)
    H, W = mask.shape
    inside = (q[:, 2] > 1e-9) & (u >= 0) & (v >= 0) & (u < W) & (v < H)
    out = np.zeros(len(q), bool)
    out[inside] = mask[v[inside], u[inside]]
    return out


def place_object(coarse_object: Mesh | np.ndarray, partial_object: np.ndarray,
                 camera: Camera, *, occluder: np.ndarray | None = None,
                 options: AlignmentOptions | None = None, seed: int = 0
                 ) -> tuple[Similarity, dict[str, Any]]:
    """ICP c: the generator's object-alone sample (generator frame) -> the partial points
    under the object mask (image frame, metres). Returns ``(gen_to_image, info)``.

    Same visibility-aware multistart ICP as ICP a (24 rotations x ``start_scales``, starting
    from centroids and diagonals), with the pixels of ``occluder`` (the hand mask) treated as
    hiding the object. See :attr:`AlignmentOptions.object_icp`.
    """

    o = options or AlignmentOptions()
    if isinstance(coarse_object, Mesh):
        coarse_object.require_nonempty("place_object: coarse_object")
        pts = sample_surface(coarse_object.to(dtype=torch.float64), o.hand_icp_points,
                             seed=seed)
    else:
        pts = _np(coarse_object)
    pts = np.asarray(pts, np.float64)
    partial_object = np.asarray(partial_object, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 10:
        raise ValueError(f"place_object: expected coarse_object as a mesh or (N >= 10, 3) "
                         f"points, got {pts.shape}")
    if len(partial_object) < 10:
        raise ValueError(f"place_object: only {len(partial_object)} partial object points")
    rng = np.random.default_rng(seed)
    if len(partial_object) > o.max_points:
        partial_object = partial_object[rng.choice(len(partial_object), o.max_points,
                                                   replace=False)]
    T, info = _multistart_icp(pts, partial_object, camera,
                              dataclasses.replace(o, gen_icp="visibility"), seed,
                              occluder=None if occluder is None else np.asarray(occluder, bool))
    info["num_partial_object_points"] = int(len(partial_object))
    return T, info


def _extrapolate(T0: Similarity, T1: Similarity, k: float) -> Similarity:
    """The similarity ``k`` times as far from ``T0`` as ``T1`` (log-scale, rotation vector
    and translation of the relative step ``T1 T0^-1`` scaled by ``k``)."""
    from scipy.spatial.transform import Rotation

    D = T1.compose(T0.inverse())
    s = float(D.scale) ** k
    rv = Rotation.from_matrix(D.rotation.numpy()).as_rotvec() * k
    R = torch.as_tensor(Rotation.from_rotvec(rv).as_matrix())
    step = Similarity(torch.tensor(s, dtype=torch.float64), R,
                      D.translation.to(torch.float64) * k)
    return step.compose(T0)


def _cell_size(q: np.ndarray, camera: Camera, minimum: float) -> float:
    """z-buffer cell (pixels) holding about 4 front points of the cloud ``q`` (camera frame):
    with fewer, a cell without a front point lets a back-side point through."""
    z = np.maximum(q[:, 2], 1e-9)
    u = camera.fx * q[:, 0] / z
    v = camera.fy * q[:, 1] / z
    area = max(float(np.ptp(u) * np.ptp(v)), 1.0) * 0.6   # the silhouette fills ~60 % of the box
    front = 0.5 * len(q)
    return max(float(minimum), math.sqrt(4.0 * area / max(front, 1.0)))


def _multistart_icp(coarse: np.ndarray, partial: np.ndarray, camera: Camera | None,
                    o: AlignmentOptions, seed: int, starts: list[Similarity] | None = None,
                    occluder: np.ndarray | None = None) -> tuple[Similarity, dict[str, Any]]:
    """ICP a (and c) from 24 rotations x ``o.start_scales`` (or the given ``starts``): short
    runs, the best three refined. ``occluder``: ``(H, W)`` bool image of pixels where
    something else (the hand) hides the coarse shape: coarse points projecting there are
    not expected in the partial cloud."""
    from scipy.spatial.transform import Rotation


    visibility = o.gen_icp == "visibility"
    rng = np.random.default_rng(seed)

    def subset(x: np.ndarray, n: int) -> np.ndarray:
        return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]

    coarse_all, partial_all = coarse, partial
    # the many short starts run on subsets; the best three are refined on more points
    coarse, partial = subset(coarse_all, o.start_points), subset(partial_all, o.start_points)

    from scipy.spatial import cKDTree


    trees = {}

    def tree_of(x: np.ndarray):
        if id(x) not in trees:
            trees[id(x)] = cKDTree(x)
        return trees[id(x)]

    def keep_best(d: np.ndarray) -> np.ndarray:
        n = max(3, int(round(len(d) * (1.0 - o.trim))))
        return np.argsort(d)[:n]

    def symmetric(T: Similarity) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """Trimmed two-way cost against the visible coarse points and the pairs."""
        q = np.asarray(T.apply(coarse))
        m = visible_points(q, camera, cell_px=_cell_size(q, camera, o.visibility_cell_px),
                           erode=1)
        if occluder is not None:
            m &= ~_projects_into(q, camera, occluder)
        if m.sum() < 10:
            return math.inf, None, None
        cv, qv = coarse[m], q[m]
        d1, i1 = tree_of(partial).query(qv)
        d2, i2 = cKDTree(qv).query(partial)
        k1, k2 = keep_best(d1), keep_best(d2)
        cost = 0.5 * (float(np.mean(d1[k1] ** 2)) + float(np.mean(d2[k2] ** 2)))
        src = np.concatenate([cv[k1], cv[i2[k2]]])
        tgt = np.concatenate([partial[i1[k1]], partial[k2]])
        return cost, src, tgt

    def run(start: Similarity, iterations: int) -> tuple[float, Similarity]:
        if not visibility:
            T, info = icp(coarse, partial, init=start, trim=o.trim, scale_range=o.scale_range,
                          iterations=(0, iterations), correspondences="target_to_source",
                          seed=seed, return_info=True)
            return float(info.cost), T
        # symmetric ICP against the visible coarse points, visibility updated every step;
        # a step that creeps (scale on a one-view cloud does) is stretched while that helps
        T = start
        cost, src, tgt = symmetric(T)
        best = (cost, T)
        stretch = 4.0
        for _ in range(iterations):
            if src is None:
                break
            T_new = fit_similarity(src, tgt)
            c_new, s_new, t_new = symmetric(T_new)
            T_far = _extrapolate(T, T_new, stretch)
            c_far, s_far, t_far = symmetric(T_far)
            if c_far < c_new:
                T, cost, src, tgt = T_far, c_far, s_far, t_far
                stretch = min(stretch * 2.0, 32.0)
            else:
                T, cost, src, tgt = T_new, c_new, s_new, t_new
                stretch = max(stretch / 2.0, 2.0)
            if cost < best[0]:
                best = (cost, T)
        return best

    base = initial_similarity(coarse, partial)
    c = torch.as_tensor(coarse.mean(0))
    zero = torch.zeros(3, dtype=torch.float64)
    if starts is None:
        # the partial cloud is the FRONT of the object: start with the coarse centroid behind
        # it, along the viewing ray, by start_depth_offset x the (scaled) size
        diag = float(np.linalg.norm(np.ptp(coarse, 0))) * float(base.scale)
        ray = torch.as_tensor(partial.mean(0))
        ray = ray / ray.norm().clamp_min(1e-12)
        starts = []
        for R in Rotation.create_group("O").as_matrix():
            for k in o.start_scales:
                st = base.compose(Similarity.about(c, float(k), torch.as_tensor(R), zero))
                starts.append(Similarity(st.scale, st.rotation, st.translation
                                         + ray * (o.start_depth_offset * diag * float(k))))
    found = [run(start, o.visibility_rounds[0]) for start in starts]
    found.sort(key=lambda x: x[0])
    coarse = subset(coarse_all, o.refine_points)
    partial = subset(partial_all, o.refine_points)
    refined = sorted((run(T, o.visibility_rounds[1]) for _, T in found[:3]), key=lambda x: x[0])
    cost, T = refined[0]
    info = {"cost": cost, "mode": o.gen_icp, "starts": len(found),
            "runner_up_cost": refined[1][0] if len(refined) > 1 else None}
    return T, info


def _info_dict(info: Any) -> dict[str, Any]:
    return {"cost": float(info.cost), "iterations": [int(i) for i in info.iterations],
            "converged": [bool(c) for c in info.converged], "clamped": bool(info.clamped),
            "backend": str(info.backend)}


def build_observations(*, camera: Camera, image: np.ndarray, mask_hand, mask_object,
                       object_image: np.ndarray, point_map, point_valid,
                       hand_mesh: Mesh, coarse_hoi: Mesh | np.ndarray,
                       hand_keypoints_3d=None, keypoints_2d=None, keypoint_confidence=None,
                       mask_object_amodal=None, options: AlignmentOptions | None = None,
                       seed: int = 0, metadata: dict[str, Any] | None = None,
                       coarse_object: Mesh | np.ndarray | None = None) -> Observations:
    """Assemble :class:`~hoiguide.types.Observations` from the models' outputs.

    Args:
        camera: intrinsics of the crop (pixels).
        image: ``(H, W, 3)`` uint8 crop.
        mask_hand, mask_object: ``(H, W)`` bool visible masks.
        object_image: the generator's condition (hand removed), uint8 RGB(A).
        point_map, point_valid: ``(H, W, 3)`` monocular points (camera frame, metres) and
            their validity.
        hand_mesh: hand mesh in the hand model's camera frame (metres); its 3D keypoints
            ``hand_keypoints_3d`` (21, 3) in the same frame are carried along.
        coarse_hoi: coarse hand-object geometry in the generator frame.
        keypoints_2d, keypoint_confidence: detected 2D hand keypoints (pixels) and scores.
        mask_object_amodal: optional full object extent (from the inpainted image).
        options: :class:`AlignmentOptions`.
        seed: seeds the point subsampling and ICP sampling.
        metadata: merged into ``Observations.metadata`` (alignment info is added).
        coarse_object: the generator's unguided sample of the object alone (on
            ``object_image``), generator frame; with ``options.object_icp ==
            "object_sample"`` ICP c places it (:func:`place_object`) and its transform is
            ``gen_to_image`` (ICP a's is kept in ``metadata["gen_to_image_hoi"]``).
    """

    o = options or AlignmentOptions()
    mh = _np(mask_hand).astype(bool)
    mo = _np(mask_object).astype(bool)
    union = mh | mo
    P = _np(point_map).astype(np.float64)
    pts, keep = partial_points(P, point_valid, union, edge_rtol=o.edge_rtol,
                               edge_dilate=o.edge_dilate)
    hand_pts = P[keep & mh]
    g2i, h2i, info = align_frames(coarse_hoi, pts, hand_mesh, camera=camera,
                                  partial_hand=hand_pts, options=o, seed=seed)
    meta = dict(metadata or {})
    if o.object_icp not in ("object_sample", "none"):
        raise ValueError(f"AlignmentOptions.object_icp: expected 'object_sample' or 'none', "
                         f"got {o.object_icp!r}")
    if coarse_object is not None and o.object_icp == "object_sample":
        obj_pts = P[keep & mo]
        if len(obj_pts) < o.object_min_points:
            log.warning("alignment: only %d partial object points (< %d): ICP c skipped, the "
                        "object keeps the hand-object transform", len(obj_pts),
                        o.object_min_points)
            info["icp_object_to_image"] = {"skipped": f"{len(obj_pts)} partial object points"}
        else:
            meta["gen_to_image_hoi"] = g2i.to_dict()
            g2i, info_c = place_object(coarse_object, obj_pts, camera, occluder=mh, options=o,
                                       seed=seed)
            info["icp_object_to_image"] = info_c
            log.info("alignment: object placed by ICP c: scale %.4g (hand-object ICP a: %.4g), "
                     "cost %.3g", float(g2i.scale), meta["gen_to_image_hoi"]["scale"],
                     info_c["cost"])
    normals, disparity, tvalid = point_map_targets(np.where(keep[..., None], P, np.nan), keep,
                                                   rtol=o.edge_rtol)
    hand_img = hand_mesh.detach().transformed(h2i).to(dtype=torch.float32)
    kp3 = None
    if hand_keypoints_3d is not None:
        kp3 = h2i.apply(torch.as_tensor(_np(hand_keypoints_3d), dtype=torch.float64)).float()
    meta["alignment"] = info
    meta["hand_to_image"] = h2i.to_dict()
    return Observations(
        camera=camera, object_image=np.asarray(object_image), mask_hand=torch.as_tensor(mh),
        mask_object=torch.as_tensor(mo),
        mask_object_amodal=(None if mask_object_amodal is None
                            else torch.as_tensor(_np(mask_object_amodal).astype(bool))),
        image=np.asarray(image), target_normals=normals, target_disparity=disparity,
        target_valid=tvalid, partial_points=torch.as_tensor(pts, dtype=torch.float32),
        hand_mesh=hand_img, hand_keypoints_3d=kp3,
        keypoints_2d=None if keypoints_2d is None else torch.as_tensor(
            _np(keypoints_2d), dtype=torch.float32),
        keypoint_confidence=None if keypoint_confidence is None else torch.as_tensor(
            _np(keypoint_confidence), dtype=torch.float32),
        gen_to_image=g2i, metadata=meta)
