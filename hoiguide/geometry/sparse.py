"""Narrow-band, coarse-to-fine decoding of a signed field for the differentiable iso-surface.

A dense ``R^3`` decode spends almost all of its queries far from the surface, where only the
sign matters. :func:`sparse_grid` decodes a coarse grid, keeps the cells whose values straddle
or approach the iso-level, refines only those (halving the spacing per level) and returns the
full-resolution grid that :func:`~hoiguide.geometry.extract_isosurface` takes unchanged:
decoded values in the band, a constant of the right sign elsewhere. Any query function works
(``query(points (N, 3)) -> (N,)``, negative inside); for a flow backbone, :func:`sdf_query`
makes one from ``backbone.decode_sdf`` (or the backbone's own ``sdf_query``, which runs the
latent-side work once).

Levels. The target resolution ``R`` must be ``(R_0 - 1) 2^L + 1`` for a coarse resolution
``R_0`` (:func:`plan_levels`): 33 = 8 * 4 + 1, 65 = 8 * 8 + 1, 385 = 12 * 32 + 1. Level ``l``
has ``R_l = (R_0 - 1) 2^l + 1`` points per axis and its points are the final grid's points
with indices divisible by ``2^(L - l)``, so decoded values are reused, never re-decoded.
A resolution with ``R - 1`` odd (or below 17) has no coarser level and is decoded densely.

Selection, per level ``l < L`` (spacing ``h_l``, values ``f`` relative to ``level``): a cell
is a *candidate* when all 8 corners are decoded (every cell at level 0). A candidate cell is

* *straddling* when its corners are not all on one side (``f < 0`` is inside);
* *near* when a corner has ``|f| < tau_l``, ``tau_l = min(band h_l s, 0.9 S)``: ``s`` is the
  field's largest slope seen so far (per cell, the norm of the trilinear interpolant's mean
  gradient, i.e. the mean of the 4 edge differences along each axis over the spacing; the
  maximum over the level's candidate cells, running maximum over levels), so for a
  distance-like field ``|f| / s`` estimates the distance to the level set from below
  (``band`` is that distance in cells); ``S`` is the field's
  saturation level (90th percentile of ``|f|`` on the coarse grid), so for a truncated or
  logit-like field (Hunyuan3D-2's decoder saturates near +-1) "near" means "a corner is not
  saturated";
* *kept* when it is straddling or near, or within ``ceil(band)`` cells of a straddling cell.

``last_band`` replaces ``band`` at the last refinement (level ``L - 1``): ``0`` there roughly
halves the queries (the band of the finest refined level is the costly one) and keeps the
guarantee below for every piece of surface detected at a coarser level; it can only lose
isolated specks that touch no grid point of level ``L - 1`` (thinner than two final cells).

Kept cells are split into 8 children, which are the candidates of level ``l + 1``. Before a
level's selection, the candidate set *grows*: a straddling or near cell next to a cell that is
not a candidate makes that neighbour a candidate (its corners are decoded), until no such cell
is left, so a surface that leaves the band at a coarse level is followed rather than cut.

Final level ``L``: every point that was not decoded gets ``level -+ S_max`` (``S_max`` the
largest ``|f|`` on the coarse grid) with the sign of the corners of the coarsest cell that
was not kept around it (those corners are all on one side). Then any cell of the final grid
whose corners straddle the level but that has a corner not decoded is made a candidate and
decoded, repeated until none is left. So **every active cell of the returned grid has its 8
corners decoded**: the iso-surface consists of true crossings only, and every connected
piece of surface that was detected at some level is extracted completely, identical to the
dense grid's (the same cells, the same values, hence the same vertices and faces). Away from
the band nothing is active, so the dense grid and the sparse grid give the same mesh unless
a whole piece of surface was never detected.

What can be missed: a piece of surface (a separate small part, a thin sheet, a spike) that
lies inside coarse cells without reaching their corners -- no corner changes sign -- and that
no corner comes *near*. For a distance-like field with slope estimate ``s`` >= the true
Lipschitz constant, a surface point inside a cell of spacing ``h`` is within ``h sqrt(3) / 2``
of a corner, so ``band >= sqrt(3) / 2`` (default 1) keeps every cell that contains surface and
nothing is missed. ``band = 0`` keeps only straddling cells: a thin plate between two coarse
grid planes, or a blob smaller than a coarse cell, is then lost (the tests show one). For a
saturating field the guard is weaker: a part is seen only if some coarse point lies within the
field's saturation distance ``d_s`` of it (Hunyuan3D-2-style fields: ``|f| < 0.9 S``), so thin
parts need a coarse spacing below about ``2 d_s / sqrt(3)`` (``coarse_resolution``). A piece
that is detected anywhere is followed by the growth rules, however thin it is elsewhere.

Gradients flow only through decoded points. The coarse grid is queried in the caller's grad
mode only to learn whether the query is differentiable; its values are detached, and the
finer levels are decoded without gradient (they only decide where to look). When the query
is differentiable and gradients are enabled, the endpoints of the final grid's
sign-changing edges -- the only values the iso-surface's vertex positions depend on -- are
queried once more with gradient and written into the grid, so the mesh's gradient w.r.t. the
query's parameters equals the dense path's.

Frames and units: ``bounds`` and the query points are in the caller's frame and units (for a
backbone, its generator frame); the grid is laid out as
:func:`~hoiguide.geometry.grid_points` lays it out (index ``[x, y, z]``, ``'ij'``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hoiguide.geometry.isosurface import extract_isosurface, grid_points, parse_bounds
from hoiguide.types import ArrayLike, Mesh

__all__ = ["SparseGrid", "plan_levels", "sdf_query", "sparse_grid", "sparse_isosurface"]

log = logging.getLogger(__name__)

QueryFn = Callable[[torch.Tensor], torch.Tensor]

MIN_COARSE_CELLS = 8
"""Default coarse grid: the coarsest level with at least this many cells per axis."""

_SATURATION_QUANTILE = 0.9
_SATURATION_FRACTION = 0.9

# corner c = dx + 2 dy + 4 dz
_CORNERS = [(c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8)]
# corner pairs of the 4 edges along each axis
_AXIS_EDGES = [[(c, c | (1 << a)) for c in range(8) if not (c >> a) & 1] for a in range(3)]
_NEIGHBOURS = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
               if (i, j, k) != (0, 0, 0)]


def plan_levels(resolution: int, coarse_resolution: int | None = None) -> list[int]:
    """Points per axis of each level, coarse to fine, ending with ``resolution``.

    Args:
        resolution: target points per axis ``R`` (at least 2).
        coarse_resolution: ``R_0`` with ``R - 1 = (R_0 - 1) 2^L``; default: the coarsest such
            ``R_0`` with at least :data:`MIN_COARSE_CELLS` cells (``R`` itself when ``R - 1``
            is odd or already small).

    Returns:
        ``[R_0, R_1, ..., R]`` with ``R_{l+1} = 2 (R_l - 1) + 1``.

    Raises:
        ValueError: ``coarse_resolution`` does not divide the target as required (the message
            lists the valid ones).
    """
    r = int(resolution)
    if r < 2:
        raise ValueError(f"resolution: expected at least 2 points per axis, got {resolution}")
    valid = [r]
    while (valid[-1] - 1) % 2 == 0 and (valid[-1] - 1) // 2 >= 1:
        valid.append((valid[-1] - 1) // 2 + 1)
    if coarse_resolution is None:
        ok = [v for v in valid if v - 1 >= MIN_COARSE_CELLS]
        r0 = ok[-1] if ok else r
    else:
        r0 = int(coarse_resolution)
        if r0 not in valid:
            raise ValueError(f"coarse_resolution: {coarse_resolution} does not refine to "
                             f"resolution {r} by halving the spacing; valid: "
                             f"{sorted(valid)}")
    levels = [r0]
    while levels[-1] != r:
        levels.append(2 * (levels[-1] - 1) + 1)
    return levels


@dataclass
class SparseGrid:
    """What :func:`sparse_grid` returns.

    Attributes:
        values: ``(R, R, R)`` field on ``grid_points(bounds, R)``: decoded values where
            ``decoded``, elsewhere the constant ``level -+ fill`` of the right sign (no
            gradient). Differentiable w.r.t. the query's parameters at the endpoints of
            sign-changing edges when gradients were enabled.
        decoded: ``(R, R, R)`` bool, the points whose value was queried.
        queries: points queried in all (all levels, including the re-query with gradient).
        resolution: ``R``.
        bounds: ``(2, 3)`` float64 [min corner, max corner], the query's frame and units.
        levels: per level, a dict with ``resolution``, ``candidate_cells``, ``kept_cells``
            (``None`` at the final level), ``grown_cells`` (cells added by the growth rules)
            and ``queries``.
        fill: the magnitude of the constant outside the band (relative to the level).
    """

    values: torch.Tensor
    decoded: torch.Tensor
    queries: int
    resolution: int
    bounds: np.ndarray
    levels: list[dict[str, Any]] = field(default_factory=list)
    fill: float = 1.0

    @property
    def dense_queries(self) -> int:
        """Points a dense decode of the same grid queries (``R^3``)."""
        return self.resolution ** 3


class _Decoder:
    """Queries points by their final-grid indices; counts them."""

    def __init__(self, query: QueryFn, axes: list[torch.Tensor], chunk_size: int | None):
        self.query, self.axes, self.chunk = query, axes, chunk_size
        self.count = 0
        self.out_dtype: torch.dtype | None = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        pts = torch.stack([self.axes[a][idx[:, a]] for a in range(3)], -1)
        n = pts.shape[0]
        cs = n if self.chunk is None else max(1, int(self.chunk))
        outs = []
        for start in range(0, n, max(cs, 1)):
            p = pts[start:start + cs]
            v = self.query(p)
            if not isinstance(v, torch.Tensor) or v.numel() != p.shape[0]:
                raise ValueError(f"sparse_grid: query must return a tensor of {p.shape[0]} "
                                 f"values for points of shape {tuple(p.shape)}, got "
                                 f"{getattr(v, 'shape', type(v).__name__)}")
            v = v.reshape(-1).to(pts.device)
            if v.dtype in (torch.float16, torch.bfloat16):
                v = v.float()
            if not v.is_floating_point():
                raise ValueError(f"sparse_grid: query must return floating values, got "
                                 f"{v.dtype}")
            outs.append(v)
        self.count += n
        if not outs:
            dt = self.out_dtype or pts.dtype
            return torch.zeros(0, dtype=dt, device=pts.device)
        out = torch.cat(outs)
        self.out_dtype = out.dtype
        return out


def _lin(idx: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    return (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]


def _in_bounds(idx: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    ok = idx >= 0
    for a in range(3):
        ok[:, a] &= idx[:, a] < dims[a]
    return ok.all(1)


def _new_rows(idx: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
    """The distinct rows of ``idx`` (in-bounds ``(M, 3)`` indices into ``have``'s shape)
    where ``have`` is False, in lexicographic order (a dense scatter: cheaper than a sort)."""
    if idx.shape[0] == 0:
        return idx
    mark = torch.zeros_like(have)
    mark[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    mark &= ~have
    return mark.nonzero()


class _Level:
    """Dense state of one level: values (decoded or filled), decoded mask, candidate cells."""

    def __init__(self, R: int, stride: int, values: torch.Tensor, known: torch.Tensor,
                 spacing: np.ndarray):
        self.R, self.stride = R, stride
        self.values, self.known = values, known
        self.cand = torch.zeros((R - 1,) * 3, dtype=torch.bool, device=values.device)
        self.spacing = spacing
        dev = values.device
        self.corner_off = torch.tensor(_CORNERS, dtype=torch.long, device=dev)
        self.nb_off = torch.tensor(_NEIGHBOURS, dtype=torch.long, device=dev)
        self.grown = 0
        self.queries = 0

    @property
    def cells(self) -> tuple[int, int, int]:
        return (self.R - 1,) * 3  # type: ignore[return-value]

    @property
    def pts(self) -> tuple[int, int, int]:
        return (self.R,) * 3  # type: ignore[return-value]

    def corner_values(self, cells: torch.Tensor) -> torch.Tensor:
        corners = cells[:, None, :] + self.corner_off[None]
        return self.values.reshape(-1)[_lin(corners.reshape(-1, 3), self.pts)].reshape(-1, 8)

    def add_cells(self, cells: torch.Tensor, decode: _Decoder) -> torch.Tensor:
        """Make ``cells`` candidates (decoding their missing corners); returns the new ones."""
        if cells.shape[0] == 0:
            return cells
        cells = _new_rows(cells, self.cand)
        if cells.shape[0] == 0:
            return cells
        corners = _new_rows((cells[:, None, :] + self.corner_off[None]).reshape(-1, 3),
                            self.known)
        if corners.shape[0]:
            with torch.no_grad():
                vals = decode(corners * self.stride)
            self.queries += corners.shape[0]
            self.values[corners[:, 0], corners[:, 1], corners[:, 2]] = \
                vals.to(self.values.dtype)
            self.known[corners[:, 0], corners[:, 1], corners[:, 2]] = True
        self.cand[cells[:, 0], cells[:, 1], cells[:, 2]] = True
        return cells

    def neighbours(self, cells: torch.Tensor) -> torch.Tensor:
        nb = (cells[:, None, :] + self.nb_off[None]).reshape(-1, 3)
        return _new_rows(nb[_in_bounds(nb, self.cells)], self.cand)


def _classify(vals: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(straddle, near) per cell from ``(K, 8)`` values relative to the level."""
    inside = vals < 0
    straddle = inside.any(1) & ~inside.all(1)
    near = vals.abs().min(1).values < tau if tau > 0 else torch.zeros_like(straddle)
    return straddle, near


def _slope(vals: torch.Tensor, spacing: np.ndarray) -> float:
    """Largest per-cell gradient-norm estimate over ``(K, 8)`` corner values: per axis, the
    mean of the cell's 4 edge differences over the spacing (the trilinear interpolant's
    mean gradient, so a kink inside a cell, e.g. a sphere's centre, does not inflate it)."""
    if vals.shape[0] == 0:
        return 0.0
    comps = []
    for a in range(3):
        d = torch.stack([vals[:, j] - vals[:, i] for i, j in _AXIS_EDGES[a]], 1)
        comps.append(d.mean(1).abs() / float(spacing[a]))
    g = torch.stack(comps, 1).norm(dim=1)
    g = g[torch.isfinite(g)]
    return float(g.max()) if g.numel() else 0.0


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0 or not bool(mask.any()):
        return mask
    m = mask[None, None].to(torch.float32)
    out = torch.nn.functional.max_pool3d(m, 2 * r + 1, stride=1, padding=r)
    return out[0, 0] > 0


def _straddling_cells(values: torch.Tensor, level: float) -> torch.Tensor:
    """Dense ``(R-1)^3`` bool: cells whose 8 corners are not all on one side of ``level``."""
    inside = values < level
    any_in = inside[:-1] | inside[1:]
    all_in = inside[:-1] & inside[1:]
    del inside
    any_in = any_in[:, :-1] | any_in[:, 1:]
    all_in = all_in[:, :-1] & all_in[:, 1:]
    any_in = any_in[:, :, :-1] | any_in[:, :, 1:]
    all_in = all_in[:, :, :-1] & all_in[:, :, 1:]
    return any_in & ~all_in


def _check_band(value: Any, name: str) -> float:
    try:
        band = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number of cells >= 0, got {value!r}") from None
    if not math.isfinite(band) or band < 0:
        raise ValueError(f"{name}: expected a number of cells >= 0, got {band}")
    return band


def sparse_grid(query: QueryFn, bounds: float | ArrayLike, resolution: int, *,
                level: float = 0.0, band: float = 1.0, last_band: float | None = None,
                coarse_resolution: int | None = None, chunk_size: int | None = None,
                dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> SparseGrid:
    """Decode ``query`` on the narrow band of a ``resolution^3`` grid (module docstring).

    Args:
        query: ``points (N, 3) -> (N,)`` values, negative inside (``f < level``); points in
            the frame and units of ``bounds``, of ``dtype`` on ``device``. Differentiable
            w.r.t. whatever parameters it closes over (a latent). Called on the coarse grid
            in the caller's grad mode (to learn whether it is differentiable), on the finer
            levels without gradient and, if it is differentiable and gradients are enabled,
            once more with gradient on the endpoints of the sign-changing edges.
        bounds: a half-width ``b`` (the cube ``[-b, b]^3``) or ``(2, 3)`` [min, max] corners.
        resolution: target points per axis ``R`` (e.g. 33, 65, 385).
        level: the iso-level.
        band: safety margin in cells (>= 0): cells within ``ceil(band)`` cells of a
            straddling cell, or whose corner value is within ``band`` cells of the level by
            the slope estimate, are refined. ``0`` refines straddling cells only.
        last_band: the margin at the last refinement (default ``band``; see the module
            docstring for what ``0`` there costs and saves).
        coarse_resolution: points per axis of the coarsest level (see :func:`plan_levels`).
        chunk_size: points per ``query`` call (``None``: one call per batch of new points).
        dtype, device: of the query points.

    Returns:
        A :class:`SparseGrid`; ``values`` goes to
        :func:`~hoiguide.geometry.extract_isosurface` with the same ``bounds`` and ``level``.

    Raises:
        ValueError: bad ``band``, ``chunk_size``, ``resolution`` or ``coarse_resolution``, or a
            query returning the wrong number of values.
    """
    band = _check_band(band, "band")
    if last_band is not None:
        last_band = _check_band(last_band, "last_band")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer))
                                   or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected None or an integer >= 1 (points per query "
                         f"call), got {chunk_size!r}")
    level = float(level)
    if not math.isfinite(level):
        raise ValueError(f"level: expected a finite iso-level, got {level}")
    if not callable(query):
        raise TypeError(f"query: expected a callable points (N, 3) -> (N,), got "
                        f"{type(query).__name__}")
    b = parse_bounds(bounds)
    res = plan_levels(resolution, coarse_resolution)
    R = res[-1]
    L = len(res) - 1
    if L == 0:
        log.debug("sparse_grid: %d^3 has no coarser level; decoding it densely", R)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    # the final grid's axes exactly as grid_points computes them
    axes = [grid_points(b, tuple(R if d == a else 2 for d in range(3)), dtype=dtype,
                        device=dev)[..., a].movedim(a, 0)[:, 0, 0] for a in range(3)]
    decode = _Decoder(query, axes, chunk_size)
    span = b[1] - b[0]

    # ---- level 0: dense coarse grid -------------------------------------------------------
    R0, stride0 = res[0], 2 ** L
    r0 = torch.arange(R0, device=dev)
    coarse_idx = torch.stack(torch.meshgrid(r0, r0, r0, indexing="ij"), -1).reshape(-1, 3)
    # the coarse grid is queried in the caller's grad mode only to learn whether the query
    # is differentiable (then the sign-changing edges are re-queried with gradient)
    v0 = decode(coarse_idx * stride0)
    needs_grad = v0.requires_grad
    v0 = v0.detach()
    vdtype = v0.dtype
    values = v0.reshape(R0, R0, R0).to(vdtype)
    rel0 = (values - level).abs()
    finite = rel0[torch.isfinite(rel0)]
    fill = float(finite.max()) if finite.numel() else 1.0
    fill = fill if fill > 0 else 1.0
    sat = float(torch.quantile(finite.double().reshape(-1)[:1 << 24],
                               _SATURATION_QUANTILE)) if finite.numel() else fill
    cap = _SATURATION_FRACTION * sat
    cur = _Level(R0, stride0, values, torch.ones_like(values, dtype=torch.bool),
                 span / (R0 - 1))
    cur.cand[:] = True
    cur.queries = R0 ** 3
    slope = 0.0
    info: list[dict[str, Any]] = []

    for li in range(L):
        # ---- selection at level li, with growth ------------------------------------------
        h = float(cur.spacing.max())
        cells = cur.cand.nonzero()
        with torch.no_grad():
            slope = max(slope, _slope(cur.corner_values(cells) - level, cur.spacing))
        b_l = band if (li < L - 1 or last_band is None) else last_band
        tau = min(b_l * h * slope, cap) if b_l > 0 else 0.0
        signal = torch.zeros(cur.cells, dtype=torch.bool, device=dev)
        straddle_m = torch.zeros_like(signal)
        frontier = cells
        while frontier.shape[0]:
            vals = cur.corner_values(frontier) - level
            st, nr = _classify(vals, tau)
            sig = frontier[st | nr]
            signal[sig[:, 0], sig[:, 1], sig[:, 2]] = True
            s_ = frontier[st]
            straddle_m[s_[:, 0], s_[:, 1], s_[:, 2]] = True
            new = cur.add_cells(cur.neighbours(sig), decode)
            cur.grown += new.shape[0]
            frontier = new
        kept_m = (signal | _dilate(straddle_m, math.ceil(b_l))) & cur.cand
        kept = kept_m.nonzero()
        info.append({"resolution": cur.R, "candidate_cells": int(cur.cand.sum()),
                     "kept_cells": int(kept.shape[0]), "grown_cells": cur.grown,
                     "queries": cur.queries})
        del signal, straddle_m, kept_m
        # ---- next level: upsample (signs), children of kept cells --------------------------
        Rn = 2 * (cur.R - 1) + 1
        inside = cur.values < level
        for a in range(3):
            inside = inside.repeat_interleave(2, dim=a).narrow(a, 0, Rn)
        nvals = torch.where(inside, level - fill, level + fill).to(vdtype)
        del inside
        nvals[::2, ::2, ::2] = cur.values
        nknown = torch.zeros((Rn,) * 3, dtype=torch.bool, device=dev)
        nknown[::2, ::2, ::2] = cur.known
        nxt = _Level(Rn, cur.stride // 2, nvals, nknown, span / (Rn - 1))
        del cur
        children = (2 * kept[:, None, :] + nxt.corner_off[None]).reshape(-1, 3)
        nxt.add_cells(children, decode)
        cur = nxt

    # ---- final level: every straddling cell must have all corners decoded -----------------
    with torch.no_grad():
        bad = _straddling_cells(cur.values, level) & ~cur.cand
        todo = bad.nonzero()
        del bad
        while todo.shape[0]:
            new = cur.add_cells(todo, decode)
            cur.grown += new.shape[0]
            if new.shape[0] == 0:
                break
            # cells touching the newly decoded corners may now straddle
            near_new = (new[:, None, :] + cur.nb_off[None]).reshape(-1, 3)
            near_new = _new_rows(near_new[_in_bounds(near_new, cur.cells)], cur.cand)
            st, _ = _classify(cur.corner_values(near_new) - level, 0.0)
            todo = near_new[st]
    info.append({"resolution": cur.R, "candidate_cells": int(cur.cand.sum()),
                 "kept_cells": None, "grown_cells": cur.grown, "queries": cur.queries})
    grid = cur.values
    if cur.grown and L > 0:
        log.debug("sparse_grid: the band grew by %s cells (levels %s)",
                  [d["grown_cells"] for d in info], [d["resolution"] for d in info])

    # ---- gradient: re-query the endpoints of sign-changing edges --------------------------
    if needs_grad and torch.is_grad_enabled():
        with torch.no_grad():
            inside = grid < level
            ends = torch.zeros_like(inside)
            for a in range(3):
                n = grid.shape[a] - 1
                ch = inside.narrow(a, 0, n) != inside.narrow(a, 1, n)
                ends.narrow(a, 0, n).logical_or_(ch)
                ends.narrow(a, 1, n).logical_or_(ch)
            del inside
            idx = ends.nonzero()
            del ends
        if idx.shape[0]:
            vals = decode(idx)
            grid = grid.index_put((idx[:, 0], idx[:, 1], idx[:, 2]), vals.to(vdtype))
    queries = decode.count
    log.debug("sparse_grid: %d^3 in %d levels, %d queries (dense %d, %.1fx fewer)", R, L + 1,
              queries, R ** 3, R ** 3 / max(queries, 1))
    return SparseGrid(values=grid, decoded=cur.known, queries=queries, resolution=R,
                      bounds=b, levels=info, fill=fill)


def sparse_isosurface(query: QueryFn, bounds: float | ArrayLike, resolution: int, *,
                      level: float = 0.0, close_boundary: bool = False, method: str = "auto",
                      **options: Any) -> Mesh:
    """:func:`sparse_grid` then :func:`~hoiguide.geometry.extract_isosurface`.

    Args:
        query, bounds, resolution, level: as :func:`sparse_grid`.
        close_boundary, method: as :func:`~hoiguide.geometry.extract_isosurface`.
        **options: ``band``, ``coarse_resolution``, ``chunk_size``, ``dtype``, ``device`` of
            :func:`sparse_grid`.

    Returns:
        The mesh in the frame and units of ``bounds`` (vertices differentiable w.r.t. the
        query's parameters when gradients are enabled); ``metadata`` adds ``queries``,
        ``dense_queries`` and ``resolution``.
    """
    sg = sparse_grid(query, bounds, resolution, level=level, **options)
    mesh = extract_isosurface(sg.values, sg.bounds, level=level,
                              close_boundary=close_boundary, method=method)
    mesh.metadata.update(queries=sg.queries, dense_queries=sg.dense_queries,
                         resolution=sg.resolution)
    return mesh


def sdf_query(backbone: Any, latent: torch.Tensor, **kwargs: Any) -> QueryFn:
    """A query function ``points -> values`` for ``latent``, with the latent-side work done once.

    Uses ``backbone.sdf_query(latent, **kwargs)`` when the backbone has it (an optional
    :class:`~hoiguide.backbones.FlowBackbone` method: Hunyuan3D-2's VAE runs its latent
    transformer once there, then each call only runs the cheap point decoder), else
    ``lambda points: backbone.decode_sdf(latent, points, **kwargs)``.

    Args:
        backbone: any FlowBackbone.
        latent: ``(B, *latent_shape)`` clean latent(s).
        **kwargs: forwarded (e.g. ``chunk_size`` for backbones that accept it).

    Returns:
        ``query(points)`` with points ``(P, 3)`` (generator frame and units) returning
        ``(B, P)`` values, negative inside, differentiable w.r.t. ``latent``.
    """
    method = getattr(backbone, "sdf_query", None)
    if callable(method):
        return method(latent, **kwargs)

    def query(points: torch.Tensor) -> torch.Tensor:
        return backbone.decode_sdf(latent, points, **kwargs)

    return query
