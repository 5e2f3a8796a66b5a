"""The DexYCB loader on a fixture written in the release's layout (tests/datasets_fixtures.py):
hands and objects land where the fixture put them (the hand against a naive per-vertex MANO
with the PCA pose and mean pose added by hand), keypoints reproject onto the annotated 2D
keypoints, left hands, split files, random selection and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from datasets_fixtures import (DEX_SEQ_L, DEX_SEQ_R, DEX_SERIALS, DEX_SUBJECT, TIPS,
                               make_dexycb, write_mano_dir)
from hoiguide.datasets import DatasetError, load, open_dataset


@pytest.fixture(scope="module")
def dex(tmp_path_factory):
    base = tmp_path_factory.mktemp("dexycb")
    mano = write_mano_dir(base / "mano")
    truth = make_dexycb(base / "DexYCB", mano)
    return {"root": base / "DexYCB", "mano": base / "mano", "truth": truth}


def test_meshes_and_keypoints_land_where_the_fixture_put_them(dex):
    ds = open_dataset("dexycb", dex["root"], mano_dir=dex["mano"])
    assert len(dex["truth"]) == 6
    for fid, t in dex["truth"].items():
        s = ds.get(fid)
        assert s.id == fid and s.dataset == "dexycb"
        assert s.image.shape == (48, 64, 3) and s.image.dtype == np.uint8
        K = t["K"]
        assert (s.camera.fx, s.camera.fy) == (K[0, 0], K[1, 1])
        assert (s.camera.cx, s.camera.cy) == pytest.approx((K[0, 2] + 0.5, K[1, 2] + 0.5))
        assert s.hand_mesh.num_vertices == 778
        np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), t["hand"], atol=1e-9)
        np.testing.assert_allclose(s.object_mesh.vertices.numpy(), t["object"], atol=1e-9)
        assert s.object_name == "006_mustard_bottle" and s.is_right == t["is_right"]
        np.testing.assert_allclose(s.keypoints_3d, t["kp3"], atol=1e-9)
        np.testing.assert_allclose(s.keypoints_2d, t["kp2_cv"] + 0.5, atol=1e-9)
        # the annotated 3D joints and the mesh's fingertips reproject onto the 2D annotation
        err = np.linalg.norm(s.camera.project(s.keypoints_3d) - s.keypoints_2d, axis=1)
        assert err.max() < 1.0
        tips = s.camera.project(s.hand_mesh.vertices.numpy()[list(TIPS)])
        assert np.linalg.norm(tips - s.keypoints_2d[[4, 8, 12, 16, 20]], axis=1).max() < 1.0


def test_left_hand_uses_the_left_model(dex):
    ds = open_dataset("dexycb", dex["root"], mano_dir=dex["mano"])
    fid = f"{DEX_SUBJECT}__{DEX_SEQ_L}__{DEX_SERIALS[0]}__000001"
    s = ds.get(fid)
    assert not s.is_right
    np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), dex["truth"][fid]["hand"],
                               atol=1e-9)
    assert ds.mano("left").side == "left"
    # the left model's faces, not the right one's
    assert not np.array_equal(s.hand_mesh.faces.numpy(), ds.mano("right").faces.numpy())


def test_selection_random_first_and_unannotated_frames(dex):
    ds = open_dataset("dexycb", dex["root"], mano_dir=dex["mano"])
    ids = ds.frame_ids()
    assert len(ids) == 3 * 2 + 2          # 3 frames x 2 cameras + 2 frames x 1 camera
    unannotated = f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000002"
    assert unannotated in ids and not ds.has_ground_truth(unannotated)
    every = [s.id for s in ds.select()]
    assert sorted(every) == sorted(dex["truth"])            # unannotated frames skipped
    a = [s.id for s in ds.select(limit=3, seed=5)]
    assert a == [s.id for s in ds.select(limit=3, seed=5)] and len(a) == 3
    orders = {tuple(s.id for s in ds.select(seed=k)) for k in range(6)}
    assert len(orders) > 1                                     # the seed changes the order
    first = [s.id for s in ds.select(order="first")]
    assert first == sorted(first)
    with pytest.raises(DatasetError, match="annotation"):
        ds.get(unannotated)
    with pytest.raises(DatasetError, match="limit"):
        ds.select(limit=0)


def test_split_file_order_prefix_and_limit(dex, tmp_path):
    rows = [(f"{DEX_SUBJECT}/{DEX_SEQ_R}/{DEX_SERIALS[1]}/color_000001.jpg"),
            (f"{DEX_SUBJECT}/{DEX_SEQ_L}/{DEX_SERIALS[0]}/color_000000.jpg"),
            (f"{DEX_SUBJECT}/{DEX_SEQ_R}/{DEX_SERIALS[0]}/color_000000.jpg")]
    csv = tmp_path / "dexycb_test.csv"
    csv.write_text("img_id,img_path\n" + "".join(f"{i},DexYCB/{p}\n" for i, p in
                                                 enumerate(rows)))
    samples = list(load("dexycb", dex["root"], mano_dir=dex["mano"], split=csv, limit=2))
    assert [s.id for s in samples] == [
        f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[1]}__000001",
        f"{DEX_SUBJECT}__{DEX_SEQ_L}__{DEX_SERIALS[0]}__000000"]
    assert samples[1].metadata["split_row"] == {"img_id": "1", "img_path": f"DexYCB/{rows[1]}"}
    bad = tmp_path / "bad.csv"
    bad.write_text("img_id,path\n0,x.jpg\n")
    with pytest.raises(DatasetError, match=r"bad\.csv.*no img_path column"):
        load("dexycb", dex["root"], mano_dir=dex["mano"], split=bad)
    bad.write_text("img_id,img_path\n0,DexYCB/a/b/depth_000001.png\n")
    with pytest.raises(DatasetError, match=r"row 2.*color_NNNNNN"):
        load("dexycb", dex["root"], mano_dir=dex["mano"], split=bad)


def test_missing_files_name_the_file_and_the_layout(dex, tmp_path):
    root = tmp_path / "DexYCB"
    shutil.copytree(dex["root"], root)
    fid = f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000001"
    ds = open_dataset("dexycb", root, mano_dir=dex["mano"])
    lab = root / DEX_SUBJECT / DEX_SEQ_R / DEX_SERIALS[0] / "labels_000001.npz"
    lab.unlink()
    with pytest.raises(DatasetError, match=rf"missing label file {lab}.*expected layout"):
        ds.get(fid)
    model = root / "models" / "006_mustard_bottle" / "textured_simple.obj"
    model.unlink()
    with pytest.raises(DatasetError, match=r"textured_simple\.obj.*expected layout"):
        ds.get(f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000000")
    (root / "calibration" / "intrinsics" / f"{DEX_SERIALS[1]}_64x48.yml").unlink()
    with pytest.raises(DatasetError, match=rf"intrinsics .*{DEX_SERIALS[1]}_64x48\.yml"):
        ds.get(f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[1]}__000000")
    no_mano = open_dataset("dexycb", dex["root"])
    with pytest.raises(DatasetError, match=r"--mano DIR"):
        no_mano.get(f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000000")
    with pytest.raises(DatasetError, match=r"no MANO model at .*MANO_LEFT\.pkl"):
        open_dataset("dexycb", dex["root"], mano_dir=tmp_path).get(
            f"{DEX_SUBJECT}__{DEX_SEQ_L}__{DEX_SERIALS[0]}__000000")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"missing calibration folder.*expected layout"):
        open_dataset("dexycb", tmp_path / "empty")
