"""Started at the truth with noise-free observations, no phase of a preset may move the
reconstruction away from it.

The truth here is exactly representable: the object is the analytic backbone's own encoding
of an ellipsoid, the targets are rendered from that decoded mesh and a hand that touches but
does not penetrate it, and the placement (generator -> image) is the one the targets were
made with. Each phase runs from there, through the engine's own inner loop
(``hoiguide.guidance.optimise_phase``); in-loop phases get a noisy sample whose clean
estimate is the truth. Before ``keep_best`` the object phase of ``fast`` moved the object to
CD 0.07 cm^2 and ``fast_posthoc_fit``'s joint phase to 0.27-0.56 cm^2 (the loss at the truth
is not the minimum of the soft-silhouette term, and Adam's first steps move every parameter
by about its learning rate whatever the gradient).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hoiguide
from hoiguide.eval import chamfer_distance
from hoiguide.guidance import GuidanceOptions, RunContext, optimise_phase
from hoiguide.guidance.flow import TimeConvention, predict_clean, velocity_from_clean
from hoiguide.guidance.sampler import latent_to_mesh
from hoiguide.render import render
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.testing import (KEYPOINT_IDS, OBJECT_AXES, GaussianGridBackbone, ellipsoid_sdf,
                              hand_mesh_canonical)
from hoiguide.types import Camera, Mesh, Observations, Similarity

GRID = 33
SIZE = 64
HAND_OFFSET = (0.0, 0.04, -0.012)   # touching, not penetrating (intersection term 0)


@pytest.fixture(scope="module")
def truth():
    bb = GaussianGridBackbone()
    lat = bb.encode_shape(lambda p: ellipsoid_sdf(p, OBJECT_AXES))
    cam = Camera.from_fov(30.0, SIZE, SIZE)
    g2i = Similarity(torch.tensor(0.05, dtype=torch.float64),
                     axis_angle_to_matrix(torch.tensor([0.3, 0.5, 0.0], dtype=torch.float64)),
                     torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
    obj = latent_to_mesh(bb, lat[0], GRID).transformed(g2i)
    hand = hand_mesh_canonical().to(dtype=torch.float64)
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.35], dtype=torch.float64))
    hand = Mesh(hand.vertices @ R.T + g2i.translation
                + torch.tensor(HAND_OFFSET, dtype=torch.float64), hand.faces)
    r = render([hand, obj], cam, amodal=True)
    kp = hand.vertices[list(KEYPOINT_IDS)]
    obs = Observations(
        camera=cam, object_image=np.full((32, 32, 4), 200, np.uint8),
        mask_hand=r.mesh_id == 0, mask_object=r.mesh_id == 1,
        mask_object_amodal=r.amodal[1] > 0.5, hand_mesh=hand.to(dtype=torch.float32),
        hand_keypoints_3d=kp.float(), keypoints_2d=cam.project(kp).float(),
        target_normals=r.normals.detach().float(),
        target_disparity=r.disparity.detach().float(), target_valid=r.mask,
        gen_to_image=g2i)
    return bb, lat, obj, hand, obs


def _phases():
    out = []
    for preset in ("fast", "fast_posthoc_fit"):
        for phase in hoiguide.load_schedule(preset).phases:
            out.append((preset, phase.name))
    return out


@pytest.mark.parametrize("preset, phase_name", _phases())
def test_phase_stays_at_the_truth(truth, preset, phase_name):
    bb, lat, obj_true, hand_true, obs = truth
    sched = hoiguide.load_schedule(preset)
    opts = GuidanceOptions(grid_resolution=GRID, render_size=SIZE, max_iterations=8)
    ctx = RunContext.create(bb, sched, opts, TimeConvention.DATA_AT_1, GRID, torch.float64,
                            obs, 0, False)
    phase = sched.phase(phase_name)
    if phase.after_sampling:
        x, v, sigma, step, terms = lat.clone(), None, None, None, phase.terms(0, 1)
    else:
        n = sched.num_steps
        step = sched.steps_of(phase_name, n)[0]
        sigma = float(bb.sigmas(n)[step])
        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
        x = sigma * lat + (1 - sigma) * noise
        v = velocity_from_clean(x, lat, sigma, "data_at_1")
        terms = sched.terms_at(step, n)
    res = optimise_phase(ctx, phase, terms, step, x, v, sigma)
    clean = res.x if v is None else predict_clean(res.x, res.v, sigma, "data_at_1")
    obj = ctx.place_object(latent_to_mesh(bb, clean[0], GRID))
    hand = ctx.hand_mesh()
    assert len(ctx.history.series("total")) > 0          # the phase did run
    # the reconstruction did not move: object CD (cm^2), hand displacement (m)
    assert chamfer_distance(obj, obj_true, num_samples=4000, seed=0) < 2e-3
    assert float((hand.vertices - hand_true.vertices).norm(dim=-1).max()) < 1e-4


def test_without_keep_best_the_object_phase_leaves_the_truth(truth):
    """The mechanism the fix removes (so the test above can fail): the last iterate of the
    object phase is off the truth."""
    import dataclasses

    bb, lat, obj_true, _, obs = truth
    sched = hoiguide.load_schedule("fast_posthoc_fit")
    phase = dataclasses.replace(sched.phase("object"), keep_best=False)
    opts = GuidanceOptions(grid_resolution=GRID, render_size=SIZE, max_iterations=8)
    ctx = RunContext.create(bb, sched, opts, TimeConvention.DATA_AT_1, GRID, torch.float64,
                            obs, 0, False)
    res = optimise_phase(ctx, phase, phase.terms(0, 1), None, lat.clone(), None, None)
    obj = ctx.place_object(latent_to_mesh(bb, res.x[0], GRID))
    assert chamfer_distance(obj, obj_true, num_samples=4000, seed=0) > 5e-3
    totals = ctx.history.series("total")
    assert totals[-1] > totals[0]
