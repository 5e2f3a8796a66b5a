"""Narrow-band (sparse) decoding: the same mesh and gradients as the dense grid from fewer
queries, on analytic fields, the analytic test backbone and the bundled generator; the
documented thin-part miss at a small margin.

Tolerances. Sparse decoding queries the very same grid points as the dense path, so on an
analytic (element-wise) field the values, hence the meshes, are bitwise equal: faces must
be equal and vertices within 1e-6 (float32 round-off headroom). A neural decoder may round
differently for a different batch of points (~1e-7 relative), which moves vertices by
about that over the edge's value difference: 1e-4 generator units (1/600 of a 33^3 cell)
there. Gradients flow through the same grid values in both paths: 1e-9 relative in float64
(analytic), 1e-3 relative with cosine > 0.9999 in float32 (neural).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hoiguide.geometry import connected_components, extract_isosurface, grid_points
from hoiguide.geometry.sparse import (
    SparseGrid,
    plan_levels,
    sdf_query,
    sparse_grid,
    sparse_isosurface,
)

ROOT = Path(__file__).resolve().parents[1]

B = 1.0  # the cube [-1, 1]^3


def sphere(p: torch.Tensor, r: float | torch.Tensor = 0.5) -> torch.Tensor:
    return p.norm(dim=-1) - r


def torus(p: torch.Tensor) -> torch.Tensor:
    q = torch.stack([p[:, :2].norm(dim=-1) - 0.5, p[:, 2]], -1)
    return q.norm(dim=-1) - 0.15


def thin_plate(p: torch.Tensor) -> torch.Tensor:
    """A plate 0.1 thick across the box at x = 0.125: between the 9^3 coarse grid planes
    x = 0 and x = 0.25, 0.075 from both, so no coarse point is inside it."""
    return (p[:, 0] - 0.125).abs() - 0.05


def blobs(p: torch.Tensor) -> torch.Tensor:
    """A big ball and a small one (radius 0.1) centred in a coarse cell (corners at 0.5 and
    0.75), 0.117 from its nearest coarse corners: no coarse point is inside it."""
    big = (p - torch.tensor([-0.3, -0.2, -0.25], dtype=p.dtype)).norm(dim=-1) - 0.45
    small = (p - torch.tensor([0.625, 0.625, 0.625], dtype=p.dtype)).norm(dim=-1) - 0.1
    return torch.minimum(big, small)


def dense_grid(f, res: int, dtype=torch.float32) -> torch.Tensor:
    return f(grid_points(B, res, dtype=dtype).reshape(-1, 3)).reshape(res, res, res)


def assert_same_mesh(a, b, atol: float = 1e-6) -> None:
    assert a.num_faces == b.num_faces and a.num_vertices == b.num_vertices, \
        (a.num_faces, b.num_faces)
    assert torch.equal(a.faces, b.faces)
    assert float((a.vertices - b.vertices).detach().abs().max()) <= atol


# --------------------------------------------------------------------------------------
# levels
# --------------------------------------------------------------------------------------


def test_plan_levels() -> None:
    assert plan_levels(33) == [9, 17, 33]
    assert plan_levels(65) == [9, 17, 33, 65]
    assert plan_levels(385) == [13, 25, 49, 97, 193, 385]
    assert plan_levels(65, coarse_resolution=17) == [17, 33, 65]
    assert plan_levels(65, coarse_resolution=65) == [65]
    assert plan_levels(64) == [64]           # R - 1 odd: dense
    assert plan_levels(9) == [9]
    with pytest.raises(ValueError,
                       match=r"coarse_resolution: 16 .*valid: \[2, 3, 5, 9, 17, 33, 65\]"):
        plan_levels(65, coarse_resolution=16)
    with pytest.raises(ValueError, match="resolution"):
        plan_levels(1)


# --------------------------------------------------------------------------------------
# analytic fields: same mesh, fewer queries
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,f,min_ratio", [
    ("sphere", sphere, 5.0), ("torus", torus, 5.0), ("blobs", blobs, 6.0),
    ("thin_plate", thin_plate, 3.0)])
def test_same_mesh_as_dense(name, f, min_ratio) -> None:
    for res in (33, 65):
        dense = extract_isosurface(dense_grid(f, res), B)
        sg = sparse_grid(f, B, res)
        assert isinstance(sg, SparseGrid) and sg.values.shape == (res,) * 3
        assert_same_mesh(dense, extract_isosurface(sg.values, B))
        # every decoded value is the field's value; the others have the field's sign
        d = dense_grid(f, res)
        assert torch.equal(sg.values[sg.decoded], d[sg.decoded])
        assert torch.equal(sg.values < 0, d < 0)
        assert sg.queries == int(sg.decoded.sum()) and sg.dense_queries == res ** 3
    # at 65^3 at least `min_ratio` times fewer queries (measured: sphere 7.3x, torus 7.7x,
    # blobs 7.8x, plate 6.3x: a plate across the box is mostly surface)
    assert sg.dense_queries / sg.queries >= min_ratio, sg.queries


def test_query_factor_grows_with_resolution() -> None:
    """The band is a surface: queries grow ~R^2 while the dense grid grows R^3."""
    ratios = [sparse_grid(sphere, B, r).dense_queries / sparse_grid(sphere, B, r).queries
              for r in (33, 65, 129)]
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] >= 10.0, ratios      # measured 14.1x at 129^3


def test_sparse_isosurface_and_levels() -> None:
    mesh = sparse_isosurface(torus, B, 65, method="primal")
    assert_same_mesh(extract_isosurface(dense_grid(torus, 65), B, method="primal"), mesh)
    assert mesh.metadata["queries"] < mesh.metadata["dense_queries"] == 65 ** 3
    sg = sparse_grid(torus, B, 65)
    assert [lv["resolution"] for lv in sg.levels] == [9, 17, 33, 65]
    assert sum(lv["queries"] for lv in sg.levels) == sg.queries
    assert sg.levels[0]["queries"] == 9 ** 3 and sg.levels[-1]["kept_cells"] is None
    for lv, nxt in zip(sg.levels[:-1], sg.levels[1:]):
        # the next level's candidates are the children of the kept cells (plus growth)
        assert nxt["candidate_cells"] == 8 * lv["kept_cells"] + nxt["grown_cells"]


def test_chunked_queries_and_level() -> None:
    calls = []

    def f(p):
        calls.append(p.shape[0])
        return sphere(p) + 0.2

    sg = sparse_grid(f, B, 33, chunk_size=500, level=0.2)
    assert max(calls) <= 500 and sum(calls) == sg.queries
    assert_same_mesh(extract_isosurface(dense_grid(sphere, 33), B),
                     extract_isosurface(sg.values, B, level=0.2), atol=1e-6)


def test_bounds_box_and_non_cubic() -> None:
    bounds = [[-1.0, -0.5, -0.8], [1.0, 0.7, 0.6]]
    res = 33
    pts = grid_points(bounds, res).reshape(-1, 3)
    f = lambda p: sphere(p, 0.4)
    dense = extract_isosurface(f(pts).reshape(res, res, res), bounds)
    assert_same_mesh(dense, sparse_isosurface(f, bounds, res))


# --------------------------------------------------------------------------------------
# what a small margin misses
# --------------------------------------------------------------------------------------


def test_thin_plate_missed_without_margin() -> None:
    """No coarse point is inside the plate and none changes sign: with band 0 (straddling
    cells only) the plate is never seen; it is 0.075 / 0.25 = 0.3 coarse cells from the
    nearest coarse points (the distance estimate |f| / slope, slope 1 here), so a band of
    0.25 cells still misses it and 0.5 catches it."""
    res = 65
    dense = extract_isosurface(dense_grid(thin_plate, res), B)
    assert dense.num_faces > 10000
    for band in (0.0, 0.25):
        sg = sparse_grid(thin_plate, B, res, band=band)
        assert extract_isosurface(sg.values, B).is_empty
        assert sg.queries == 9 ** 3
    for band in (0.5, 1.0):
        assert_same_mesh(dense, sparse_isosurface(thin_plate, B, res, band=band))


def test_small_blob_missed_without_margin() -> None:
    res = 33
    dense = extract_isosurface(dense_grid(blobs, res), B)
    assert int(connected_components(dense).max()) + 1 == 2
    band0 = sparse_isosurface(blobs, B, res, band=0.0)
    assert int(connected_components(band0).max()) + 1 == 1       # the small ball is lost
    # ...but what is found is exactly the dense mesh's big ball
    big = dense.vertices[(dense.vertices - torch.tensor([-0.3, -0.2, -0.25])).norm(dim=-1)
                         < 0.6]
    assert band0.num_vertices == big.shape[0]
    assert_same_mesh(dense, sparse_isosurface(blobs, B, res, band=1.0))


def test_surface_leaving_the_band_is_followed() -> None:
    """A thin rod attached to a ball, between coarse grid lines: band 0 starts from the
    ball's straddling cells only, and the growth rules still trace the whole rod."""
    def rod(p):
        ball = p.norm(dim=-1) - 0.4
        q = p - torch.tensor([0.0, 0.125, 0.125])
        cyl = torch.maximum(q[:, 1:].norm(dim=-1) - 0.06, (q[:, 0] - 0.45).abs() - 0.45)
        return torch.minimum(ball, cyl)

    res = 65
    dense = extract_isosurface(dense_grid(rod, res), B)
    sg = sparse_grid(rod, B, res, band=0.0)
    assert_same_mesh(dense, extract_isosurface(sg.values, B))
    assert sum(lv["grown_cells"] for lv in sg.levels) > 0


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------


def _surface_loss(mesh) -> torch.Tensor:
    target = torch.tensor([0.3, -0.2, 0.1], dtype=mesh.vertices.dtype)
    return (mesh.vertices - target).norm(dim=-1).square().mean() + mesh.face_areas().sum()


def test_gradient_wrt_radius_matches_dense() -> None:
    res = 33
    grads = []
    for mode in ("dense", "sparse"):
        r = torch.tensor(0.55, dtype=torch.float64, requires_grad=True)
        f = lambda p, r=r: sphere(p, r)
        if mode == "dense":
            grid = dense_grid(f, res, torch.float64)
        else:
            grid = sparse_grid(f, B, res, dtype=torch.float64).values
        _surface_loss(extract_isosurface(grid, B)).backward()
        grads.append(float(r.grad))
    assert grads[0] != 0.0
    assert math.isclose(grads[0], grads[1], rel_tol=1e-9), grads


def test_no_gradient_pass_when_disabled() -> None:
    r = torch.tensor(0.5, requires_grad=True)
    with torch.no_grad():
        sg = sparse_grid(lambda p: sphere(p, r), B, 33)
    assert not sg.values.requires_grad
    with_grad = sparse_grid(lambda p: sphere(p, r), B, 33)
    assert with_grad.values.requires_grad
    assert with_grad.queries > sg.queries   # the re-query of the sign-changing edges


def test_analytic_backbone_latent_gradient() -> None:
    """decode_grid(sparse=True) on the tests' Gaussian-grid backbone (float64): same mesh
    and same latent gradient of a surface loss as the dense decode."""
    from hoiguide.guidance.sampler import decode_grid, latent_to_mesh
    from hoiguide.testing import GaussianGridBackbone

    bb = GaussianGridBackbone()
    latent0 = bb.mu[0] + 0.05 * torch.randn(bb.latent_shape, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(0))
    grads, meshes = [], []
    for sparse in (False, True):
        lat = latent0.clone().requires_grad_(True)
        grid = decode_grid(bb, lat, 33, sparse=sparse)
        assert grid.shape == (33, 33, 33)
        mesh = extract_isosurface(grid, bb.bounds)
        _surface_loss(mesh).backward()
        grads.append(lat.grad.clone())
        meshes.append(mesh)
    assert_same_mesh(meshes[0], meshes[1], atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    assert float(grads[0].abs().max()) > 0
    # batched: one grid per latent
    two = decode_grid(bb, torch.stack([latent0, latent0 * 1.1]), 17, sparse={"band": 0.5})
    assert two.shape == (2, 17, 17, 17)
    assert torch.equal(two, decode_grid(bb, torch.stack([latent0, latent0 * 1.1]), 17,
                                        sparse={"band": 0.5}))
    # the final mesh
    m_dense = latent_to_mesh(bb, latent0, 33)
    m_sparse = latent_to_mesh(bb, latent0, 33, sparse=True)
    assert_same_mesh(m_dense, m_sparse, atol=1e-12)
    assert m_sparse.metadata["sparse"] is True and m_dense.metadata["sparse"] is False


def test_sampler_rejects_bad_sparse_options() -> None:
    from hoiguide.guidance.sampler import decode_grid, latent_to_mesh
    from hoiguide.testing import GaussianGridBackbone

    bb = GaussianGridBackbone()
    with pytest.raises(ValueError, match=r"sparse: unknown option\(s\) \['bandwidth'\]"):
        decode_grid(bb, bb.mu, 17, sparse={"bandwidth": 1})
    with pytest.raises(TypeError, match="sparse: expected True, False or a dict"):
        latent_to_mesh(bb, bb.mu, 17, sparse="yes")
    with pytest.raises(ValueError, match="band: expected a number of cells >= 0"):
        latent_to_mesh(bb, bb.mu, 17, sparse={"band": -1})


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="band: expected a number of cells >= 0, got nan"):
        sparse_grid(sphere, B, 33, band=float("nan"))
    with pytest.raises(ValueError, match="chunk_size"):
        sparse_grid(sphere, B, 33, chunk_size=0)
    with pytest.raises(ValueError, match="query must return a tensor of 729 values"):
        sparse_grid(lambda p: p, B, 33)
    with pytest.raises(TypeError, match="query: expected a callable"):
        sparse_grid(None, B, 33)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds"):
        sparse_grid(sphere, [[0, 0, 0], [0, 1, 1]], 33)


def test_non_finite_values_reach_the_grid() -> None:
    """A NaN from the query is kept (extract_isosurface then names it), not hidden."""
    def f(p):
        v = sphere(p)
        return torch.where((p - 0.5).norm(dim=-1) < 1e-6, torch.nan, v)

    sg = sparse_grid(f, B, 33)
    assert int(torch.isnan(sg.values).sum()) == 1
    with pytest.raises(ValueError, match="non-finite"):
        extract_isosurface(sg.values, B)


# --------------------------------------------------------------------------------------
# sdf_query: the backbone hook and its fallback
# --------------------------------------------------------------------------------------


def test_sdf_query_fallback_uses_decode_sdf() -> None:
    from hoiguide.testing import GaussianGridBackbone
    bb = GaussianGridBackbone()
    assert not hasattr(bb, "sdf_query")
    pts = grid_points(bb.bounds, 5, dtype=torch.float64).reshape(-1, 3)
    q = sdf_query(bb, bb.mu)
    assert torch.equal(q(pts), bb.decode_sdf(bb.mu, pts))


# --------------------------------------------------------------------------------------
# the bundled generator
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_and_latent():
    pytest.importorskip("hy3dgen")
    import trimesh

    from hoiguide.backbones import tiny
    from hoiguide.guidance.sampler import sample
    from hoiguide.render import render
    from hoiguide.rotations import axis_angle_to_matrix
    from hoiguide.types import Camera, Mesh

    bb = tiny(device="cpu", dtype=torch.float32)
    body = trimesh.creation.cylinder(radius=0.4, height=1.0, sections=32)
    v = torch.as_tensor(np.asarray(body.vertices), dtype=torch.float64) * 0.05
    rot = axis_angle_to_matrix(torch.tensor([0.6, 0.3, 0.0], dtype=torch.float64))
    v = v @ rot.T + torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    r = render(Mesh(v.float(), torch.as_tensor(np.asarray(body.faces))),
               Camera.from_fov(40.0, 96, 96))
    shade = (0.4 + 0.6 * (-r.normals[..., 2]).clamp(0, 1)).numpy()
    img = np.zeros((96, 96, 4), np.uint8)
    img[..., :3] = (shade[..., None] * np.array([200, 120, 60])).astype(np.uint8)
    img[..., 3] = np.where(r.mask.numpy(), 255, 0)
    latent = sample(bb, img, num_steps=8, seed=0)
    return bb, latent


def test_hunyuan_sdf_query_equals_decode_sdf(tiny_and_latent) -> None:
    bb, latent = tiny_and_latent
    calls = []
    handle = bb.vae.register_forward_hook(lambda *a: calls.append(1))
    try:
        pts = grid_points(bb.bounds, 9).reshape(-1, 3)
        q = bb.sdf_query(latent, chunk_size=100)
        a, b = q(pts[:300]), q(pts[300:])
        assert len(calls) == 1                  # the latent transformer ran once
        ref = bb.decode_sdf(latent, pts, chunk_size=100)
        torch.testing.assert_close(torch.cat([a, b], 1), ref, rtol=0, atol=1e-6)
        assert sdf_query(bb, latent)(pts).shape == (1, pts.shape[0])
        with pytest.raises(ValueError, match=r"points: expected \(P, 3\)"):
            q(torch.zeros(5, 2))
    finally:
        handle.remove()
    # gradients through the closure equal decode_sdf's
    lat1 = latent.clone().requires_grad_(True)
    lat2 = latent.clone().requires_grad_(True)
    w = torch.linspace(-1, 1, pts.shape[0])
    (bb.sdf_query(lat1, chunk_size=200)(pts)[0] * w).sum().backward()
    (bb.decode_sdf(lat2, pts, chunk_size=200)[0] * w).sum().backward()
    torch.testing.assert_close(lat1.grad, lat2.grad, rtol=1e-5, atol=1e-7)


def test_bundled_generator_same_mesh_fewer_queries(tiny_and_latent) -> None:
    from hoiguide.guidance.sampler import decode_grid

    bb, latent = tiny_and_latent
    q = sdf_query(bb, latent)
    f = lambda p: q(p)[0]
    with torch.no_grad():
        for res, max_fraction in ((33, 0.8), (65, 0.5)):
            dense = extract_isosurface(decode_grid(bb, latent, res)[0], bb.bounds)
            assert dense.num_faces > 100
            sg = sparse_grid(f, bb.bounds, res)
            mesh = extract_isosurface(sg.values, bb.bounds)
            assert_same_mesh(dense, mesh, atol=1e-4)
            # measured on generator shapes (they fill the box): 33^3 1.7-3.9x, 65^3 2.7-6x
            assert sg.queries <= max_fraction * res ** 3, (res, sg.queries)
            # band 0 can only lose whole pieces, never change or add surface
            band0 = extract_isosurface(sparse_grid(f, bb.bounds, res, band=0.0).values,
                                       bb.bounds, method="primal")
            ref = extract_isosurface(sg.values, bb.bounds, method="primal")
            d = torch.cdist(band0.vertices, ref.vertices,
                            compute_mode="donot_use_mm_for_euclid_dist").min(1).values
            assert float(d.max()) <= 1e-4 and band0.num_faces <= ref.num_faces


def test_bundled_generator_latent_gradient(tiny_and_latent) -> None:
    from hoiguide.guidance.sampler import decode_grid

    bb, latent = tiny_and_latent
    grads, meshes = [], []
    for sparse in (False, True):
        lat = latent.clone().requires_grad_(True)
        mesh = extract_isosurface(decode_grid(bb, lat, 33, sparse=sparse)[0], bb.bounds)
        _surface_loss(mesh).backward()
        grads.append(lat.grad.clone())
        meshes.append(mesh)
    assert_same_mesh(meshes[0], meshes[1], atol=1e-4)
    g0, g1 = grads[0].flatten(), grads[1].flatten()
    assert float(g0.norm()) > 0
    assert float((g1 - g0).norm() / g0.norm()) < 1e-3
    assert float(torch.nn.functional.cosine_similarity(g0, g1, dim=0)) > 0.9999


# --------------------------------------------------------------------------------------
# benchmarks/gpu.py: CPU-side argument handling (the benchmark itself needs CUDA)
# --------------------------------------------------------------------------------------


def _gpu_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_gpu_benchmark_arguments() -> None:
    p = _gpu_bench("--modes", "dense,octree")
    assert p.returncode == 2 and "--modes: unknown ['octree']" in p.stderr
    p = _gpu_bench("--grid", "1")
    assert p.returncode == 2 and "--grid" in p.stderr
    p = _gpu_bench("--help")
    assert p.returncode == 0 and "followmyhold" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_gpu_benchmark_needs_cuda(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    p = _gpu_bench("--json", str(out))
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("gpu.py: needs a CUDA GPU")
    assert not out.exists()
