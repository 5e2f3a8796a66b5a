"""Small dataset folders written in each benchmark's documented layout, for the loader and
evaluation tests: a handful of frames, tiny images, a fake MANO model of the right format
(random values, the right shapes: tests/test_hands_mano.py) and small box-shaped objects.

Every builder returns ``truth``: per frame id what the loader must produce, computed here
independently of the loaders (naive per-vertex MANO from test_hands_mano.py, numpy poses,
the toolkits' projection ``K @ X`` in their OpenCV pixel convention)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from test_hands_mano import fake_mano_arrays, naive_mano, write_mano_pickle

TIPS = (745, 317, 444, 556, 673)              # manopth (DexYCB)
HO3D_TIPS = (744, 333, 444, 555, 672)         # HO-3D's patched MANO
SMPLX_TIPS = (744, 320, 443, 554, 671)        # smplx (ARCTIC)
# MANO order (16 joints + 5 tips thumb..pinky) -> OpenPose order
OPENPOSE = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
GL = np.diag([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------- shared
def write_mano_dir(d: Path) -> dict:
    """MANO_RIGHT.pkl and MANO_LEFT.pkl (different random arrays) in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"right": fake_mano_arrays(0), "left": fake_mano_arrays(1)}
    for side, a in arrays.items():
        write_mano_pickle(d / f"MANO_{side.upper()}.pkl", a)
    return arrays


def mano_truth(arrays: dict, go, hp, betas, transl, *, flat: bool, tips) -> tuple:
    """Naive MANO: vertices (778, 3) and OpenPose-order keypoints (21, 3); also the 21
    joints in MANO order (16 joints + the tips) as HO-3D stores them."""
    verts, joints = naive_mano(arrays, np.asarray(go, float), np.asarray(hp, float),
                               np.asarray(betas, float), np.asarray(transl, float),
                               flat_hand_mean=flat)
    mano_order = np.concatenate([joints, verts[list(tips)]])
    return verts, mano_order[OPENPOSE], mano_order


def project_cv(K, X) -> np.ndarray:
    """The toolkits' projection: OpenCV pixels (pixel centres at integers)."""
    X = np.asarray(X, float)
    uv = X @ np.asarray(K, float).T
    return uv[:, :2] / uv[:, 2:3]


def box(extents=(0.04, 0.06, 0.03), offset=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    m = trimesh.creation.box(extents=extents)
    return np.asarray(m.vertices, float) + np.asarray(offset, float), np.asarray(m.faces)


def write_obj(path: Path, v: np.ndarray, f: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"v {x:.10f} {y:.10f} {z:.10f}" for x, y, z in v]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_image(path: Path, w: int, h: int, seed: int = 0, *, dots=(), radius: float = 2.5
                ) -> np.ndarray:
    """A random-noise RGB image with optional white discs centred at OpenCV pixel
    positions (pixel centres at integers)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 100).astype(np.uint8)
    rows, cols = np.mgrid[0:h, 0:w]
    for u, v in dots:
        img[(cols - u) ** 2 + (rows - v) ** 2 <= radius ** 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img


def dump_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def rot(rotvec) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(rotvec, float)).as_matrix()


# ----------------------------------------------------------------------------- DexYCB
DEX_SUBJECT = "20200709-subject-01"
DEX_SEQ_R, DEX_SEQ_L = "20200709_141754", "20200709_142123"
DEX_SERIALS = ("836212060125", "839512060362")


def make_dexycb(root: Path, mano: dict, *, W: int = 64, H: int = 48) -> dict:
    """Two sequences (a right hand over two cameras with 3 frames, the last unannotated; a
    left hand, 2 frames, one camera)."""
    rng = np.random.default_rng(10)
    Ks = {DEX_SERIALS[0]: np.array([[80.0, 0, 31.3], [0, 82.0, 23.7], [0, 0, 1]]),
          DEX_SERIALS[1]: np.array([[75.0, 0, 30.1], [0, 76.0, 24.9], [0, 0, 1]])}
    for s, K in Ks.items():
        p = root / "calibration" / "intrinsics" / f"{s}_{W}x{H}.yml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"color:\n  fx: {K[0, 0]}\n  fy: {K[1, 1]}\n  ppx: {K[0, 2]}\n"
                     f"  ppy: {K[1, 2]}\ndepth:\n  fx: 1.0\n")
    betas = {"20200709-subject-01_right": rng.normal(size=10) * 0.5,
             "20200709-subject-01_left": rng.normal(size=10) * 0.5}
    for name, b in betas.items():
        p = root / "calibration" / f"mano_{name}" / "mano.yml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("betas:\n" + "".join(f"- {x!r}\n" for x in b.tolist()))
    objs = {2: "003_cracker_box", 5: "006_mustard_bottle"}
    canon = {2: box((0.06, 0.08, 0.02)), 5: box((0.03, 0.04, 0.09), offset=(0.01, 0, 0))}
    for i, n in objs.items():
        write_obj(root / "models" / n / "textured_simple.obj", *canon[i])
    truth = {}
    for seq, side, serials, nframes in ((DEX_SEQ_R, "right", DEX_SERIALS, 3),
                                        (DEX_SEQ_L, "left", DEX_SERIALS[:1], 2)):
        calib = f"20200709-subject-01_{side}"
        d = root / DEX_SUBJECT / seq
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.yml").write_text(
            "serials:\n" + "".join(f"- '{s}'\n" for s in serials) +
            f"num_frames: {nframes}\nycb_ids:\n- 2\n- 5\nycb_grasp_ind: 1\n"
            f"mano_sides:\n- {side}\nmano_calib:\n- {calib}\n")
        arrays = mano[side]
        for serial in serials:
            K = Ks[serial]
            for f in range(nframes):
                fid = f"{DEX_SUBJECT}__{seq}__{serial}__{f:06d}"
                write_image(d / serial / f"color_{f:06d}.jpg", W, H, seed=f)
                annotated = not (seq == DEX_SEQ_R and f == 2)
                pose_m = np.zeros((1, 51), np.float32)
                pose_y = np.zeros((2, 3, 4), np.float32)
                j3 = -np.ones((1, 21, 3), np.float32)
                j2 = -np.ones((1, 21, 2), np.float32)
                if annotated:
                    go = rng.normal(size=3) * 0.5
                    coeffs = rng.normal(size=45) * 0.3
                    transl = np.array([0.01, -0.02, 0.5]) + rng.normal(size=3) * 0.01
                    pose_m[0] = np.concatenate([go, coeffs, transl])
                    pm = pose_m[0].astype(np.float64)
                    hp = pm[3:48] @ arrays["hands_components"][:45]
                    verts, kp, _ = mano_truth(arrays, pm[:3], hp, betas[calib], pm[48:51],
                                              flat=False, tips=TIPS)
                    for o in range(2):
                        pose_y[o, :, :3] = rot(rng.normal(size=3))
                        pose_y[o, :, 3] = [0.0, 0.02, 0.55 + 0.05 * o]
                    j3[0] = kp
                    j2[0] = project_cv(K, kp)
                    P = pose_y[1].astype(np.float64)
                    truth[fid] = {"hand": verts, "kp3": kp.astype(np.float32).astype(float),
                                  "kp2_cv": j2[0].astype(float),
                                  "object": canon[5][0] @ P[:, :3].T + P[:, 3],
                                  "is_right": side == "right", "K": K}
                np.savez(d / serial / f"labels_{f:06d}.npz", seg=np.zeros((H, W), np.uint8),
                         pose_y=pose_y, pose_m=pose_m, joint_3d=j3, joint_2d=j2)
    return truth


# ----------------------------------------------------------------------------- HO-3D
def make_ho3d(root: Path, ycb: Path, mano: dict, *, W: int = 64, H: int = 48) -> dict:
    """train/ABF10 with two frames (one .png, one .jpg) and an evaluation frame without a
    hand pose; YCB models in ``ycb``."""
    rng = np.random.default_rng(20)
    K = np.array([[70.0, 0, 33.2], [0, 71.0, 22.6], [0, 0, 1]])
    canon = box((0.05, 0.05, 0.1), offset=(0, 0.01, 0))
    write_obj(ycb / "006_mustard_bottle" / "textured_simple.obj", *canon)
    truth = {}
    for i, ext in enumerate(("png", "jpg")):
        stem = f"{i:04d}"
        d = root / "train" / "ABF10"
        pose = rng.normal(size=48) * 0.4
        beta = rng.normal(size=10) * 0.5
        trans = np.array([0.01, -0.02, -0.45]) + rng.normal(size=3) * 0.01   # OpenGL: -z
        verts, _, joints21 = mano_truth(mano["right"], pose[:3], pose[3:], beta, trans,
                                        flat=True, tips=HO3D_TIPS)
        objrot = rng.normal(size=(3, 1))
        objtrans = np.array([0.0, 0.0, -0.5])
        obj_gl = canon[0] @ rot(objrot.ravel()).T + objtrans
        write_image(d / "rgb" / f"{stem}.{ext}", W, H, seed=i)
        dump_pickle(d / "meta" / f"{stem}.pkl", {
            "handPose": pose.astype(np.float32), "handBeta": beta.astype(np.float32),
            "handTrans": trans.astype(np.float32), "objRot": objrot.astype(np.float32),
            "objTrans": objtrans.astype(np.float32), "objName": "006_mustard_bottle",
            "camMat": K, "handJoints3D": joints21.astype(np.float32),
            "objCorners3DRest": np.zeros((8, 3), np.float32), "objLabel": 5})
        kp_cv = (joints21.astype(np.float32).astype(float) @ GL)[OPENPOSE]
        truth[f"train__ABF10__{stem}"] = {
            "hand": verts @ GL, "object": obj_gl @ GL, "kp3": kp_cv,
            "kp2_cv": project_cv(K, kp_cv), "K": K,
            "kp3_layer": mano_truth(mano["right"], pose[:3], pose[3:], beta, trans,
                                    flat=True, tips=HO3D_TIPS)[1] @ GL}
    d = root / "evaluation" / "SM1"
    write_image(d / "rgb" / "0000.jpg", W, H)
    dump_pickle(d / "meta" / "0000.pkl", {
        "handPose": None, "handBeta": None, "handTrans": None, "objRot": np.zeros((3, 1)),
        "objTrans": np.array([0.0, 0, -0.5]), "objName": "006_mustard_bottle", "camMat": K,
        "handJoints3D": np.array([0.0, 0, -0.5])})
    return truth


# ----------------------------------------------------------------------------- OakInk
OAK_SEQ = "A01001_0001_0000/2021-09-26-19-59-58"
OAK_HANDOVER = "C12001_0004_0005_0006/2021-10-03-16-33-24"
OAK_VIEWS = ("north_east", "south_east", "north_west", "south_west")


def make_oakink(root: Path, mano: dict, *, W: int = 80, H: int = 45) -> dict:
    """Two frames of one sequence (views 0 and 1) and a hand-over frame with two annotated
    hands (hand 1 grasps, hand 0 is 0.4 m away). Objects: an OBJ and a PLY, off-centre."""
    rng = np.random.default_rng(30)
    img = root / "image"
    canon = {"A01001": box((0.04, 0.05, 0.06), offset=(0.2, -0.1, 0.05)),
             "C12001": box((0.08, 0.03, 0.03), offset=(-0.05, 0.0, 0.3))}
    write_obj(img / "obj" / "A01001.obj", *canon["A01001"])
    (img / "obj").mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(*canon["C12001"], process=False).export(img / "obj" / "C12001.ply")
    entries, truth = [], {}
    frames = [(OAK_SEQ, 0, 10, 0), (OAK_SEQ, 0, 11, 1), (OAK_HANDOVER, 0, 5, 2),
              (OAK_HANDOVER, 1, 5, 2)]
    for seq, hand, frame, view in frames:
        entries.append([seq, hand, frame, view])
        key = f"{seq}__{hand}__{frame}__{view}".replace("/", "__")
        K = np.array([[90.0 + view, 0, 40.2], [0, 91.0, 22.1], [0, 0, 1]])
        obj_id = seq.split("_")[0]
        T = np.eye(4)
        T[:3, :3] = rot(rng.normal(size=3))
        T[:3, 3] = [0.0, 0.0, 0.6]
        v0 = canon[obj_id][0]
        centred = v0 - 0.5 * (v0.min(0) + v0.max(0))
        go, hp = rng.normal(size=3) * 0.5, rng.normal(size=45) * 0.3
        far = seq == OAK_HANDOVER and hand == 0
        transl = np.array([0.0, 0.0, 0.6]) + (np.array([0.4, 0, 0]) if far else 0)
        verts, kp, _ = mano_truth(mano["right"], go, hp, np.zeros(10), transl, flat=False,
                                  tips=TIPS)
        anno = img / "anno"
        dump_pickle(anno / "cam_intr" / f"{key}.pkl", K.astype(np.float32))
        dump_pickle(anno / "hand_v" / f"{key}.pkl", verts.astype(np.float32))
        dump_pickle(anno / "hand_j" / f"{key}.pkl", kp.astype(np.float32))
        dump_pickle(anno / "obj_transf" / f"{key}.pkl", T.astype(np.float32))
        cat, stamp = seq.split("/")
        fid = f"{cat}__{stamp}__{OAK_VIEWS[view]}__{frame}"
        write_image(img / "stream_release_v2" / seq / f"{OAK_VIEWS[view]}_color_{frame}.png",
                    W, H, seed=frame)
        if not far:
            K32 = K.astype(np.float32).astype(float)
            truth[fid] = {"hand": verts.astype(np.float32).astype(float),
                          "kp3": kp.astype(np.float32).astype(float),
                          "kp2_cv": project_cv(K32, kp.astype(np.float32).astype(float)),
                          "object": centred @ T.astype(np.float32).astype(float)[:3, :3].T
                          + T.astype(np.float32).astype(float)[:3, 3],
                          "hand_index": hand, "K": K32}
    (img / "anno").mkdir(parents=True, exist_ok=True)
    (img / "anno" / "seq_all.json").write_text(json.dumps(entries))
    return truth


# ----------------------------------------------------------------------------- ARCTIC
ARC_SID, ARC_SEQ = "s01", "box_grab_01"
ARC_OFFSET = 3


def bbox_toolkit(uv: np.ndarray) -> tuple[float, float, float]:
    """ARCTIC's processing.py bbox rule, written out: (cx, cy, scale)."""
    x0, y0 = uv.min(0)
    x1, y1 = uv.max(0)
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    side = w if w / h > 1 else h
    dim = side * 1.1 + max(w, h) * 0.6
    return cx, cy, max(dim / 200.0, 3.0)


def distort_cv(K, X, d) -> np.ndarray:
    """Project with OpenCV's rational + tangential model (ARCTIC's distort_pts3d_all)."""
    x, y = X[:, 0] / X[:, 2], X[:, 1] / X[:, 2]
    r2 = x * x + y * y
    rad = (1 + d[0] * r2 + d[1] * r2 ** 2 + d[4] * r2 ** 3) / \
        (1 + d[5] * r2 + d[6] * r2 ** 2 + d[7] * r2 ** 3)
    xd = x * rad + 2 * d[2] * x * y + d[3] * (r2 + 2 * x * x)
    yd = y * rad + 2 * d[3] * x * y + d[2] * (r2 + 2 * y * y)
    return np.stack([K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]], 1)


def make_arctic(root: Path, mano: dict, *, W0: int = 480, H0: int = 360, crop_out: int = 300,
                processed: bool = True) -> dict:
    """``root`` = arctic_data/data. One sequence of 4 frames; images for frame 1 (image
    number 4) in views 0 (egocentric, distorted) and 2 (allocentric), full and cropped,
    each with a white disc at the (distorted) projection of the right hand's wrist. With
    ``processed``, ``processed_seqs`` holds a crop box that differs from the toolkit's rule
    (so a test can tell which one the loader used) and the crop is made with it."""
    rng = np.random.default_rng(40)
    F = 4
    # object template (mm) with two parts
    tv, tf = box((60.0, 40.0, 30.0))
    parts = (tv[:, 2] > 0).astype(int)          # top face vertices: label 1, bottom: 0
    d = root / "meta" / "object_vtemplates" / "box"
    write_obj(d / "mesh.obj", tv, tf)
    (d / "parts.json").write_text(json.dumps(parts.tolist()))
    obj = np.zeros((F, 7))
    obj[:, 0] = np.linspace(0.1, 0.4, F)                 # articulation
    obj[:, 1:4] = rng.normal(size=(F, 3)) * 0.3
    obj[:, 4:7] = np.array([100.0, 50.0, 1500.0])       # mm
    hands = {}
    for side, off in (("right", np.array([0.12, 0.05, 1.5])),
                      ("left", np.array([-0.4, 0.05, 1.5]))):
        hands[side] = {"rot": rng.normal(size=(F, 3)) * 0.4,
                       "pose": rng.normal(size=(F, 45)) * 0.2,
                       "trans": np.tile(off, (F, 1)) + rng.normal(size=(F, 3)) * 0.005,
                       "shape": rng.normal(size=10) * 0.3, "fitting_err": np.zeros(F)}
    raw = root / "raw_seqs" / ARC_SID
    raw.mkdir(parents=True, exist_ok=True)
    np.save(raw / f"{ARC_SEQ}.mano.npy", hands, allow_pickle=True)
    np.save(raw / f"{ARC_SEQ}.object.npy", obj)
    # cameras: 8 allocentric views
    world2cam, intris = [], []
    for v in range(8):
        M = np.eye(4)
        M[:3, :3] = rot([0.05 * v, 0.1 - 0.02 * v, 0.03])
        M[:3, 3] = [0.02 * v, -0.01, 0.3]
        world2cam.append(M.tolist())
        intris.append([[300.0 + v, 0, 240.3], [0, 301.0, 180.6], [0, 0, 1]])
    # egocentric camera: the hand far off-axis, so the lens distortion moves it by pixels
    ego_R = np.stack([rot([0.02 * f, 0.0, 0.01]) for f in range(F)])
    ego_T = np.tile(np.array([[-0.9], [0.05], [0.2]]), (F, 1, 1))
    K_ego = np.array([[250.0, 0, 239.6], [0, 250.0, 179.4], [0, 0, 1]])
    dist8 = np.array([0.4, -0.05, 0.002, -0.003, 0.01, 0.02, 0.0, 0.0])
    np.save(raw / f"{ARC_SEQ}.egocam.dist.npy",
            {"R_k_cam_np": ego_R, "T_k_cam_np": ego_T, "intrinsics": K_ego, "dist8": dist8,
             "R0": np.eye(3), "T0": np.zeros((3, 1))}, allow_pickle=True)
    misc = {ARC_SID: {"world2cam": world2cam, "intris_mat": intris,
                      "ioi_offset": ARC_OFFSET, "image_size": [[W0, H0]] * 9,
                      "gender": "female"}}
    (root / "meta" / "misc.json").write_text(json.dumps(misc))

    # ground truth of frame t = 1 (image 00004), written out naively
    t = 1
    num = t + ARC_OFFSET
    Rz = rot([0, 0, -obj[t, 0]])
    tmpl = tv / 1000.0
    art = np.where((parts == 0)[:, None], tmpl @ Rz.T, tmpl)
    v_world = art @ rot(obj[t, 1:4]).T + obj[t, 4:7] / 1000.0
    hw = {}
    for side in ("right", "left"):
        h = hands[side]
        verts, kp, _ = mano_truth(mano[side], h["rot"][t], h["pose"][t], h["shape"],
                                  h["trans"][t], flat=False, tips=SMPLX_TIPS)
        hw[side] = (verts, kp)
    truth = {}
    bboxes = np.zeros((F, 9, 3))
    for view in (0, 2):
        if view == 0:
            Rc, Tc, K = ego_R[t], ego_T[t].ravel(), K_ego
        else:
            M = np.asarray(world2cam[view - 1])
            Rc, Tc, K = M[:3, :3], M[:3, 3], np.asarray(intris[view - 1])

        def cam(X, Rc=Rc, Tc=Tc):
            return X @ Rc.T + Tc

        o_cam = cam(v_world)
        wrist = cam(hw["right"][1])[0]
        dot = distort_cv(K, wrist[None], dist8)[0] if view == 0 else \
            project_cv(K, wrist[None])[0]
        rel = Path(ARC_SID) / ARC_SEQ / str(view) / f"{num:05d}.jpg"
        full = write_image(root / "images" / rel, W0, H0, seed=view, dots=[dot], radius=6)
        im = Image.fromarray(full)
        bb = None
        if view == 0:
            cropped = im.resize((int(W0 * 0.3), int(H0 * 0.3)))
        else:
            bb = np.array(bbox_toolkit(project_cv(K, o_cam)))
            if processed:
                bb = bb + np.array([20.0, -10.0, 0.4])
                bboxes[t, view] = bb
            cx, cy, dim = bb[0], bb[1], bb[2] * 1.5 * 200
            cropped = im.crop((cx - dim / 2, cy - dim / 2, cx + dim / 2, cy + dim / 2))
            cropped = cropped.resize((crop_out, crop_out))
        (root / "cropped_images" / rel).parent.mkdir(parents=True, exist_ok=True)
        cropped.save(root / "cropped_images" / rel, quality=98)
        truth[f"{ARC_SID}__{ARC_SEQ}__{view}__{num:05d}"] = {
            "object": o_cam, "hand_right": cam(hw["right"][0]), "hand_left": cam(hw["left"][0]),
            "kp3_right": cam(hw["right"][1]), "wrist": wrist, "K": K, "bbox": bb,
            "dot_full_cv": dot}
    if processed:
        p = root / "processed_seqs" / ARC_SID
        p.mkdir(parents=True, exist_ok=True)
        np.save(p / f"{ARC_SEQ}.npy", {"bbox": bboxes, "params": {}}, allow_pickle=True)
    return truth


def dot_centre(image: np.ndarray, thresh: int = 180) -> np.ndarray:
    """Centroid (hoiguide pixel convention) of the bright dot in a noise image."""
    m = image.min(-1) > thresh
    ii, jj = np.nonzero(m)
    return np.array([jj.mean() + 0.5, ii.mean() + 0.5])
