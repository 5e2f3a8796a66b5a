"""Regression tests for issue 4: NaN gradients from degenerate geometry.

The random-weight Hunyuan field gives iso-surfaces full of tiny, zero-area and sliver
triangles, duplicate vertices and vertices whose area-weighted normal cancels to zero. Every
loss on a render of such a mesh must backpropagate to finite gradients (float32, as the
engine runs, and float64), and so must the iso-surface of a field with exact zeros at grid
nodes and flat (near-zero) regions.
"""

import math

import pytest
import torch
import trimesh

from hoiguide.geometry import extract_isosurface, grid_points
from hoiguide.losses import LOSSES, LossContext
from hoiguide.render import render
from hoiguide.types import Camera, Mesh

F32, F64 = torch.float32, torch.float64

# pixel (col 24, row 24) has its centre on the optical axis: the planes x = 0 and y = 0
# through the camera centre contain whole columns / rows of pixel centres
CAM = Camera(60.0, 60.0, 24.5, 24.5, 48, 48)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sphere(radius: float, center, sub: int) -> tuple[list, list]:
    s = trimesh.creation.icosphere(subdivisions=sub, radius=radius)
    return (s.vertices + torch.tensor(center).numpy()).tolist(), s.faces.tolist()


def _tiny(dtype: torch.dtype) -> float:
    """A length whose squared triangle area underflows in ``dtype`` (1e-8 m in float32)."""
    return 1e-8 if dtype == F32 else 1e-80


def degenerate_object(dtype: torch.dtype) -> tuple[Mesh, dict[str, list[int]]]:
    """A sphere in front of the camera plus every kind of degenerate face, most of them
    visible. Returns the mesh and the indices of the special faces by kind."""
    v, f = _sphere(0.06, (0.0, 0.0, 0.5), 2)
    kinds: dict[str, list[int]] = {}

    def add_vertices(pts) -> list[int]:
        start = len(v)
        v.extend([list(map(float, p)) for p in pts])
        return list(range(start, start + len(pts)))

    def add_faces(kind: str, tris) -> None:
        kinds.setdefault(kind, []).extend(range(len(f), len(f) + len(tris)))
        f.extend([list(t) for t in tris])

    # duplicate vertices: re-point a few front faces to copies of their corners (a seam,
    # each copy gets a partial vertex normal), plus zero-area faces joining a vertex and its
    # copy, and a face with a repeated index
    vt = torch.tensor(v[:len(v)])
    front = [i for i, t in enumerate(f) if float(vt[t][:, 2].max()) < 0.47][:6]
    for i in front:
        a, b, c = f[i]
        (b2,) = add_vertices([v[b]])
        f[i] = [a, b2, c]
        add_faces("zero_area_duplicate", [[a, b, b2], [b2, b, c]])
    a, b, _ = f[front[0]]
    add_faces("repeated_index", [[a, a, b]])
    # an isolated, exactly collinear triangle in front of the sphere (area-weighted vertex
    # normals of its corners are exactly zero)
    ids = add_vertices([[-0.02, 0.01, 0.42], [0.0, 0.01, 0.42], [0.03, 0.01, 0.42]])
    add_faces("collinear", [ids, [ids[0], ids[2], ids[1]]])
    # tiny triangles (squared area underflows), one attached to the sphere, one alone
    s = _tiny(dtype)
    p = v[f[front[1]][0]]
    ids = add_vertices([[p[0] + s, p[1], p[2] - 0.001], [p[0], p[1] + s, p[2] - 0.001],
                        [p[0], p[1], p[2] - 0.001]])
    add_faces("tiny", [ids, [f[front[1]][0], ids[0], ids[1]]])
    # a sliver on the pixel row through the optical axis: its bottom edge holds the pixel
    # centres, its height is 1e-12 m (float32: |n|^2 ~ 1e-27)
    ids = add_vertices([[-0.03, 0.0, 0.44], [0.03, 0.0, 0.44], [0.0, 1e-12, 0.44]])
    add_faces("sliver_visible", [[ids[0], ids[2], ids[1]]])
    # a face seen exactly edge-on (its plane x = 0 holds the camera centre and a column of
    # pixel centres) and one seen nearly edge-on (covers that column's pixel centres)
    ids = add_vertices([[0.0, -0.03, 0.45], [0.0, 0.03, 0.45], [0.0, 0.0, 0.48]])
    add_faces("edge_on", [ids])
    ids = add_vertices([[0.0, -0.02, 0.43], [0.0, 0.02, 0.43], [1e-9, 0.0, 0.46]])
    add_faces("near_edge_on", [ids, [ids[1], ids[0], ids[2]]])
    mesh = Mesh(torch.tensor(v, dtype=dtype), torch.tensor(f))
    return mesh, kinds


def _hand(dtype: torch.dtype) -> Mesh:
    v, f = _sphere(0.025, (-0.04, 0.03, 0.45), 2)
    return Mesh(torch.tensor(v, dtype=dtype), torch.tensor(f))


def _targets(ref, dtype):
    g = torch.Generator().manual_seed(0)
    H, W = ref.mask.shape
    tn = torch.nn.functional.normalize(torch.randn(H, W, 3, generator=g, dtype=dtype), dim=-1)
    td = 2.0 + torch.rand(H, W, generator=g, dtype=dtype)
    mask_obj = ref.mesh_id == 1
    mask_obj[:, :6] = True
    return dict(target_normals=tn, target_disparity=td, mask_hand=ref.mesh_id == 0,
                mask_object=mask_obj, mask_union=ref.mask | mask_obj,
                mask_object_amodal=mask_obj, camera=CAM)


_TERMS = [("normal", {"mask": m}) for m in ("hand", "object", "union")] + \
    [("disparity", {"mask": m, "normalization": n}) for m in ("object", "union")
     for n in ("median", "median_mad", "minmax", "image_minmax", "none")] + \
    [("silhouette", {"which": w}) for w in ("hand", "object", "object_amodal", "union")] + \
    [("mask_ot", {"which": "object"}), ("edge_length", {}), ("vertex_l2", {}),
     ("proximity", {}), ("intersection", {})]


def _render(dtype, smooth=True):
    obj, kinds = degenerate_object(dtype)
    hand = _hand(dtype)
    ov = obj.vertices.clone().requires_grad_(True)
    hv = hand.vertices.clone().requires_grad_(True)
    objm, handm = obj.with_vertices(ov), hand.with_vertices(hv)
    r = render([handm, objm], CAM, amodal=True, smooth_normals=smooth)
    return r, objm, handm, ov, hv, kinds


@pytest.mark.parametrize("dtype", [F32, F64])
def test_the_degenerate_faces_are_really_in_the_picture(dtype):
    r, *_, kinds = _render(dtype)
    seen = set(r.face_id[r.mesh_id == 1].unique().tolist())
    # the sliver, the nearly edge-on faces and a zero-area duplicate neighbour are hit
    assert seen & set(kinds["sliver_visible"])
    assert seen & set(kinds["near_edge_on"])
    # exact-zero-area faces and the exactly edge-on face are never hit
    for k in ("zero_area_duplicate", "repeated_index", "collinear", "edge_on"):
        assert not seen & set(kinds[k]), k
    for name in ("depth", "disparity", "normals", "silhouette", "coverage", "amodal"):
        assert bool(torch.isfinite(getattr(r, name)).all()), name
    # depth on the sliver row is its plane's z, normals are unit or zero
    sl = (r.mesh_id == 1) & torch.isin(r.face_id, torch.tensor(kinds["sliver_visible"]))
    assert torch.allclose(r.depth[sl], torch.full_like(r.depth[sl], 0.44), rtol=1e-5)
    nl = r.normals[r.mask].norm(dim=-1)
    assert bool((((nl - 1).abs() < 1e-4) | (nl == 0)).all())


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_every_render_output_backpropagates_finite_gradients(dtype, smooth):
    r, _, _, ov, hv, _ = _render(dtype, smooth)
    g = torch.Generator().manual_seed(1)
    for name in ("depth", "disparity", "normals", "silhouette", "coverage", "amodal"):
        x = getattr(r, name)
        w = torch.randn(x.shape, generator=g, dtype=x.dtype)
        go, gh = torch.autograd.grad((x * w).sum(), [ov, hv], retain_graph=True,
                                     allow_unused=True)
        for who, gr in (("object", go), ("hand", gh)):
            assert gr is None or bool(torch.isfinite(gr).all()), (name, who)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_every_loss_backpropagates_finite_gradients(dtype):
    r, objm, handm, ov, hv, _ = _render(dtype)
    targets = _targets(r, dtype)
    ctx = LossContext(render=r, hand_mesh=handm, object_mesh=objm, **targets)
    for name, opts in _TERMS:
        val = LOSSES[name](ctx, **opts)
        assert math.isfinite(float(val.detach())), (name, opts)
        go, gh = torch.autograd.grad(val, [ov, hv], retain_graph=True, allow_unused=True)
        for who, gr in (("object", go), ("hand", gh)):
            assert gr is None or bool(torch.isfinite(gr).all()), (name, opts, who)


def test_well_formed_part_keeps_its_gradient():
    """The guards change nothing on the well-formed sphere: its depth / normal gradient is
    the same with and without the degenerate extras in the scene (they cover other
    pixels)."""
    obj, kinds = degenerate_object(F64)
    nsph = len(trimesh.creation.icosphere(subdivisions=2).vertices)  # the sphere's own
    special = set(sum(kinds.values(), []))
    dup = set(kinds["zero_area_duplicate"])
    keep = [i for i in range(obj.num_faces) if i not in special or i in dup]
    clean = Mesh(obj.vertices, obj.faces[keep])
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 48, 3, generator=g, dtype=F64)
    grads, pix = [], None
    for m in (obj, clean):
        v = m.vertices.clone().requires_grad_(True)
        r = render(m.with_vertices(v), CAM)
        if pix is None:  # the sphere's pixels in the degenerate scene
            pix = r.mask & ~torch.isin(r.face_id, torch.tensor(sorted(special - dup)))
            ids = r.face_id[pix]
            assert int(pix.sum()) > 100
        else:  # faces keep their index in `clean` (the special ones come last)
            assert torch.equal(r.face_id[pix], ids)
        loss = (r.normals * w)[pix].sum() + (r.depth * w[..., 0])[pix].sum()
        (gv,) = torch.autograd.grad(loss, v)
        grads.append(gv[:nsph])
    assert grads[0].abs().max() > 1
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------
# iso-surface of a field with exact zeros and flat regions
# --------------------------------------------------------------------------------------


def _awkward_field(dtype: torch.dtype, res: int = 17, subnormal: bool = False
                   ) -> torch.Tensor:
    p = grid_points(1.0, res, dtype=F64)
    f = p.norm(dim=-1) - 0.6
    # exact zeros at grid nodes next to the surface
    f = torch.where(f.abs() < 0.08, torch.zeros_like(f), f)
    # a flat region: +-tiny (their differences underflow when squared)
    # squares underflow and 1 / tiny is astronomic; subnormal: 1 / tiny overflows
    tiny = (1e-40 if subnormal else 1e-30) if dtype == F32 else \
        (1e-310 if subnormal else 1e-170)
    sign = torch.where(torch.rand(f.shape, generator=torch.Generator().manual_seed(0)) < 0.5,
                       -1.0, 1.0).to(F64)
    flat = p[..., 0] > 0.45
    f = torch.where(flat, tiny * sign, f)
    # and a few flat nodes at exactly zero next to tiny negative ones
    f = torch.where(flat & (p[..., 1] > 0.7), torch.zeros_like(f), f)
    return f.to(dtype)


@pytest.mark.parametrize("subnormal", [False, True])
@pytest.mark.parametrize("method", ["dual", "primal"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_isosurface_gradient_is_finite_for_zeros_and_flat_regions(dtype, method, subnormal):
    grid = _awkward_field(dtype, subnormal=subnormal).requires_grad_(True)
    mesh = extract_isosurface(grid, 1.0, method=method)
    assert mesh.num_faces > 100 and bool(torch.isfinite(mesh.vertices).all())
    w = torch.randn(mesh.vertices.shape, generator=torch.Generator().manual_seed(1),
                    dtype=dtype)
    (gg,) = torch.autograd.grad((mesh.vertices * w).sum(), grid)
    assert bool(torch.isfinite(gg).all())
    # flat-edge crossings get no gradient: nothing like 1 / 1e-30 reaches the grid (a
    # well-formed crossing has |d vertex / d f| ~ spacing / |f_b - f_a| ~ 1 here)
    assert 0 < float(gg.abs().max()) < 1e4
    # vertices stay inside their cells (no crossing moved off its grid edge)
    with torch.no_grad():
        same = extract_isosurface(grid.detach(), 1.0, method=method)
    assert torch.equal(same.vertices, mesh.vertices.detach())


@pytest.mark.parametrize("dtype", [F32, F64])
def test_render_of_the_awkward_isosurface_has_finite_gradients(dtype):
    grid = _awkward_field(dtype).requires_grad_(True)
    mesh = extract_isosurface(grid, 1.0)
    # place it in front of the camera (object ~0.12 m wide at 0.5 m)
    placed = mesh.with_vertices(0.06 * mesh.vertices + torch.tensor([0.0, 0.0, 0.5],
                                                                    dtype=dtype))
    r = render([_hand(dtype), placed], CAM, amodal=True)
    ctx = LossContext(render=r, hand_mesh=_hand(dtype), object_mesh=placed,
                      **_targets(r, dtype))
    total = sum(LOSSES[n](ctx, **o) for n, o in _TERMS)
    (gg,) = torch.autograd.grad(total, grid)
    assert bool(torch.isfinite(gg).all())
