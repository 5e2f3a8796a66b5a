"""A tiny synthetic clip with known per-frame poses, built from ``hoiguide.testing.make_scene``:
the object and the hand turn together about the object's centre (the grasp holds) and drift
sideways; every frame is rendered into masks, normals and disparity like the single scene.
Shared by tests/test_guidance_clip.py and tests/test_api_video.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hoiguide.render import render
from hoiguide.testing import KEYPOINT_IDS, make_scene, similarity_about
from hoiguide.types import ClipObservations, Mesh, Observations, Similarity

ANGLES = (0.0, 8.0, 16.0, 24.0, 32.0, 40.0)
AXIS = (0.2, 1.0, 0.3)


@dataclass
class Clip:
    clip: ClipObservations
    gen_to_image_true: list      # per frame, the true generator -> image similarity
    hands_true: list             # per frame, the true hand (image frame)
    object_generator: Mesh       # the true object in the generator frame
    motions: list                # per frame, the rigid motion from frame 0


def make_clip(frames: int = 4, size: int = 48, perturbations=None, missing=(),
              reference: int = 0, object_generator: Mesh | None = None) -> Clip:
    """``frames`` frames (at most 6) of the make_scene grasp turning by 8 degrees and
    moving 3 mm per frame; ``perturbations[t]`` (a Similarity or None) acts on frame t's
    observed ``gen_to_image``; frames in ``missing`` are None. ``object_generator``: the
    object to render (generator frame; default make_scene's ellipsoid)."""
    sc = make_scene(size=size)
    centre = sc.gen_to_image_true.translation
    g2i = sc.gen_to_image_true
    obj_gen = sc.object_true.transformed(g2i.inverse()) if object_generator is None \
        else object_generator
    obj_image = obj_gen.transformed(g2i)
    obs_list, truths, hands, motions = [], [], [], []
    for t in range(frames):
        M = similarity_about(centre, 1.0, AXIS, ANGLES[t], (0.003 * t, -0.0015 * t, 0.001 * t))
        motions.append(M)
        truth = M.compose(g2i)
        obj = obj_image.transformed(M)
        hand = sc.hand_true.transformed(M)
        truths.append(truth)
        hands.append(hand)
        if t in missing:
            obs_list.append(None)
            continue
        r = render([hand, obj], sc.camera, amodal=True)
        kp = hand.vertices[list(KEYPOINT_IDS)]
        pert = (perturbations or {}).get(t) if isinstance(perturbations, dict) else \
            (None if perturbations is None else perturbations[t])
        obs_list.append(Observations(
            camera=sc.camera, object_image=np.full((32, 32, 4), 200 - 10 * t, np.uint8),
            mask_hand=r.mesh_id == 0, mask_object=r.mesh_id == 1,
            mask_object_amodal=r.amodal[1] > 0.5, hand_mesh=hand.to(dtype=torch.float32),
            hand_keypoints_3d=kp.float(), keypoints_2d=sc.camera.project(kp).float(),
            target_normals=r.normals.detach().float(),
            target_disparity=r.disparity.detach().float(), target_valid=r.mask,
            gen_to_image=truth if pert is None else pert.compose(truth)))
    clip = ClipObservations.from_frames(obs_list, fps=10.0, reference=reference)
    return Clip(clip, truths, hands, obj_gen, motions)


def pose_error(transform: Similarity, truth: Similarity, mesh_gen: Mesh) -> float:
    """Mean distance (metres) between the object's vertices placed by the two transforms."""
    v = mesh_gen.vertices.double()
    return float((transform.apply(v) - truth.apply(v)).norm(dim=-1).mean())
