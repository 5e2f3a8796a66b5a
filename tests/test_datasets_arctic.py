"""The ARCTIC loader on a fixture in the release's layout: both hands and the articulated
object posed in the world and mapped into the allocentric and egocentric cameras (against a
naive computation), the crop cameras of ``cropped_images`` (a white disc drawn at the wrist's
projection in the full image must land where the sample's camera projects the wrist),
the egocentric undistortion, hand choice, the pickled ``.npy`` files read without running
code, and clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from datasets_fixtures import ARC_SEQ, ARC_SID, dot_centre, make_arctic, write_mano_dir
from hoiguide.datasets import DatasetError, open_dataset
from hoiguide.datasets.base import read_npy

EGO = f"{ARC_SID}__{ARC_SEQ}__0__00004"
ALLO = f"{ARC_SID}__{ARC_SEQ}__2__00004"


@pytest.fixture(scope="module")
def arc(tmp_path_factory):
    base = tmp_path_factory.mktemp("arctic")
    mano = write_mano_dir(base / "mano")
    root = base / "arctic" / "data" / "arctic_data" / "data"
    truth = make_arctic(root, mano)
    return {"root": root, "base": base / "arctic", "mano": base / "mano", "truth": truth}


@pytest.mark.parametrize("images", ["full", "cropped"])
@pytest.mark.parametrize("fid", [ALLO, EGO])
def test_meshes_and_the_wrist_disc(arc, images, fid):
    # a parent folder of arctic_data/data is accepted
    ds = open_dataset("arctic", arc["base"], mano_dir=arc["mano"], images=images)
    t = arc["truth"][fid]
    s = ds.get(fid)
    assert s.is_right and s.metadata["hand"] == "right" and s.object_name == "box"
    np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), t["hand_right"], atol=1e-9)
    np.testing.assert_allclose(s.object_mesh.vertices.numpy(), t["object"], atol=1e-9)
    np.testing.assert_allclose(s.keypoints_3d, t["kp3_right"], atol=1e-9)
    # the disc drawn at the wrist (distorted for the egocentric view) is where the sample's
    # pinhole camera projects the wrist
    seen = dot_centre(s.image)
    want = s.camera.project(t["wrist"][None])[0]
    assert np.linalg.norm(seen - want) < 1.0, (seen, want)
    assert np.linalg.norm(s.keypoints_2d[0] - want) < 1e-6
    if fid == EGO:
        # the lens moved the disc by pixels: without undistortion the test would fail
        scale = s.camera.width / 480
        shift = np.linalg.norm((t["dot_full_cv"] + 0.5) * scale - want)
        assert shift > 2.0, shift
    if images == "cropped" and fid == ALLO:
        assert s.image.shape == (300, 300, 3) and s.metadata["images"] == "cropped"


def test_crop_box_recomputed_without_processed_seqs(arc, tmp_path):
    root = tmp_path / "arctic_data" / "data"
    mano = write_mano_dir(tmp_path / "mano")
    truth = make_arctic(root, mano, processed=False)
    ds = open_dataset("arctic", root, mano_dir=tmp_path / "mano", images="cropped")
    s = ds.get(ALLO)
    want = s.camera.project(truth[ALLO]["wrist"][None])[0]
    assert np.linalg.norm(dot_centre(s.image) - want) < 1.0


def test_articulation_and_hand_choice(arc):
    ds = open_dataset("arctic", arc["root"], mano_dir=arc["mano"], hand="left")
    s = ds.get(ALLO)
    assert not s.is_right
    np.testing.assert_allclose(s.hand_mesh.vertices.numpy(), arc["truth"][ALLO]["hand_left"],
                               atol=1e-9)
    auto = open_dataset("arctic", arc["root"], mano_dir=arc["mano"]).get(ALLO)
    gaps = auto.metadata["hand_object_gap_m"]
    assert auto.is_right and gaps["right"] < gaps["left"]


def test_split_path_selects_the_image_folder(arc, tmp_path):
    ds = open_dataset("arctic", arc["root"], mano_dir=arc["mano"])
    fid = ds.id_from_path(f"arctic/arctic/data/arctic_data/data/images/{ARC_SID}/{ARC_SEQ}/"
                          "2/00004.jpg")
    assert fid == ALLO and ds.get(fid).metadata["images"] == "full"
    csv = tmp_path / "arctic_test.csv"
    csv.write_text("img_id,img_path,sid_seq_name,frame\n"
                   f"0,arctic/arctic/data/arctic_data/data/cropped_images/{ARC_SID}/{ARC_SEQ}/"
                   f"0/00004.jpg,{ARC_SID}/{ARC_SEQ},4\n")
    sel = ds.select(split=csv)
    assert [x.id for x in sel] == [EGO]
    s = ds.get(sel[0].id, sel[0].row)
    assert s.metadata["images"] == "cropped" and s.image.shape == (108, 144, 3)


def test_selection_and_frame_range(arc):
    ds = open_dataset("arctic", arc["root"], mano_dir=arc["mano"], views=(0, 2))
    ids = ds.frame_ids()
    assert len(ids) == 2 * 4 and f"{ARC_SID}__{ARC_SEQ}__2__00003" in ids
    assert [s.id for s in ds.select()] and {s.id for s in ds.select()} == {EGO, ALLO}
    with pytest.raises(DatasetError, match=r"image 2 is ground-truth frame -1"):
        ds.get(f"{ARC_SID}__{ARC_SEQ}__2__00002")


def test_npy_pickles_are_read_without_running_code(arc, tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {tmp_path / 'marker'}",))

    path = tmp_path / "evil.mano.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"right": Evil()}
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        read_npy(path)
    assert not (tmp_path / "marker").exists()
    data = read_npy(arc["root"] / "raw_seqs" / ARC_SID / f"{ARC_SEQ}.mano.npy")
    assert set(data) == {"right", "left"} and data["right"]["pose"].shape == (4, 45)
    assert read_npy(arc["root"] / "raw_seqs" / ARC_SID / f"{ARC_SEQ}.object.npy").shape == (4, 7)


def test_missing_files(arc, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(arc["root"], root)
    ds = open_dataset("arctic", root, mano_dir=arc["mano"])
    tmpl = root / "meta" / "object_vtemplates" / "box" / "parts.json"
    tmpl.unlink()
    with pytest.raises(DatasetError, match=rf"missing object parts file {tmpl}.*expected "
                                           r"layout"):
        ds.get(ALLO)
    (root / "raw_seqs" / ARC_SID / f"{ARC_SEQ}.egocam.dist.npy").unlink()
    shutil.copy(arc["root"] / "meta" / "object_vtemplates" / "box" / "parts.json", tmpl)
    with pytest.raises(DatasetError, match=r"missing egocentric camera file .*egocam\.dist"):
        ds.get(EGO)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match=r"missing ground-truth folder .*raw_seqs"):
        open_dataset("arctic", tmp_path / "nothing")
