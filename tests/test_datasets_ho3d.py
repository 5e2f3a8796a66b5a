"""The HO-3D loader on a fixture in the release's layout: the OpenGL -> OpenCV flip, the
flat-mean MANO pose against a naive per-vertex MANO, HO-3D's joint order and fingertips,
the meta pickles read without running code, and clear errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from datasets_fixtures import HO3D_TIPS, make_ho3d, write_mano_dir
from hoiguide.datasets import DatasetError, open_dataset


@pytest.fixture(scope="module")
def ho3d(tmp_path_factory):
    base = tmp_path_factory.mktemp("ho3d")
    mano = write_mano_dir(base / "mano")
    truth = make_ho3d(base / "HO3D_v3", base / "ycb", mano)
    return {"root": base / "HO3D_v3", "mano": base / "mano", "ycb": base / "ycb",
            "truth": truth}


def test_meshes_and_keypoints_in_the_opencv_frame(ho3d):
    ds = open_dataset("ho3d", ho3d["root"], mano_dir=ho3d["mano"], ycb_dir=ho3d["ycb"])
    assert ds.frame_ids() == ["train__ABF10__0000", "train__ABF10__0001"]
    for fid, t in ho3d["truth"].items():
        s = ds.get(fid)
        assert s.is_right and s.object_name == "006_mustard_bottle"
        np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), t["hand"], atol=1e-6)
        np.testing.assert_allclose(s.object_mesh.vertices.numpy(), t["object"], atol=1e-6)
        # in front of the camera (+z) after the flip
        assert s.hand_mesh.vertices[:, 2].min() > 0 and s.object_mesh.vertices[:, 2].min() > 0
        # annotated joints (MANO order + HO-3D tips) reordered to OpenPose order
        np.testing.assert_allclose(s.keypoints_3d, t["kp3"], atol=1e-9)
        # ...which are the hand mesh's own keypoints with HO-3D's fingertip vertices
        np.testing.assert_allclose(s.keypoints_3d, t["kp3_layer"], atol=1e-5)
        np.testing.assert_allclose(s.hand_mesh.vertices.numpy()[list(HO3D_TIPS)],
                                   s.keypoints_3d[[4, 8, 12, 16, 20]], atol=1e-5)
        err = np.linalg.norm(s.keypoints_2d - (t["kp2_cv"] + 0.5), axis=1)
        assert err.max() < 1.0
        assert s.image.shape == (48, 64, 3)


def test_split_paths_and_evaluation_subset(ho3d, tmp_path):
    ds = open_dataset("ho3d", ho3d["root"], mano_dir=ho3d["mano"], ycb_dir=ho3d["ycb"])
    assert ds.id_from_path("HO3D_v3/train/ABF10/rgb/0001.jpg") == "train__ABF10__0001"
    with pytest.raises(DatasetError, match="rgb/NNNN"):
        ds.id_from_path("HO3D_v3/train/ABF10/depth/0001.png")
    ev = open_dataset("ho3d", ho3d["root"], mano_dir=ho3d["mano"], ycb_dir=ho3d["ycb"],
                      subset="evaluation")
    assert not ev.has_ground_truth("evaluation__SM1__0000")
    with pytest.raises(DatasetError, match="none of the 1 frames .* has the ground-truth"):
        ev.select()
    with pytest.raises(DatasetError, match=r"no handPose .*subset=train"):
        ev.get("evaluation__SM1__0000")
    with pytest.raises(DatasetError, match=r"missing 'nope' folder"):
        open_dataset("ho3d", ho3d["root"], subset="nope")


def test_missing_files_and_ycb_models(ho3d, tmp_path):
    ds = open_dataset("ho3d", ho3d["root"], mano_dir=ho3d["mano"], ycb_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"missing YCB object model .*006_mustard_bottle"
                                           r"/textured_simple\.obj.*ycb_dir"):
        ds.get("train__ABF10__0000")
    ds = open_dataset("ho3d", ho3d["root"], mano_dir=ho3d["mano"], ycb_dir=ho3d["ycb"])
    with pytest.raises(DatasetError, match=r"missing annotation file .*meta/0007\.pkl.*"
                                           r"expected layout"):
        ds.get("train__ABF10__0007")


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_meta_pickles_never_run_code(ho3d, tmp_path):
    root = tmp_path / "HO3D"
    d = root / "train" / "EVIL1"
    (d / "meta").mkdir(parents=True)
    (d / "rgb").mkdir()
    marker = tmp_path / "marker"
    (d / "meta" / "0000.pkl").write_bytes(pickle.dumps({"handPose": _Evil(marker)},
                                                       protocol=2))
    ds = open_dataset("ho3d", root, mano_dir=ho3d["mano"], ycb_dir=ho3d["ycb"])
    with pytest.raises(DatasetError, match=r"refusing to load the global 'posix\.system'|"
                                           r"refusing to load the global 'os\.system'"):
        ds.get("train__EVIL1__0000")
    assert not marker.exists()
    assert not ds.has_ground_truth("train__EVIL1__0000")
