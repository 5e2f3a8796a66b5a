"""Temporal terms of multi-frame (video) guidance: pure functions on per-frame point sets.

* :func:`trajectory_smoothness`: mean squared second difference (acceleration) of points
  tracked over frames (EgoHOI-style temporal smoothness), only over triples of consecutive
  valid frames. Used on the object's pose (a few points of the generator box placed per
  frame) and on the hand's vertices.
* :func:`contact_consistency`: hand vertices in contact keep their position relative to the
  object while the grasp holds, counted only where the hand is visible (MagicHOI-style).

Both are plain differentiable functions (float32 / float64), in metres^2. They are not
registered loss terms (a :class:`~hoiguide.losses.LossContext` holds one frame); the clip
sampler (:mod:`hoiguide.guidance.clip`) weights them with the schedule's ``clip:`` keys.
"""

from __future__ import annotations

from typing import Optional

import torch

from hoiguide.losses.image import shape_text

__all__ = ["trajectory_smoothness", "contact_consistency"]


def _points(x: torch.Tensor, name: str, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != 3 or \
            not x.is_floating_point():
        raise ValueError(f"{what}: expected {name} as a floating (T, N, 3) tensor, got "
                         f"{shape_text(x)}")
    return x


def _frame_mask(m: Optional[torch.Tensor], T: int, name: str, what: str,
                device: torch.device) -> torch.Tensor:
    if m is None:
        return torch.ones(T, dtype=torch.bool, device=device)
    m = torch.as_tensor(m, device=device)
    if m.dtype != torch.bool or tuple(m.shape) != (T,):
        raise ValueError(f"{what}: expected {name} as a ({T},) bool tensor, got "
                         f"{shape_text(m)}")
    return m


def trajectory_smoothness(points: torch.Tensor, valid: Optional[torch.Tensor] = None,
                          times: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared acceleration of points tracked over ``T`` frames.

    For every frame ``t`` with frames ``t-1, t, t+1`` all valid, the second difference
    ``a_t = p_{t+1} - 2 p_t + p_{t-1}`` of each point (metres per frame^2); the result is
    ``mean_{t, i} |a_t,i|^2`` over those triples and the ``N`` points, in metres^2.

    With ``times`` (seconds, strictly increasing) the non-uniform second difference is used
    and normalised by the clip's mean frame interval ``h``:
    ``a_t = h^2 * 2 / (h1 + h2) * ((p_{t+1} - p_t) / h2 - (p_t - p_{t-1}) / h1)`` with
    ``h1 = t_t - t_{t-1}``, ``h2 = t_{t+1} - t_t``; for evenly spaced frames this is the
    plain second difference, so the value stays in metres^2 (per mean frame^2) and a gap of
    dropped frames is measured at its true spacing.

    Args:
        points: ``(T, N, 3)`` the same ``N`` points in each frame (e.g. object vertices or
            keypoints placed per frame, or hand vertices), metres, any one frame of
            reference (a static camera's).
        valid: optional ``(T,)`` bool: frames whose points count (a triple needs all three).
        times: optional ``(T,)`` frame times in seconds.

    Returns:
        Scalar (metres^2); 0 (no gradient) when no triple of consecutive valid frames exists.
    """
    what = "trajectory_smoothness"
    p = _points(points, "points", what)
    T = p.shape[0]
    ok = _frame_mask(valid, T, "valid", what, p.device)
    if T < 3:
        return p.new_zeros(())
    triple = ok[:-2] & ok[1:-1] & ok[2:]
    if not bool(triple.any()):
        return p.new_zeros(())
    d = p[1:] - p[:-1]                                     # (T-1, N, 3)
    if times is None:
        acc = d[1:] - d[:-1]                               # (T-2, N, 3)
    else:
        tt = torch.as_tensor(times, device=p.device).to(p.dtype)
        if tuple(tt.shape) != (T,) or not bool(torch.isfinite(tt).all()) or \
                not bool((tt[1:] > tt[:-1]).all()):
            raise ValueError(f"{what}: expected times as ({T},) finite, strictly increasing "
                             f"seconds, got {shape_text(times)}")
        h = tt[1:] - tt[:-1]                               # (T-1,)
        vel = d / h[:, None, None]
        h_mean = h.mean()
        acc = (vel[1:] - vel[:-1]) * (2.0 / (h[:-1] + h[1:]))[:, None, None] * h_mean ** 2
    return acc[triple].pow(2).sum(-1).mean()


def contact_consistency(hand_in_object: torch.Tensor, contact: torch.Tensor,
                        visible: Optional[torch.Tensor] = None,
                        reference: Optional[int] = None) -> torch.Tensor:
    """How far contact vertices of the hand move on the object while the grasp holds.

    Each contact vertex ``i`` is compared, in every frame ``t`` where it counts (in
    contact and visible), with its anchor: by default its MEAN position over the frames
    where it counts (every frame pulls towards the common position, so no single frame is
    trusted more than the others); with ``reference=r`` its position in frame ``r`` (that
    frame's positions are the anchor and are not moved by this term). The result is the
    mean squared deviation over the counted (frame, vertex) pairs, metres^2.

    Args:
        hand_in_object: ``(T, Nh, 3)`` hand vertices expressed in the OBJECT's frame in each
            frame (e.g. ``R_t^T (h_t - tau_t)`` for an object placed by ``x -> s R_t x +
            tau_t``), metres.
        contact: ``(Nh,)`` bool (the same contact set in every frame) or ``(T, Nh)`` bool.
        visible: optional ``(T, Nh)`` bool: where the hand vertex was seen (only those
            count, as contact under an occluded hand cannot be checked).
        reference: optional frame index: anchor at that frame's positions instead of the
            mean (vertices not counted in that frame are then not counted at all).

    Returns:
        Scalar (metres^2); 0 (no gradient) when fewer than two frames count for every
        vertex.
    """
    what = "contact_consistency"
    p = _points(hand_in_object, "hand_in_object", what)
    T, Nh = p.shape[:2]
    c = torch.as_tensor(contact, device=p.device)
    if c.dtype != torch.bool or tuple(c.shape) not in ((Nh,), (T, Nh)):
        raise ValueError(f"{what}: expected contact as a ({Nh},) or ({T}, {Nh}) bool tensor, "
                         f"got {shape_text(contact)}")
    w = c.expand(T, Nh) if c.ndim == 1 else c
    if visible is not None:
        vis = torch.as_tensor(visible, device=p.device)
        if vis.dtype != torch.bool or tuple(vis.shape) != (T, Nh):
            raise ValueError(f"{what}: expected visible as a ({T}, {Nh}) bool tensor, got "
                             f"{shape_text(visible)}")
        w = w & vis
    if reference is not None:
        if isinstance(reference, bool) or not -T <= int(reference) < T:
            raise ValueError(f"{what}: expected reference as a frame index in [0, {T - 1}], "
                             f"got {reference!r}")
        r = int(reference) % T
        anchor = p[r].detach()[None]
        w = w & w[r][None]
        w = w.clone()
        w[r] = False
    else:
        wf = w.to(p.dtype)[..., None]
        count = wf.sum(0)
        anchor = ((p * wf).sum(0) / count.clamp_min(1.0))[None]
        w = w & (count[..., 0] >= 2)[None]
    if not bool(w.any()):
        return p.new_zeros(())
    dev = (p - anchor).pow(2).sum(-1)
    return dev[w].mean()
