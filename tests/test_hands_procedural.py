"""Tests of hoiguide.hands.procedural: the rig (shapes, frames, mirror, limits), the mesh
(watertight, no explosion when bent), the SDF (agreement with the mesh, float64 gradients)."""

import math

import numpy as np
import pytest
import torch
import trimesh

from hoiguide.hands import FINGERS, KEYPOINT_NAMES, HandOutput, ProceduralHand
from hoiguide.hands.base import FINGER_JOINTS, MANO_PARENTS, mirror_axis_angle
from hoiguide.hands.procedural import _template
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Mesh

F64 = torch.float64


@pytest.fixture(scope="module")
def hand() -> ProceduralHand:
    return ProceduralHand()


@pytest.fixture(scope="module")
def left() -> ProceduralHand:
    return ProceduralHand(side="left")


@pytest.fixture(scope="module")
def rest(hand) -> HandOutput:
    return hand()


def random_pose(hand, B, seed, scale=0.6):
    """Random poses inside the limits (float64)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (x.reshape(45) for x in hand.pose_limits)
    u = torch.rand(B, 45, generator=g, dtype=F64)
    hp = lo + u * (hi - lo)
    go = (torch.rand(B, 3, generator=g, dtype=F64) * 2 - 1) * scale * math.pi
    t = (torch.rand(B, 3, generator=g, dtype=F64) * 2 - 1) * 0.1
    beta = torch.randn(B, 10, generator=g, dtype=F64)
    return go, hp, beta, t


def to_trimesh(out: HandOutput, i=0) -> trimesh.Trimesh:
    return trimesh.Trimesh(out.vertices[i].detach().double().numpy(), out.faces.numpy(),
                           process=False)


def edge_lengths(v, faces):
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    return (v[..., e[:, 0], :] - v[..., e[:, 1], :]).norm(dim=-1)


def pose_with(flex: dict[int, float]) -> torch.Tensor:
    """(1, 45) pose with the given flexion (radians) at MANO joints."""
    hp = torch.zeros(1, 45)
    for j, a in flex.items():
        hp[0, 3 * (j - 1)] = a
    return hp


# ---------------------------------------------------------------------------------------
# construction, shapes, frames
# ---------------------------------------------------------------------------------------


def test_template_cached_and_quick(hand):
    assert ProceduralHand().template_vertices.data_ptr() != 0
    assert _template(1) is _template(1)            # one build per process and detail
    nv = hand.template_vertices.shape[0]
    assert 2000 < nv < 12000
    assert hand.faces.dtype == torch.int64 and hand.faces.shape[1] == 3
    assert hand.vertex_part.shape == (nv,) and int(hand.vertex_part.min()) == 0 \
        and int(hand.vertex_part.max()) == 15
    assert torch.bincount(hand.vertex_part, minlength=16).min() > 20   # every part has skin
    w = hand.skinning_weights
    assert w.shape == (nv, 16) and torch.allclose(w.sum(1), torch.ones(nv, dtype=F64))
    assert float(w.min()) >= 0


def test_bad_arguments(hand):
    with pytest.raises(ValueError, match="side"):
        ProceduralHand(side="middle")
    with pytest.raises(ValueError, match="detail"):
        ProceduralHand(detail=7)
    with pytest.raises(ValueError, match=r"hand_pose of shape \(B, 45\)"):
        hand(hand_pose=torch.zeros(2, 48))
    with pytest.raises(ValueError, match="batch"):
        hand(hand_pose=torch.zeros(2, 45), transl=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"points of shape \(B, N, 3\)"):
        hand.sdf(torch.zeros(5, 3), hand())
    with pytest.raises(ValueError, match=r"amounts of shape \(B, 5, 3\)"):
        hand.flexion_pose(torch.zeros(1, 15))


def test_shapes_dtypes_and_batch(hand):
    out = hand()
    assert out.vertices.dtype == torch.float32
    assert out.keypoints.shape == (1, 21, 3) and out.joints.shape == (1, 16, 3)
    assert out.transforms.shape == (1, 16, 4, 4)
    go, hp, beta, t = random_pose(hand, 3, seed=0)
    out = hand(go, hp, beta, t)
    V = hand.template_vertices.shape[0]
    assert out.vertices.shape == (3, V, 3) and out.vertices.dtype == F64
    assert out.keypoints.dtype == F64 and out.transforms.dtype == F64
    for i in range(3):
        one = hand(go[i:i + 1], hp[i:i + 1], beta[i:i + 1], t[i:i + 1])
        assert torch.allclose(one.vertices[0], out.vertices[i], atol=1e-12)
    m = out.mesh(2)
    assert isinstance(m, Mesh) and torch.equal(m.vertices, out.vertices[2])
    assert len(KEYPOINT_NAMES) == 21 and KEYPOINT_NAMES[4] == "thumb4" \
        and KEYPOINT_NAMES[20] == "pinky4"
    assert FINGERS == ("thumb", "index", "middle", "ring", "pinky")


def test_canonical_frame_and_size(rest, hand):
    kp = rest.keypoints[0].double()
    v = rest.vertices[0].double()
    assert torch.equal(kp[0], torch.zeros(3, dtype=F64))              # wrist at the origin
    length = float((kp[12] - kp[0]).norm())                            # middle fingertip
    assert 0.18 <= length <= 0.19
    assert float(kp[12, 1]) < -0.17                                    # fingers along -y
    # a right palm seen from the front: thumb on the viewer's right (+x), pinky on -x
    assert float(kp[4, 0]) > 0.05 and float(kp[20, 0]) < -0.03
    # palm width across the knuckles (MCP level), within the usual adult range
    not_thumb = hand.vertex_part < 13
    band = v[((v[:, 1] - kp[9, 1]).abs() < 0.005) & not_thumb]
    width = float(band[:, 0].max() - band[:, 0].min())
    assert 0.078 <= width <= 0.087
    # the palm faces -z: the thumb sits on the palm side
    assert float(kp[2:5, 2].mean()) < -0.01
    # tip keypoints are the tip vertices, at the end of each finger
    assert torch.equal(rest.keypoints[0, [4, 8, 12, 16, 20]],
                       rest.vertices[0, list(hand.fingertip_vertex_ids)])
    for f, joints in enumerate(FINGER_JOINTS):
        j = joints[2]
        seg = v[hand.vertex_part == j]
        d = (kp[4 * f + 3] - kp[4 * f + 2]) / (kp[4 * f + 3] - kp[4 * f + 2]).norm()
        proj = (seg - kp[4 * f + 3]) @ d
        assert float(proj.max()) - float((kp[4 * f + 4] - kp[4 * f + 3]) @ d) < 1e-9


def test_keypoint_order_follows_joints(hand):
    go, hp, beta, t = random_pose(hand, 2, seed=1)
    out = hand(go, hp, beta, t)
    order = [0, 13, 14, 15, None, 1, 2, 3, None, 4, 5, 6, None, 10, 11, 12, None,
             7, 8, 9, None]
    for k, j in enumerate(order):
        if j is not None:
            assert torch.equal(out.keypoints[:, k], out.joints[:, j]), KEYPOINT_NAMES[k]


def test_global_orient_about_wrist_and_transl(hand, rest):
    aa = torch.tensor([[0.3, -1.1, 0.7]], dtype=F64)
    t = torch.tensor([[0.01, -0.02, 0.4]], dtype=F64)
    out = hand(global_orient=aa, transl=t)
    R = axis_angle_to_matrix(aa)[0]
    expect = rest.vertices[0].double() @ R.T + t
    assert torch.allclose(out.vertices[0], expect, atol=1e-6)
    assert torch.allclose(out.joints[0, 0], t[0])
    assert torch.allclose(out.transforms[0, 0, :3, :3], R)


def test_transforms_carry_rest_points(hand):
    """transforms[j] maps rest points of joint j as G_j (x - rest_joint_j) + joint_j, and the
    vertices are the skinning-weighted blend of those maps (naive per-vertex loop)."""
    go, hp, beta, t = random_pose(hand, 1, seed=2)
    out = hand(go, hp, beta, t)
    shaped = hand(betas=beta).vertices[0]           # same shape, no pose
    W = hand.skinning_weights
    T = out.transforms[0]
    for i in range(0, shaped.shape[0], 211):
        acc = torch.zeros(3, dtype=F64)
        for j in torch.nonzero(W[i]).flatten().tolist():
            acc += W[i, j] * (T[j, :3, :3] @ (shaped[i] - out.rest_joints[0, j]) + T[j, :3, 3])
        assert torch.allclose(acc, out.vertices[0, i], atol=1e-12)
    for j in range(16):
        assert torch.allclose(T[j, :3, 3], out.joints[0, j])
        assert torch.allclose(T[j, :3, :3] @ T[j, :3, :3].T, torch.eye(3, dtype=F64), atol=1e-12)
        assert torch.equal(T[j, 3], torch.tensor([0.0, 0, 0, 1], dtype=F64))
    # the chain: a child's position is its parent's transform applied to the rest offset
    for j in range(1, 16):
        p = MANO_PARENTS[j]
        Tp = out.transforms[0, p]
        expect = Tp[:3, :3] @ (out.rest_joints[0, j] - out.rest_joints[0, p]) + Tp[:3, 3]
        assert torch.allclose(out.joints[0, j], expect, atol=1e-12)


# ---------------------------------------------------------------------------------------
# pose parameters
# ---------------------------------------------------------------------------------------


def test_limits_and_flexion_pose(hand):
    lo, hi = hand.pose_limits
    assert lo.shape == (15, 3) and hi.shape == (15, 3) and bool((lo < hi).all())
    for f, joints in enumerate(FINGER_JOINTS):
        for j in joints:
            up = math.degrees(float(hi[j - 1, 0]))
            if FINGERS[f] != "thumb":
                assert 75 <= up <= 110                                  # flexion range
                assert float(hi[j - 1, 2]) <= math.radians(25)          # small abduction
    assert torch.equal(hand.flexion_pose(torch.zeros(2, 5, 3)), torch.zeros(2, 45))
    full = hand.flexion_pose(torch.ones(1, 5, 3, dtype=F64)).reshape(15, 3)
    assert torch.allclose(full[:, 0], hi[:, 0]) and bool((full[:, 1:] == 0).all())
    assert torch.equal(hand.clamp_pose(full.reshape(1, 45)), full.reshape(1, 45))
    # amounts per finger land on that finger's joints (FINGERS order -> MANO order)
    a = torch.zeros(1, 5, 3, dtype=F64)
    a[0, 4, 1] = 0.5                                                  # pinky, middle joint
    hp = hand.flexion_pose(a).reshape(15, 3)
    assert torch.nonzero(hp).tolist() == [[7, 0]]                     # MANO joint 8 = pinky2
    big = torch.full((1, 45), 10.0)
    assert torch.allclose(hand.clamp_pose(big), hi.reshape(1, 45).float())
    assert torch.allclose(hand.clamp_pose(-big), lo.reshape(1, 45).float())


def test_flexion_curls_toward_the_palm(hand, rest):
    out = hand(hand_pose=hand.flexion_pose(torch.full((1, 5, 3), 0.5)))
    for f in range(1, 5):                          # fingers: tips move to the palm side (-z)
        assert float(out.keypoints[0, 4 * f + 4, 2]) < float(rest.keypoints[0, 4 * f + 4, 2]) \
            - 0.03
    fist = hand(hand_pose=hand.flexion_pose(torch.ones(1, 5, 3)))
    # in a fist every fingertip is within ~6 cm of the palm centre
    centre = rest.joints[0, [1, 4, 7, 10]].mean(0) * 0.6
    d = (fist.keypoints[0, [8, 12, 16, 20]] - centre).norm(dim=-1)
    assert bool((d < 0.065).all()), d


def test_left_is_mirrored_right(hand, left):
    go, hp, beta, t = random_pose(hand, 2, seed=3)
    m = torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    r = hand(go, hp, beta, t)
    lo = left(mirror_axis_angle(go), mirror_axis_angle(hp), beta, t * m)
    assert torch.allclose(lo.vertices, r.vertices * m, atol=1e-12)
    assert torch.allclose(lo.keypoints, r.keypoints * m, atol=1e-12)
    assert torch.allclose(lo.joints, r.joints * m, atol=1e-12)
    assert torch.equal(left.faces, hand.faces[:, [0, 2, 1]])
    assert to_trimesh(lo).volume > 0 and to_trimesh(r).volume > 0      # outward for both
    pts = r.vertices[:, ::50] + 0.004 * torch.randn_like(r.vertices[:, ::50])
    assert torch.allclose(left.sdf(pts * m, lo), hand.sdf(pts, r), atol=1e-12)
    # limits follow MANO's mirror rule
    llo, lhi = left.pose_limits
    rlo, rhi = hand.pose_limits
    assert torch.equal(llo[:, 0], rlo[:, 0]) and torch.equal(lhi[:, 1:], -rlo[:, 1:])
    # a left hand at rest has its thumb on -x
    assert float(left().keypoints[0, 4, 0]) < -0.05


# ---------------------------------------------------------------------------------------
# mesh quality
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pose", ["rest", "fist", "random"])
def test_watertight(hand, pose):
    if pose == "rest":
        out = hand()
    elif pose == "fist":
        out = hand(hand_pose=hand.flexion_pose(torch.ones(1, 5, 3)))
    else:
        go, hp, beta, t = random_pose(hand, 1, seed=4)
        out = hand(go, hp, beta, t)
    tm = to_trimesh(out)
    assert tm.is_watertight and tm.is_winding_consistent
    assert len(tm.split(only_watertight=False)) == 1
    assert 2.5e-4 < tm.volume < 6e-4              # adult hand + wrist stub, ~0.4 litre


def test_no_explosion_at_bent_knuckles(hand, rest):
    """All four fingers bent 90 degrees at MCP, PIP and DIP: no edge stretches more than 2.5x
    (edges of at least 1.5 mm; shorter ones are contouring slivers) and nothing moves far
    from the rigid motion of its own segment."""
    hp = pose_with({j: math.pi / 2 for j in range(1, 13)})
    out = hand(hand_pose=hp)
    l0 = edge_lengths(rest.vertices[0], hand.faces)
    l1 = edge_lengths(out.vertices[0], hand.faces)
    ok = l0 > 1.5e-3
    assert float((l1 / l0)[ok].max()) < 2.5
    assert float(l1.max()) < 2 * float(l0.max())
    # every vertex stays within 1 cm of where its main segment alone would carry it
    part = hand.vertex_part
    T = out.transforms[0].double()
    x = rest.vertices[0].double()
    rigid = torch.einsum("vkl,vl->vk", T[part, :3, :3], x - out.rest_joints[0, part].double()) \
        + T[part, :3, 3]
    assert float((rigid - out.vertices[0].double()).norm(dim=-1).max()) < 0.01


def test_betas_change_size_as_documented(hand, rest):
    base = float((rest.keypoints[0, 12] - rest.keypoints[0, 0]).norm())
    b = torch.zeros(1, 10)
    b[0, 0] = 1.0
    big = hand(betas=b)
    ratio = float((big.keypoints[0, 12] - big.keypoints[0, 0]).norm()) / base
    assert ratio == pytest.approx(math.exp(0.06), rel=1e-4)
    b = torch.zeros(1, 10)
    b[0, 1] = 2.0                                  # longer fingers, same palm
    long = hand(betas=b)
    assert torch.allclose(long.joints[0, 4], rest.joints[0, 4], atol=1e-7)
    seg = lambda o: float((o.joints[0, 5] - o.joints[0, 4]).norm())  # noqa: E731
    assert seg(long) / seg(rest) == pytest.approx(math.exp(0.12), rel=1e-5)
    b = torch.zeros(1, 10)
    b[0, 6:] = 3.0                                 # reserved betas do nothing
    assert torch.allclose(hand(betas=b).vertices, rest.vertices, atol=1e-7)
    b = torch.zeros(1, 10)
    b[0, 3] = 1.0                                  # thicker: more volume, same finger joints
    thick = hand(betas=b)
    assert torch.allclose(thick.joints[0, :13], rest.joints[0, :13], atol=1e-7)
    assert to_trimesh(thick).volume > 1.1 * to_trimesh(rest).volume


# ---------------------------------------------------------------------------------------
# SDF
# ---------------------------------------------------------------------------------------


def near_surface_points(out: HandOutput, n: int, lo: float, hi: float, seed: int):
    """Points offset along the face normal by +-[lo, hi] from random surface points, and
    the side they were put on (True = outside)."""
    g = torch.Generator().manual_seed(seed)
    m = out.mesh(0)
    v = m.vertices.double()
    tri = v[m.faces]
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = fn.norm(dim=-1)
    fi = torch.multinomial(area, n, replacement=True, generator=g)
    bc = torch.rand(n, 3, generator=g, dtype=F64)
    bc = bc / bc.sum(1, keepdim=True)
    p = (tri[fi] * bc[..., None]).sum(1)
    side = torch.rand(n, generator=g) < 0.5
    off = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    q = p + torch.where(side, off, -off)[:, None] * (fn[fi] / area[fi, None])
    return q, m


def sign_agreement(hand, out, n=3000, lo=0.0015, hi=0.004, seed=0):
    from hoiguide.geometry import winding_number

    q, m = near_surface_points(out, n, lo, hi, seed)
    inside_mesh = winding_number(q, Mesh(m.vertices.double(), m.faces)) >= 0.5
    inside_sdf = hand.sdf(q[None], out)[0] < 0
    return float((inside_mesh == inside_sdf).double().mean())


def test_sdf_matches_rest_mesh(hand, rest):
    d = hand.sdf(rest.vertices.double(), rest)
    assert float(d.abs().max()) < 1e-4                # vertices lie on the zero level
    assert sign_agreement(hand, rest, lo=0.0005, hi=0.003) >= 0.995
    # far outside: a true distance; deep inside: negative
    # above the back of the palm (surface at z = 1 cm): the true distance near the hand; far
    # away a lower bound, short by at most the smooth unions' allowance (sum of k / 4)
    for z, tol in ((0.03, 1e-4), (0.06, 1e-3), (0.5, 0.012)):
        d = float(hand.sdf(torch.tensor([[[0.0, -0.05, z]]], dtype=F64), rest))
        assert z - 0.010 - tol <= d <= z - 0.010 + 1e-6
    palm = torch.tensor([[[0.0, -0.05, -0.0035]]], dtype=F64)
    assert float(hand.sdf(palm, rest)) < -0.01


def posed(hand, name):
    if name == "half":
        hp = hand.flexion_pose(torch.full((1, 5, 3), 0.5))
    elif name == "pinch":
        a = torch.tensor([[0.55, 0.45, 0.35], [0.55, 0.55, 0.35], [0.25, 0.3, 0.2],
                          [0.25, 0.3, 0.2], [0.25, 0.3, 0.2]])
        hp = hand.flexion_pose(a[None])
    elif name == "fist":
        hp = hand.flexion_pose(torch.ones(1, 5, 3))
    elif name == "mcp90":
        hp = pose_with({j: math.pi / 2 for j in (1, 4, 7, 10)})
    else:
        hp = pose_with({j: math.pi / 2 for j in (2, 5, 8, 11)})
    return hand(global_orient=torch.tensor([[0.4, -0.3, 1.0]]), hand_pose=hp,
                transl=torch.tensor([[0.0, 0.0, 0.5]]))


@pytest.mark.parametrize("name", ["half", "pinch", "mcp90", "pip90"])
def test_sdf_agrees_with_skinned_mesh(hand, name):
    """Plain linear blend skinning departs from the rigidly posed primitives near bent
    joints (corners cut on the extensor side, skin buried on the flexor side): ~0.2-0.5 mm
    on average, a few mm at worst."""
    out = posed(hand, name)
    assert sign_agreement(hand, out) >= 0.97
    d = hand.sdf(out.vertices, out)[0]
    assert float(d.abs().mean()) < 1e-3
    assert float(d.max()) < 0.004                     # nothing bulges far out of the SDF


@pytest.mark.parametrize("name", ["half", "pinch", "mcp90", "pip90", "fist"])
def test_surface_projection_makes_mesh_consistent(name):
    proj = ProceduralHand(surface_projection=1)
    out = posed(proj, name)
    need = 0.96 if name == "fist" else 0.99           # the fist presses fingers into the palm
    assert sign_agreement(proj, out) >= need
    d = proj.sdf(out.vertices, out)[0]
    shallow = d > -0.003                              # deeper skin is a fold, left alone
    assert float(d[shallow].abs().quantile(0.95)) < (1.5e-3 if name == "fist" else 3e-4)
    assert to_trimesh(out).is_watertight


def test_surface_projection_gradient():
    """The Newton step is differentiated exactly: compare with central differences."""
    proj = ProceduralHand(surface_projection=1)
    hp0 = proj.flexion_pose(torch.full((1, 5, 3), 0.4, dtype=F64))
    w = torch.randn(proj.template_vertices.shape[0], 3, dtype=F64,
                    generator=torch.Generator().manual_seed(0))

    def loss(hp):
        return (proj(hand_pose=hp).vertices[0] * w).sum()

    hp = hp0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(hp), hp)
    for k in (0, 3, 15, 39):                         # index MCP, PIP, ring MCP, thumb CMC
        e = torch.zeros_like(hp0)
        e[0, k] = 1e-5
        fd = (loss(hp0 + e) - loss(hp0 - e)) / 2e-5
        assert float(g[0, k]) == pytest.approx(float(fd), rel=1e-4, abs=1e-7)


# ---------------------------------------------------------------------------------------
# float64 gradients
# ---------------------------------------------------------------------------------------


def test_gradcheck_forward(hand):
    go, hp, beta, t = random_pose(hand, 1, seed=5)
    ids = torch.tensor(list(range(0, hand.template_vertices.shape[0], 397)))

    def f(go, hp6, beta, t):
        full = torch.cat([hp6, hp[:, 6:]], 1)                 # index MCP/PIP + the rest fixed
        out = hand(go, full, beta, t)
        return out.keypoints, out.vertices[:, ids], out.transforms

    inputs = tuple(x.clone().requires_grad_(True) for x in (go, hp[:, :6], beta, t))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_sdf(hand):
    go, hp, beta, t = random_pose(hand, 1, seed=6)
    out0 = hand(go, hp, beta, t)
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, out0.vertices.shape[1], (24,), generator=g)
    pts = out0.vertices[:, idx] + 0.006 * torch.randn(1, 24, 3, generator=g, dtype=F64)

    def f(p, go, hp_sub, beta):
        full = torch.cat([hp[:, :36], hp_sub], 1)             # thumb joints + the rest fixed
        return hand.sdf(p, hand(go, full, beta, t))

    inputs = (pts.clone().requires_grad_(True), go.clone().requires_grad_(True),
              hp[:, 36:].clone().requires_grad_(True), beta.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6)
    # the gradient w.r.t. points is a unit vector away from the blends
    p = pts.clone().requires_grad_(True)
    (gp,) = torch.autograd.grad(hand.sdf(p, out0).sum(), p)
    assert float((gp.norm(dim=-1) - 1).abs().median()) < 1e-6
