"""hoiguide.adapters.hand: the keypoint fit (on keypoints projected from a known procedural
hand), the MediaPipe call path against a fake with mediapipe's result layout, and HaMeR's
documented output (fake network, MANO-format random arrays) into the crop camera frame.

The real mediapipe package is not installed in the test environment (mediapipe 0.10.21 pins
numpy < 2 and opencv-contrib), so its own detector is not exercised here."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hoiguide.adapters import (HandEstimate, HaMeREstimator, MediaPipeHandEstimator,
                               NoDetectionError, WeightsNotFoundError, fit_hand_to_keypoints,
                               hamer_to_hand_estimate, mediapipe_to_keypoints)
from hoiguide.adapters.keypoint_fit import _keypoint_model
from hoiguide.hands import MANO_TIP_IDS_SMPLX, ManoLayer, ProceduralHand
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Camera

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models run fastest single-threaded (the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hands():
    return {s: ProceduralHand(s, detail=0) for s in ("right", "left")}


CAM = Camera(300.0, 300.0, 128.0, 128.0, 256, 256)


def _posed(hand, seed):
    rng = np.random.default_rng(seed)
    hp = hand.flexion_pose(torch.tensor(rng.uniform(0, 0.6, (1, 5, 3)), dtype=torch.float32))
    axis = rng.normal(size=3)
    go = torch.tensor(axis / np.linalg.norm(axis) * rng.uniform(0.2, 1.0),
                      dtype=torch.float32)[None]
    tr = torch.tensor([[rng.uniform(-0.03, 0.03), rng.uniform(0.0, 0.05),
                        rng.uniform(0.38, 0.55)]], dtype=torch.float32)
    K = hand(go, hp, transl=tr).keypoints[0].double()
    return K, torch.as_tensor(CAM.project(K.numpy()))


# -- the fit --------------------------------------------------------------------------------


def test_keypoint_model_matches_the_full_model(hands):
    for side, hand in hands.items():
        km = _keypoint_model(hand)
        assert km.template_vertices.shape[0] == 5 and hand.template_vertices.shape[0] > 1000
        go = torch.tensor([[0.3, -0.5, 0.2]])
        hp = hand.flexion_pose(torch.full((1, 5, 3), 0.4))
        b = torch.linspace(-1, 1, 10)[None]
        tr = torch.tensor([[0.01, 0.02, 0.45]])
        assert torch.allclose(hand(go, hp, b, tr).keypoints, km(go, hp, b, tr).keypoints,
                              atol=1e-6)


@pytest.mark.parametrize("seed", [0, 5])
def test_fit_recovers_a_projected_hand_with_depth_hint(hands, seed):
    hand = hands["right"]
    K, uv = _posed(hand, seed)
    hint = (K[:, 2] - K[0, 2]) * CAM.fx / K[0, 2]          # MediaPipe-like relative depth, px
    est = fit_hand_to_keypoints(hand, uv, CAM, depth_hint=hint, iterations=200)
    assert isinstance(est, HandEstimate) and est.side == "right" and est.model == "procedural"
    # documented accuracy: reprojection below 1 px on a 256 px crop, hand shape within a few
    # mm relative to the wrist, distance within 4 %
    assert est.params["reprojection_error_px"] < 1.0
    assert est.reprojection_error() == pytest.approx(est.params["reprojection_error_px"],
                                                     rel=1e-4)
    rel = (est.keypoints_3d.double() - est.keypoints_3d[0].double()) - (K - K[0])
    assert float(rel.norm(dim=-1).mean()) < 0.005
    assert abs(float(est.keypoints_3d[0, 2]) - float(K[0, 2])) < 0.04 * float(K[0, 2])
    # params reproduce the result
    p = est.params
    out = hand(p["global_orient"][None], p["hand_pose"][None], p["betas"][None],
               p["transl"][None])
    assert torch.allclose(out.vertices[0], est.vertices, atol=1e-5)
    assert torch.allclose(out.keypoints[0], est.keypoints_3d, atol=1e-5)
    lo, hi = hand.pose_limits
    assert bool((p["hand_pose"].reshape(15, 3) >= lo - 1e-6).all() and
                (p["hand_pose"].reshape(15, 3) <= hi + 1e-6).all())


def test_fit_without_hint_and_left_hand(hands):
    hand = hands["left"]
    K, uv = _posed(hand, 2)
    est = fit_hand_to_keypoints(hand, uv, CAM, iterations=150)
    assert est.side == "left" and est.params["reprojection_error_px"] < 2.5
    # a start from a given estimate (one start only)
    again = fit_hand_to_keypoints(hand, uv, CAM, init=est.params, iterations=20)
    assert again.params["num_starts"] == 1
    assert again.params["reprojection_error_px"] < est.params["reprojection_error_px"] + 0.5


def test_fit_bad_input(hands):
    with pytest.raises(ValueError, match=r"\(21, 2\)"):
        fit_hand_to_keypoints(hands["right"], np.zeros((20, 2)), CAM)
    with pytest.raises(ValueError, match=r"\(21,\) depth_hint"):
        fit_hand_to_keypoints(hands["right"], np.zeros((21, 2)), CAM, depth_hint=np.zeros(3))
    with pytest.raises(TypeError, match="Camera"):
        fit_hand_to_keypoints(hands["right"], np.zeros((21, 2)), None)


# -- MediaPipe --------------------------------------------------------------------------------


def _landmark_list(uv, depth_px, W, H):
    """mediapipe's NormalizedLandmarkList layout: .landmark[i].x/.y/.z (+ visibility)."""
    return SimpleNamespace(landmark=[SimpleNamespace(x=float(u) / W, y=float(v) / H,
                                                     z=float(d) / W, visibility=0.0,
                                                     presence=0.0)
                                     for (u, v), d in zip(uv.tolist(), depth_px.tolist())])


def _handedness(label, score, index):
    return SimpleNamespace(classification=[SimpleNamespace(index=index, score=score,
                                                           label=label)])


class FakeHands:
    """``mediapipe.solutions.hands.Hands``-like: process(rgb) -> result with
    multi_hand_landmarks / multi_handedness / multi_hand_world_landmarks (None if none)."""

    def __init__(self, hands_):
        self.hands_ = hands_
        self.seen = []

    def process(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.seen.append(image.shape)
        if not self.hands_:
            return SimpleNamespace(multi_hand_landmarks=None, multi_handedness=None,
                                   multi_hand_world_landmarks=None)
        return SimpleNamespace(
            multi_hand_landmarks=[h[0] for h in self.hands_],
            multi_handedness=[h[1] for h in self.hands_],
            multi_hand_world_landmarks=[h[0] for h in self.hands_])

    def close(self):
        pass


def test_mediapipe_to_keypoints_units():
    uv = np.stack([np.linspace(10, 200, 21), np.linspace(30, 90, 21)], -1)
    d = np.linspace(-5, 20, 21)
    kp, depth = mediapipe_to_keypoints(_landmark_list(uv, d, 256, 128), 256, 128)
    np.testing.assert_allclose(kp, uv, atol=1e-9)
    np.testing.assert_allclose(depth, d - d[0], atol=1e-9)
    with pytest.raises(ValueError, match="21"):
        mediapipe_to_keypoints(np.zeros((20, 3)), 10, 10)


def test_mediapipe_path_with_a_fake_detector(hands):
    K, uv = _posed(hands["right"], 0)
    depth = (K[:, 2] - K[0, 2]) * CAM.fx / K[0, 2]
    right = (_landmark_list(uv, depth, 256, 256), _handedness("Left", 0.97, 0))  # selfie label
    decoy_uv = uv * 0.3 + 10
    decoy = (_landmark_list(decoy_uv, depth * 0.3, 256, 256), _handedness("Right", 0.6, 1))
    fake = FakeHands([decoy, right])
    est_ = MediaPipeHandEstimator(fake, hand_model=lambda s: hands[s], iterations=120)
    img = np.zeros((256, 256, 3), np.uint8)
    dets = est_.detect(img)
    assert [d["side"] for d in dets] == ["left", "right"]   # handedness swapped for a photo
    est = est_(img, CAM)
    assert est.side == "right" and est.params["detector"] == "mediapipe"
    assert est.params["reprojection_error_px"] < 1.5
    np.testing.assert_allclose(est.keypoints_2d.numpy(), uv.numpy(), atol=1e-3)
    assert torch.allclose(est.keypoint_confidence, torch.full((21,), 0.97))
    # side and box select the other hand
    assert est_(img, CAM, side="left").side == "left"
    assert est_(img, CAM, hand_box=(0, 0, 80, 80)).side == "left"
    # a selfie: labels are taken as they are
    mirrored = MediaPipeHandEstimator(fake, hand_model=lambda s: hands[s], iterations=5,
                                      image_is_mirrored=True)
    assert [d["side"] for d in mirrored.detect(img)] == ["right", "left"]
    with pytest.raises(NoDetectionError, match="no hand"):
        MediaPipeHandEstimator(FakeHands([]), hand_model=lambda s: hands[s])(img, CAM)
    # handedness disagreeing with the caller: the caller's side is fitted to the best hand
    forced = MediaPipeHandEstimator(FakeHands([right]), hand_model=lambda s: hands[s],
                                    iterations=5)(img, CAM, side="left")
    assert forced.side == "left"
    np.testing.assert_allclose(forced.keypoints_2d.numpy(), uv.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="image's Camera"):
        est_(np.zeros((100, 256, 3), np.uint8), CAM)


def test_mediapipe_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ImportError, match=r"mediapipe==0\.10\.21"):
        MediaPipeHandEstimator().detect(np.zeros((8, 8, 3), np.uint8))


# -- HaMeR --------------------------------------------------------------------------------


PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


def _fake_mano(seed=0, V=778, F=300):
    """MANO-format arrays with random values (no MANO data in the repository)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(scale=0.03, size=(V, 3)) + np.array([0.0, -0.05, 0.0])
    w = rng.random((V, 16)) ** 6
    w /= w.sum(1, keepdims=True)
    jreg = rng.random((16, V)) ** 8
    jreg /= jreg.sum(1, keepdims=True)
    data = {"v_template": v, "f": rng.integers(0, V, (F, 3)), "weights": w,
            "posedirs": rng.normal(scale=1e-3, size=(V, 3, 135)),
            "shapedirs": rng.normal(scale=1e-3, size=(V, 3, 10)), "J_regressor": jreg,
            "kintree_table": np.array([[2 ** 32 - 1] + PARENTS[1:], list(range(16))]),
            "hands_mean": rng.normal(scale=0.1, size=45)}
    return ManoLayer.from_arrays(data, side="right", flat_hand_mean=True,
                                 fingertip_vertex_ids=MANO_TIP_IDS_SMPLX)


@pytest.fixture(scope="module")
def mano():
    return _fake_mano()


def _rotmats(seed):
    rng = np.random.default_rng(seed)
    go = axis_angle_to_matrix(torch.tensor(rng.normal(scale=0.8, size=(1, 3))))
    hp = axis_angle_to_matrix(torch.tensor(rng.normal(scale=0.3, size=(15, 3))))
    return go, hp, torch.tensor(rng.normal(scale=0.5, size=10))


class FakeHaMeR(torch.nn.Module):
    """Returns HaMeR's documented output for a fixed hand whose true translation in the image
    camera is ``T``; pred_cam is what HaMeR's cam_crop_to_full would turn back into ``T``."""

    def __init__(self, mano, camera, center, size, T, seed=0, F=5000.0, S=256):
        super().__init__()
        go, hp, betas = _rotmats(seed)
        with torch.no_grad():
            from hoiguide.rotations import matrix_to_axis_angle
            out = mano(matrix_to_axis_angle(go).reshape(1, 3), matrix_to_axis_angle(hp)
                       .reshape(1, 45), betas[None])
        self.V, self.K = out.vertices[0].double(), out.keypoints[0].double()
        Tx, Ty, Tz = T
        s = 2 * camera.fx / (size * Tz)
        tx = Tx - (center[0] - camera.cx) * Tz / camera.fx
        ty = Ty - (center[1] - camera.cy) * Tz / camera.fy
        self.pred_cam = torch.tensor([[s, tx, ty]], dtype=F64)
        cam_t = torch.tensor([tx, ty, 2 * F / (S * s)], dtype=F64)
        Kc = self.K + cam_t
        self.kp2d = F / S * Kc[:, :2] / Kc[:, 2:]
        self.go, self.hp, self.betas = go, hp, betas
        self.inputs = []

    def forward(self, batch):
        self.inputs.append(batch["img"].clone())
        return {"pred_cam": self.pred_cam.float(),
                "pred_mano_params": {"global_orient": self.go[None].float(),
                                     "hand_pose": self.hp[None].float(),
                                     "betas": self.betas[None].float()},
                "pred_vertices": self.V[None].float(), "pred_keypoints_3d": self.K[None].float(),
                "pred_keypoints_2d": self.kp2d[None].float()}


def test_hamer_output_into_the_crop_camera(mano):
    cam = Camera(400.0, 390.0, 120.0, 140.0, 256, 256)           # off-centre, like a crop
    est_ = HaMeREstimator(None, mano=mano, device="cpu")
    box = (80.0, 90.0, 150.0, 170.0)
    center, size = est_.patch_box(box)
    # HaMeR's rule: 2x the box (140 x 160), grown to 192:256 (140 x 186.7), the longer side
    assert center == (115.0, 130.0) and size == pytest.approx(140 * 256 / 192)
    T = (0.02, -0.01, 0.5)
    net = FakeHaMeR(mano, cam, center, size, T)
    est_.model = net
    img = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    est = est_(img, box, "right", camera=cam)
    assert est.model == "mano" and est.side == "right" and est.camera == cam
    Tt = torch.tensor(T, dtype=F64)
    assert torch.allclose(est.vertices.double(), net.V + Tt, atol=1e-5)
    assert torch.allclose(est.keypoints_3d.double(), net.K + Tt, atol=1e-5)
    assert torch.equal(est.faces, mano.faces)
    # 2D keypoints: HaMeR's patch units mapped into the image
    expected = net.kp2d * size + torch.tensor(center, dtype=F64)
    assert torch.allclose(est.keypoints_2d.double(), expected, atol=1e-3)
    # the weak-perspective placement agrees with the image camera at the hand's centre
    proj = torch.as_tensor(cam.project(est.keypoints_3d.double().mean(0).numpy()))
    assert float((proj - est.keypoints_2d.double().mean(0)).norm()) < 0.05 * size
    # params reproduce the mesh through the MANO layer
    p = est.params
    out = mano(p["global_orient"][None].double(), p["hand_pose"][None].double(),
               p["betas"][None].double(), p["transl"][None].double())
    assert torch.allclose(out.vertices[0], est.vertices.double(), atol=1e-5)
    # the input patch: normalised RGB, 256 px
    x = net.inputs[-1]
    assert x.shape == (1, 3, 256, 256)


def test_hamer_left_hand_is_the_mirror_image(mano):
    cam = Camera(400.0, 400.0, 128.0, 128.0, 256, 256)           # symmetric principal point
    rng = np.random.default_rng(1)
    img = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    box = (60.0, 80.0, 130.0, 170.0)
    est_ = HaMeREstimator(None, mano=mano, device="cpu")
    center, size = est_.patch_box(box)
    net = FakeHaMeR(mano, cam, center, size, (-0.03, 0.01, 0.45), seed=3)
    est_.model = net
    right = est_(img, box, "right", camera=cam)
    left = est_(img[:, ::-1].copy(), (256 - box[2], box[1], 256 - box[0], box[3]), "left",
                camera=cam)
    # HaMeR sees the same (mirrored-back) patch, so returns the same right-hand output
    # (up to uint8 rounding: one level is 1 / 255 / 0.225 = 0.017 after normalisation)
    assert torch.allclose(net.inputs[0], net.inputs[1], atol=0.02)
    m = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(left.vertices, right.vertices * m, atol=1e-5)
    assert torch.allclose(left.keypoints_3d, right.keypoints_3d * m, atol=1e-5)
    k2 = right.keypoints_2d.clone()
    k2[:, 0] = 256 - k2[:, 0]
    assert torch.allclose(left.keypoints_2d, k2, atol=1e-3)
    assert torch.equal(left.faces, right.faces[:, [0, 2, 1]]) and left.side == "left"


def test_hamer_without_mano_uses_its_own_vertices(mano):
    cam = Camera(400.0, 400.0, 128.0, 128.0, 256, 256)
    net = FakeHaMeR(mano, cam, (100.0, 100.0), 120.0, (0.0, 0.0, 0.5))
    out = net({"img": torch.zeros(1, 3, 256, 256)})
    est = hamer_to_hand_estimate(out, box_center=(100.0, 100.0), box_size=120.0, camera=cam,
                                 faces=mano.faces)
    assert torch.allclose(est.vertices.double(), net.V + torch.tensor([0, 0, 0.5], dtype=F64),
                          atol=1e-5)
    with pytest.raises(ValueError, match="pred_cam"):
        hamer_to_hand_estimate({}, box_center=(0, 0), box_size=1.0, camera=cam, faces=mano.faces)
    bad = dict(out, pred_cam=torch.tensor([[-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="scale must be positive"):
        hamer_to_hand_estimate(bad, box_center=(0, 0), box_size=1.0, camera=cam,
                               faces=mano.faces)


def test_hamer_missing_files_and_package(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="(?s)hamer.ckpt.*model_config.yaml.*MANO"):
        HaMeREstimator.from_pretrained(tmp_path / "ck" / "checkpoints" / "hamer.ckpt",
                                       tmp_path / "mano")
    ck = tmp_path / "ck" / "checkpoints" / "hamer.ckpt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"x")
    (tmp_path / "ck" / "model_config.yaml").write_text("MODEL: {}\n")
    (tmp_path / "mano").mkdir()
    (tmp_path / "mano" / "MANO_RIGHT.pkl").write_bytes(b"x")
    with pytest.raises(ImportError, match="git\\+https://github.com/geopavlakos/hamer.git"):
        HaMeREstimator.from_pretrained(ck, tmp_path / "mano")


def test_hand_estimate_validation(mano):
    with pytest.raises(ValueError, match=r"keypoints_3d: expected shape \(21, 3\)"):
        HandEstimate(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long), torch.zeros(20, 3),
                     torch.zeros(21, 2), torch.ones(21), "right", "mano")
    with pytest.raises(ValueError, match="side"):
        HandEstimate(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.long), torch.zeros(21, 3),
                     torch.zeros(21, 2), torch.ones(21), "both", "mano")
    with pytest.raises(ValueError, match="MANO layer"):
        HaMeREstimator(None)
