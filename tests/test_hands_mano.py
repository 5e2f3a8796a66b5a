"""Tests of hoiguide.hands.mano with a MANO-format file written here (random values, the
right shapes; no MANO data is ever committed): the restricted unpickler, and the layer
against a naive per-vertex numpy implementation of MANO."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from hoiguide.hands import MANO_TIP_IDS, MANO_TIP_IDS_SMPLX, ManoLayer, load_mano_file

F64 = torch.float64
V, F = 778, 1538
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


# ---------------------------------------------------------------------------------------
# writing MANO-format files
# ---------------------------------------------------------------------------------------


class _FakeChumpy:
    """Installs a stand-in ``chumpy.ch.Ch`` in ``sys.modules`` so pickles reference
    ``chumpy.ch.Ch`` exactly as the official files do; removed again on exit."""

    def __enter__(self):
        pkg = types.ModuleType("chumpy")
        mod = types.ModuleType("chumpy.ch")

        class Ch:  # like chumpy: the array lives in the attribute 'x'
            def __init__(self, x):
                self.x = np.asarray(x)

        Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
        mod.Ch = Ch
        pkg.ch = mod
        self._saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
        sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
        return Ch

    def __exit__(self, *exc):
        for k, v in self._saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def fake_mano_arrays(seed: int = 0) -> dict:
    """MANO-shaped arrays with random values (J_regressor as scipy.sparse csc)."""
    rng = np.random.default_rng(seed)
    w = rng.random((V, 16)) ** 4
    w /= w.sum(1, keepdims=True)
    jreg = np.zeros((16, V))
    for j in range(16):
        ids = rng.choice(V, 12, replace=False)
        jreg[j, ids] = rng.random(12)
        jreg[j] /= jreg[j].sum()
    comps, _ = np.linalg.qr(rng.standard_normal((45, 45)))
    kintree = np.array([[2 ** 32 - 1] + PARENTS[1:], list(range(16))], dtype=np.int64)
    return {
        "v_template": rng.standard_normal((V, 3)) * 0.03,
        "f": rng.integers(0, V, (F, 3)).astype(np.uint32),
        "weights": w,
        "posedirs": rng.standard_normal((V, 3, 135)) * 1e-3,
        "shapedirs": rng.standard_normal((V, 3, 10)) * 1e-3,
        "J_regressor": scipy.sparse.csc_matrix(jreg),
        "kintree_table": kintree,
        "hands_components": comps.T.copy(),
        "hands_mean": rng.standard_normal(45) * 0.2,
        "hands_coeffs": rng.standard_normal((20, 45)),
        "J": rng.standard_normal((16, 3)) * 0.03,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_mano_pickle(path, data: dict, protocol: int = 2,
                      chumpy_keys=("v_template", "shapedirs", "weights")) -> None:
    """Write ``data`` as the official files are laid out: a pickled dict in which some
    arrays are chumpy objects (``chumpy.ch.Ch``)."""
    with _FakeChumpy() as Ch:
        obj = {k: (Ch(v) if k in chumpy_keys else v) for k, v in data.items()}
        blob = pickle.dumps(obj, protocol=protocol)
    assert b"chumpy.ch" in blob or b"chumpy" in blob
    with open(path, "wb") as f:
        f.write(blob)


@pytest.fixture(scope="module")
def data():
    return fake_mano_arrays()


@pytest.fixture(scope="module")
def mano_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl"
    write_mano_pickle(path, data)
    return path


# ---------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_loads_generated_file_without_chumpy(tmp_path, data, protocol):
    path = tmp_path / "MANO_RIGHT.pkl"
    write_mano_pickle(path, data, protocol=protocol)
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    out = load_mano_file(path)
    assert set(out) == set(data)
    for k, v in data.items():
        if isinstance(v, str):
            assert out[k] == v
            continue
        assert isinstance(out[k], np.ndarray), k
        ref = v.toarray() if scipy.sparse.issparse(v) else v
        assert out[k].shape == ref.shape and np.array_equal(out[k], ref), k
    assert out["J_regressor"].shape == (16, V)
    assert "chumpy" not in sys.modules


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_refuses_malicious_pickle(tmp_path, data, protocol):
    marker = tmp_path / "marker"
    for payload, name in ((_Evil(marker), "system"), (_EvalEvil(), "eval")):
        path = tmp_path / "MANO_RIGHT.pkl"
        # hidden among real MANO entries, as a value
        obj = dict(data, weights=payload)
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(pickle.UnpicklingError, match=name):
            load_mano_file(path)
        # or as the whole file
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        with pytest.raises(pickle.UnpicklingError, match=name):
            load_mano_file(path)
    assert not marker.exists()


def test_refuses_other_globals_and_non_dicts(tmp_path):
    path = tmp_path / "x.pkl"
    for module, name in (("numpy", "load"), ("builtins", "getattr"), ("subprocess", "Popen"),
                         ("chumpy.ch", "__import__"), ("scipy.sparse", "load_npz")):
        path.write_bytes(f"c{module}\n{name}\n.".encode())        # GLOBAL + STOP
        with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
            load_mano_file(path)
    path.write_bytes(pickle.dumps({"f": scipy.sparse.lil_matrix((2, 2))}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="lil_matrix"):
        load_mano_file(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="dict"):
        load_mano_file(path)
    with pytest.raises(FileNotFoundError):
        load_mano_file(tmp_path / "missing.pkl")


# ---------------------------------------------------------------------------------------
# the layer against a naive numpy MANO
# ---------------------------------------------------------------------------------------


def rodrigues(aa: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(aa)
    if theta < 1e-12:
        return np.eye(3)
    k = aa / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def naive_mano(d: dict, go, hp, betas, transl, flat_hand_mean=False):
    """MANO written out per joint and per vertex, float64 numpy."""
    jreg = d["J_regressor"].toarray()
    full = np.concatenate([go, hp + (0 if flat_hand_mean else d["hands_mean"])])
    Rs = [rodrigues(full[3 * j:3 * j + 3]) for j in range(16)]
    v_shaped = d["v_template"] + d["shapedirs"][..., :len(betas)] @ betas
    J = jreg @ v_shaped
    feat = np.concatenate([(Rs[j] - np.eye(3)).ravel() for j in range(1, 16)])
    v_posed = v_shaped + d["posedirs"] @ feat
    world = []
    for j in range(16):
        local = np.eye(4)
        local[:3, :3] = Rs[j]
        local[:3, 3] = J[j] - (J[PARENTS[j]] if j else 0)
        world.append(local if j == 0 else world[PARENTS[j]] @ local)
    A = []
    for j in range(16):
        rel = world[j].copy()
        rel[:3, 3] -= world[j][:3, :3] @ J[j]
        A.append(rel)
    verts = np.zeros((V, 3))
    for i in range(V):
        T = sum(d["weights"][i, j] * A[j] for j in range(16))
        verts[i] = (T @ np.append(v_posed[i], 1.0))[:3] + transl
    joints = np.array([w[:3, 3] for w in world]) + transl
    return verts, joints


def test_output_shapes_and_keypoints(mano_file):
    layer = ManoLayer(mano_file)                    # side from the file name
    assert layer.side == "right" and layer.num_betas == 10
    out = layer(hand_pose=torch.zeros(2, 45))
    assert out.vertices.shape == (2, V, 3) and out.vertices.dtype == torch.float32
    assert out.keypoints.shape == (2, 21, 3) and out.joints.shape == (2, 16, 3)
    assert out.transforms.shape == (2, 16, 4, 4)
    assert out.faces.shape == (F, 3) and out.faces.dtype == torch.int64
    assert layer.fingertip_vertex_ids == MANO_TIP_IDS == (745, 317, 444, 556, 673)
    assert torch.equal(out.keypoints[:, [4, 8, 12, 16, 20]],
                       out.vertices[:, [745, 317, 444, 556, 673]])
    order = [0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9]
    kp_joint = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert torch.equal(out.keypoints[:, kp_joint], out.joints[:, order])
    smplx = ManoLayer(mano_file, fingertip_vertex_ids=MANO_TIP_IDS_SMPLX)
    assert torch.equal(smplx().keypoints[:, 4], smplx().vertices[:, 744])
    m = out.mesh(1)
    assert m.num_vertices == V and m.num_faces == F


@pytest.mark.parametrize("flat", [False, True])
def test_lbs_matches_naive_numpy(data, flat):
    rng = np.random.default_rng(1)
    layer = ManoLayer.from_arrays(data, flat_hand_mean=flat)
    for _ in range(2):
        go, hp = rng.standard_normal(3) * 0.8, rng.standard_normal(45) * 0.4
        betas, transl = rng.standard_normal(10), rng.standard_normal(3) * 0.1
        out = layer(*(torch.tensor(x[None]) for x in (go, hp, betas, transl)))
        verts, joints = naive_mano(data, go, hp, betas, transl, flat_hand_mean=flat)
        assert out.vertices.dtype == F64
        assert np.allclose(out.vertices[0].numpy(), verts, atol=1e-12, rtol=0)
        assert np.allclose(out.joints[0].numpy(), joints, atol=1e-12, rtol=0)
        assert np.allclose(out.keypoints[0, 8].numpy(), verts[317], atol=1e-12)


def test_pca_pose_path(data):
    ncomp = 6
    pca = ManoLayer.from_arrays(data, use_pca=True, num_pca_comps=ncomp)
    full = ManoLayer.from_arrays(data)
    coeffs = torch.randn(3, ncomp, dtype=F64)
    pose = coeffs @ torch.tensor(data["hands_components"][:ncomp])
    a, b = pca(hand_pose=coeffs), full(hand_pose=pose)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-12)
    with pytest.raises(ValueError, match=r"hand_pose of shape \(B, 6\)"):
        pca(hand_pose=torch.zeros(1, 45))
    # flat_hand_mean: zero pose there == the mean pose of a layer without it
    flat = ManoLayer.from_arrays(data, flat_hand_mean=True)
    mean = torch.tensor(data["hands_mean"])[None]
    zero = torch.zeros(1, 45, dtype=F64)
    assert torch.allclose(flat(hand_pose=mean).vertices, full(hand_pose=zero).vertices,
                          atol=1e-12)


def test_gradcheck(data):
    layer = ManoLayer.from_arrays(data, num_betas=4)
    g = torch.Generator().manual_seed(2)
    inputs = tuple((torch.randn(1, n, generator=g, dtype=F64) * 0.3).requires_grad_(True)
                   for n in (3, 45, 4, 3))

    def f(*x):
        out = layer(*x)
        return out.keypoints, out.vertices[:, ::97]

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_arguments_and_bad_data(tmp_path, data, mano_file):
    with pytest.raises(ValueError, match="posedirs"):
        ManoLayer.from_arrays(dict(data, posedirs=np.zeros((V, 3, 10))))
    with pytest.raises(ValueError, match="missing 'weights'"):
        ManoLayer.from_arrays({k: v for k, v in data.items() if k != "weights"})
    with pytest.raises(ValueError, match="num_betas"):
        ManoLayer.from_arrays(data, num_betas=11)
    with pytest.raises(ValueError, match="kintree"):
        bad = data["kintree_table"].copy()
        bad[0, 1] = 5
        ManoLayer.from_arrays(dict(data, kintree_table=bad))
    odd = tmp_path / "hand_model.pkl"
    odd.write_bytes(mano_file.read_bytes())
    with pytest.raises(ValueError, match="side"):
        ManoLayer(odd)
    assert ManoLayer(odd, side="left").side == "left"
    assert ManoLayer(mano_file.parent).side == "right"       # a folder with MANO_RIGHT.pkl
    layer = ManoLayer(mano_file, num_betas=3)
    with pytest.raises(ValueError, match=r"betas of shape \(B, 3\)"):
        layer(betas=torch.zeros(1, 10))
    out = layer(betas=torch.zeros(1, 3, dtype=F64))
    assert out.vertices.dtype == F64
