"""A synthetic scene: its maps agree with each other and with the meshes; the format round-trips."""

import json

import numpy as np
import pytest
import torch

from hoiguide.geometry import closest_points, point_map_from_depth
from hoiguide.synth import Scene, SceneFormatError, contact_sheet, list_scenes, read_manifest


@pytest.fixture(scope="module")
def scene(synth_scene):
    return synth_scene


def test_masks_are_consistent(scene):
    mh, mo = scene.mask_hand, scene.mask_object
    assert not (mh & mo).any()
    assert (mh <= scene.mask_hand_amodal).all() and (mo <= scene.mask_object_amodal).all()
    assert ((scene.depth > 0) == (mh | mo)).all()
    assert mh.sum() > 50 and mo.sum() > 50
    n = np.linalg.norm(scene.normals, axis=-1)
    assert np.allclose(n[mh | mo], 1.0, atol=1e-4) and (n[~(mh | mo)] == 0).all()
    # the hand hides part of the object or the object part of the hand (a grasp)
    assert scene.metadata["visible_object_fraction"] >= 0.3


def test_depth_lies_on_the_meshes_of_its_mask(scene):
    P = point_map_from_depth(scene.depth, scene.camera)
    for mask, mesh, other in ((scene.mask_hand, scene.hand_mesh, scene.object_mesh),
                              (scene.mask_object, scene.object_mesh, scene.hand_mesh)):
        pts = torch.as_tensor(P[mask])
        d_own, _, _ = closest_points(pts, mesh.to(dtype=torch.float64))
        assert float(d_own.max()) < 2e-4          # on its own surface (float32 render)
        d_other, _, _ = closest_points(pts, other.to(dtype=torch.float64))
        assert float(torch.median(d_other)) > float(torch.median(d_own))


def test_keypoints_reproject_and_sit_on_the_hand(scene):
    uv = scene.camera.project(torch.as_tensor(scene.hand_keypoints_3d, dtype=torch.float64))
    assert np.abs(uv.numpy() - scene.keypoints_2d).max() < 1.0      # within 1 px
    # every keypoint projects into the (slightly dilated) amodal hand silhouette
    from scipy.ndimage import binary_dilation

    sil = binary_dilation(scene.mask_hand_amodal, iterations=2)
    ij = np.floor(scene.keypoints_2d[:, ::-1]).astype(int)
    inside = (ij >= 0).all(1) & (ij[:, 0] < 96) & (ij[:, 1] < 96)
    assert inside.all()
    assert sil[ij[:, 0], ij[:, 1]].mean() >= 0.95
    # fingertip keypoints are hand surface points
    d, _, _ = closest_points(torch.as_tensor(scene.hand_keypoints_3d[[4, 8, 12, 16, 20]],
                                             dtype=torch.float64),
                             scene.hand_mesh.to(dtype=torch.float64))
    assert float(d.max()) < 1e-3


def test_hand_parameters_reproduce_the_hand_mesh(scene):
    from hoiguide.synth.generate import default_hand

    hp = scene.hand_params
    hand = default_hand()
    out = hand(global_orient=torch.tensor([hp["global_orient"]], dtype=torch.float64),
               hand_pose=torch.tensor([hp["hand_pose"]], dtype=torch.float64),
               betas=torch.tensor([hp["betas"]], dtype=torch.float64),
               transl=torch.tensor([hp["transl"]], dtype=torch.float64))
    assert torch.allclose(out.vertices[0].float(), scene.hand_mesh.vertices, atol=1e-4)


def test_save_load_round_trip_and_manifest(scene, tmp_path):
    d = scene.save(tmp_path / "s" / "0000")
    back = Scene.load(d)
    for k in ("image", "mask_hand", "mask_object", "mask_hand_amodal", "mask_object_amodal",
              "depth", "normals", "keypoints_2d", "hand_keypoints_3d"):
        assert np.array_equal(getattr(back, k), getattr(scene, k)), k
    assert torch.allclose(back.hand_mesh.vertices, scene.hand_mesh.vertices)
    assert back.camera == scene.camera and back.hand_params == scene.hand_params
    from hoiguide.synth import write_manifest

    write_manifest(tmp_path / "s", [{"id": "0000", "path": "0000"}], seed=1)
    assert read_manifest(tmp_path / "s")["seed"] == 1
    assert list_scenes(tmp_path / "s") == [d]
    png = contact_sheet(tmp_path / "s", tmp_path / "sheet.png", overlay=True)
    assert png.stat().st_size > 1000
    # a future version and a broken folder are refused with a clear message
    meta = json.loads((d / "scene.json").read_text())
    meta["version"] = 99
    (d / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(SceneFormatError, match="newer"):
        Scene.load(d)
    with pytest.raises(SceneFormatError, match="no scene.json"):
        Scene.load(tmp_path)


def test_bad_shapes_are_refused(scene):
    import dataclasses

    with pytest.raises(SceneFormatError, match="mask_hand"):
        dataclasses.replace(scene, mask_hand=np.zeros((5, 5), bool))
