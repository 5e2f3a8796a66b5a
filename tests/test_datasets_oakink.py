"""The OakInk-Image loader on a fixture in the release's layout: the annotated hand
vertices with MANO's faces, the object re-centred and moved by its transform, keypoints that
reproject, the reference's split-file paths, hand-over frames with two hands, and clear
errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from datasets_fixtures import OAK_HANDOVER, OAK_SEQ, make_oakink, write_mano_dir
from hoiguide.datasets import DatasetError, load, open_dataset


@pytest.fixture(scope="module")
def oak(tmp_path_factory):
    base = tmp_path_factory.mktemp("oakink")
    mano = write_mano_dir(base / "mano")
    truth = make_oakink(base / "OakInk", mano)
    return {"root": base / "OakInk", "mano": base / "mano", "truth": truth,
            "faces": mano["right"]["f"]}


def test_meshes_and_keypoints(oak):
    ds = open_dataset("oakink", oak["root"], mano_dir=oak["mano"])
    assert sorted(ds.frame_ids()) == sorted(oak["truth"])
    for fid, t in oak["truth"].items():
        s = ds.get(fid)
        assert s.is_right and s.image.shape == (45, 80, 3)
        np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), t["hand"], atol=1e-9)
        assert np.array_equal(s.hand_mesh.faces.numpy(), oak["faces"].astype(np.int64))
        np.testing.assert_allclose(s.object_mesh.vertices.numpy(), t["object"], atol=1e-6)
        np.testing.assert_allclose(s.keypoints_3d, t["kp3"], atol=1e-9)
        assert np.abs(s.keypoints_2d - (t["kp2_cv"] + 0.5)).max() < 1e-6
        assert np.linalg.norm(s.camera.project(s.keypoints_3d) - s.keypoints_2d,
                              axis=1).max() < 1.0
        assert s.metadata["hand_index"] == t["hand_index"]


def test_handover_frame_takes_the_hand_at_the_object(oak):
    ds = open_dataset("oakink", oak["root"], mano_dir=oak["mano"])
    cat, stamp = OAK_HANDOVER.split("/")
    s = ds.get(f"{cat}__{stamp}__north_west__5")
    assert s.metadata["hands_annotated"] == 2 and s.metadata["hand_index"] == 1
    assert s.object_name == "C12001"          # no shape/metaV2 names in the fixture


def test_reference_split_paths(oak, tmp_path):
    cat, stamp = OAK_SEQ.split("/")
    csv = tmp_path / "oakink_test.csv"
    csv.write_text("img_id,obj_id,intent_id,subj_id,img_path\n"
                   f"0,A01001,1,0,OakInk/image/stream_release_v2/{OAK_SEQ}/"
                   "south_east_color_11.png\n"
                   f"7,A01001,1,0,OakInk/image/stream_release_v2/{OAK_SEQ}/"
                   "north_east_color_10.png\n")
    got = list(load("oakink", oak["root"], mano_dir=oak["mano"], split=csv))
    assert [s.id for s in got] == [f"{cat}__{stamp}__south_east__11",
                                   f"{cat}__{stamp}__north_east__10"]
    assert got[1].metadata["split_row"]["img_id"] == "7"


def test_missing_files(oak, tmp_path):
    root = tmp_path / "OakInk"
    shutil.copytree(oak["root"], root)
    cat, stamp = OAK_SEQ.split("/")
    fid = f"{cat}__{stamp}__north_east__10"
    key = f"{cat}__{stamp}__0__10__0"
    (root / "image" / "anno" / "hand_v" / f"{key}.pkl").unlink()
    ds = open_dataset("oakink", root, mano_dir=oak["mano"])
    with pytest.raises(DatasetError, match=rf"missing hand_v annotation .*{key}\.pkl.*"
                                           r"expected layout"):
        ds.get(fid)
    (root / "image" / "obj" / "A01001.obj").unlink()
    with pytest.raises(DatasetError, match=r"missing object model .*A01001\.obj\|ply"):
        ds.get(f"{cat}__{stamp}__south_east__11")
    (root / "image" / "anno" / "seq_all.json").unlink()
    with pytest.raises(DatasetError, match=r"missing frame list .*seq_all\.json"):
        open_dataset("oakink", root, mano_dir=oak["mano"]).frame_ids()
    with pytest.raises(DatasetError, match=r"missing image folder"):
        open_dataset("oakink", tmp_path)
