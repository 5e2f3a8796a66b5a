"""The guided sampler on an analytic backbone and synthetic scenes whose answer is known.

Schedules here derive from the shipped presets with learning rates sized for this scene (a
9 cm object 30 cm from the camera): the reference's translation learning rate of 1e-2 m per
Adam step and hand rotation rate of 0.5 on a raw quaternion throw such a small scene far off
in the first steps (Adam's first step has the size of the learning rate whatever the
gradient), and its velocity rate suits Hunyuan's latent scale, not this backbone's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hoiguide.testing import (GaussianGridBackbone, OBJECT_AXES, ellipsoid_sdf, make_scene,
                               similarity_about)
from hoiguide.eval import chamfer_distance, intersection_volume
from hoiguide.guidance import (GuidedSampler, GuidanceOptions, History, NonFiniteLossError,
                               StepState, latent_to_mesh)
from hoiguide.losses import register_loss
from hoiguide.losses.registry import LOSSES
from hoiguide.phases import available_presets, load_schedule
from hoiguide.rotations import rotation_angle
from hoiguide.types import Mesh, Similarity

OPTS = {"grid_resolution": 24, "render_size": 48, "final_resolution": 33}
OBJ_LR = {"object.translation": 1e-3, "object.scale": 1e-2, "object.rotation": 1e-2}
HAND_LR = {"hand.translation": 1e-3, "hand.scale": 1e-2, "hand.rotation": 1e-2}
OBJECT_PERTURBATION = similarity_about([0, 0, 0.3], 1.05, (0, 1, 0), 5, (0.003, -0.002, 0.0))


@pytest.fixture(scope="module")
def backbone():
    return GaussianGridBackbone()


@pytest.fixture(scope="module")
def scene():
    return make_scene(object_perturbation=OBJECT_PERTURBATION)


# --------------------------------------------------------------------------------------
# acceptance
# --------------------------------------------------------------------------------------


def test_guidance_beats_no_guidance_by_2x(backbone, scene):
    """Object Chamfer distance to the truth: guided (fast structure) vs the no_guidance
    ablation with the same phases, losses, rates and total inner iterations."""
    it = 8
    guided = load_schedule({"base": "fast", "name": "guided", "phases": {
        "hand": {"iterations": it, "optimize": HAND_LR},
        "object": {"iterations": it, "optimize": {**OBJ_LR, "velocity": 2.0}},
        "joint": {"iterations": it, "optimize": {**OBJ_LR, "velocity": 2.0}}}})
    unguided = load_schedule({"base": "no_guidance", "name": "ng", "num_steps": 8, "phases": {
        "hand": {"iterations": it, "optimize": HAND_LR},
        "object": {"iterations": it, "optimize": OBJ_LR},
        "joint": {"iterations": 3 * it, "optimize": OBJ_LR}}})
    cds = {}
    for s in (guided, unguided):
        res = GuidedSampler(backbone, s, OPTS).run(scene.observations, progress=False)
        assert res.status == "ok"
        assert res.counters["iterations"] == 5 * it
        cds[s.name] = chamfer_distance(res.object_mesh, scene.object_true, num_samples=3000)
    # unguided sampling gives the generic sphere: the true ellipsoid is far from it
    assert cds["ng"] > 1.0, cds
    assert cds["guided"] * 2 <= cds["ng"], cds


def test_phase1_recovers_hand_similarity(backbone):
    """Hand phase (followmyhold's losses and weights; metric disparity, since the synthetic
    target is metric) recovers scale +15 %, 10 degrees and ~2 cm: tolerances scale 3 %,
    rotation 5 degrees, mean vertex error 3 mm."""
    true_centre = [0.0, 0.028, 0.288]
    pert = similarity_about(true_centre, 1.15, (0.3, 1.0, 0.2), 10.0, (0.012, -0.01, 0.013))
    sc = make_scene(hand_perturbation=pert)
    start = (sc.observations.hand_mesh.vertices.double() - sc.hand_true.vertices).norm(dim=-1)
    assert float(start.mean()) > 0.015  # about 2 cm off at the start
    sched = load_schedule({"base": "followmyhold", "name": "hand_only", "num_steps": 8,
                           "phases": {"object": None, "joint": None,
                                      "hand": {"iterations": 120, "optimize": HAND_LR,
                                               "weights": {"disparity": {
                                                   "normalization": "none"}}}}})
    res = GuidedSampler(backbone, sched, OPTS).run(sc.observations, progress=False)
    rec = res.hand_similarity.compose(pert)  # identity when recovered
    err = (res.hand_mesh.vertices.double() - sc.hand_true.vertices).norm(dim=-1)
    assert abs(float(rec.scale) - 1) < 0.03, rec
    assert math.degrees(float(rotation_angle(rec.rotation))) < 5.0, rec
    assert float(err.mean()) < 0.003, float(err.mean())
    # phase 1 never touches the object or the latent
    assert torch.allclose(res.object_similarity.matrix(), torch.eye(4, dtype=torch.float64)
                          .to(res.object_similarity.scale.dtype), atol=1e-7)
    assert res.history.phases == ["hand"]


def test_joint_phase_reduces_intersection_volume(backbone):
    """The observed hand is pushed 1.5 cm into the object; the joint phase (with the
    differentiable intersection term) separates them."""
    push = Similarity.about(torch.zeros(3, dtype=torch.float64),
                            translation=torch.tensor([0.0, -0.015, 0.0], dtype=torch.float64))
    sc = make_scene(hand_perturbation=push)
    obj0 = latent_to_mesh(backbone, backbone.mu, 33).transformed(sc.observations.gen_to_image)
    iv0 = intersection_volume(sc.observations.hand_mesh, obj0, voxel=0.002)
    assert iv0 > 1.0  # cm^3
    sched = load_schedule({"base": "joint_only", "name": "joint", "num_steps": 8, "phases": {
        "joint": {"window": {"start": 0.75, "end": 1.0}, "iterations": 12,
                  "optimize": {**OBJ_LR, **HAND_LR, "velocity": 0.5}}}})
    res = GuidedSampler(backbone, sched, OPTS).run(sc.observations, progress=False)
    iv1 = intersection_volume(res.hand_mesh, res.object_mesh, voxel=0.002)
    assert iv1 < 0.5 * iv0, (iv0, iv1)
    series = res.history.series("intersection", "joint")
    assert series[-1] < series[0]


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_runs_two_steps(backbone, scene, name):
    sched = load_schedule(name)
    res = GuidedSampler(backbone, sched, {"num_steps": 2, "max_iterations": 1,
                                          "grid_resolution": 12, "render_size": 24,
                                          "final_resolution": 17}).run(
        scene.observations, progress=False)
    assert res.status == "ok"
    assert not res.object_mesh.is_empty
    resolved = sched.resolve(2)
    expected = sum(1 if p.after_sampling else len(p.steps) for p in resolved)
    assert res.counters["iterations"] == expected
    assert [p.name for p in resolved if p.after_sampling or p.steps] == res.history.phases


# --------------------------------------------------------------------------------------
# mechanics
# --------------------------------------------------------------------------------------


def _small(**kw):
    return GuidanceOptions(**{"grid_resolution": 16, "render_size": 32,
                              "final_resolution": 17, **kw})


def test_deterministic_for_a_seed(backbone, scene):
    runs = [GuidedSampler(backbone, "fast", _small(max_iterations=2)).run(
        scene.observations, seed=s, progress=False) for s in (3, 3, 4)]
    a, b, c = runs
    assert torch.equal(a.latent, b.latent)
    assert torch.equal(a.object_mesh.vertices, b.object_mesh.vertices)
    assert a.history.series("total") == b.history.series("total")
    assert not torch.equal(a.latent, c.latent)


def test_callbacks_get_typed_state_and_history_records_every_term(backbone, scene):
    states: list[StepState] = []
    sched = load_schedule("fast")
    res = GuidedSampler(backbone, sched, _small(max_iterations=3)).run(
        scene.observations, progress=False, callbacks=[states.append])
    assert [s.step for s in states] == list(range(8))
    assert [s.phase for s in states] == [None] * 3 + ["hand", "object"] + ["joint"] * 3
    st = states[4]
    assert isinstance(st.hand_similarity, Similarity) and st.object_mesh is not None
    assert st.latent.shape == (1, *backbone.latent_shape) and not st.velocity.requires_grad
    assert set(st.losses) == {t.label for t in sched.phase("object").terms()}
    # the clean estimate handed over is predict_clean of (latent, velocity)
    assert torch.allclose(st.clean, st.latent + (1 - st.sigma) * st.velocity)
    assert isinstance(res.history, History) and len(res.history) == 3 * 5
    for r in res.history:
        phase = sched.phase(r.phase)
        assert set(r.values) == {w.label for w in phase.weights}
        assert all(math.isfinite(v) for v in r.values.values())
    assert [r.iteration for r in res.history.select("joint", step=6)] == [0, 1, 2]
    assert set(res.timings["phases"]) >= {"hand", "object", "joint", "sampling"}
    assert res.timings["parts"]["render"] > 0 and res.timings["parts"]["backward"] > 0


def test_velocity_untouched_in_hand_phase_and_similarities_persist(backbone, scene):
    seen = {}

    def cb(state):
        seen[state.step] = state

    sched = load_schedule("fast")
    # the hand observed 1 cm off, so the hand phase has something to correct (a hand at the
    # truth stays at the identity: keep_best keeps the best iterate)
    sc = make_scene(object_perturbation=OBJECT_PERTURBATION,
                    hand_perturbation=similarity_about((0.0, 0.0, 0.3),
                                                       translation=(0.01, 0.0, 0.0)))
    GuidedSampler(backbone, sched, _small(max_iterations=8)).run(
        sc.observations, progress=False, callbacks=[cb])
    # step 3 is the hand phase: the velocity is the model's (with CFG, as the engine calls it)
    cond = backbone.encode_condition(sc.observations.object_image)
    v_model = backbone.velocity(seen[3].latent, seen[3].sigma, cond, seen[3].guidance_scale)
    assert torch.allclose(seen[3].velocity, v_model)
    # step 4 optimises the velocity
    v_model = backbone.velocity(seen[4].latent, seen[4].sigma, cond, seen[4].guidance_scale)
    assert not torch.allclose(seen[4].velocity, v_model)
    # the hand similarity found at step 3 is unchanged by the object phase (step 4)
    assert torch.equal(seen[3].hand_similarity.matrix(), seen[4].hand_similarity.matrix())
    assert not torch.equal(seen[3].hand_similarity.matrix(),
                           torch.eye(4, dtype=seen[3].hand_similarity.scale.dtype))


@pytest.fixture
def nan_loss():
    @register_loss("test_nan_at_2", needs=("hand_mesh",), overwrite=True)
    def _term(ctx):
        """NaN from the 3rd call on."""
        _term.calls += 1
        v = ctx.hand_mesh.vertices.sum() * 0
        return v + (float("nan") if _term.calls >= 3 else 0.0)

    _term.calls = 0
    yield _term
    LOSSES._remove("test_nan_at_2")


def _nan_schedule(policy):
    return load_schedule({"name": f"nan_{policy}", "num_steps": 4, "on_nonfinite": policy,
                          "phases": [{"name": "hand", "steps": [1, 2], "iterations": 2,
                                      "optimize": {"hand.translation": 1e-3},
                                      "weights": {"keypoints_2d": 1e-2, "test_nan_at_2": 1.0}}]})


@pytest.mark.parametrize("policy", ["raise", "skip", "stop"])
def test_nonfinite_policy(backbone, scene, nan_loss, policy):
    sampler = GuidedSampler(backbone, _nan_schedule(policy), _small())
    if policy == "raise":
        with pytest.raises(NonFiniteLossError, match=r"'test_nan_at_2'.*phase 'hand', step 2"):
            sampler.run(scene.observations, progress=False)
        return
    res = sampler.run(scene.observations, progress=False)
    if policy == "skip":
        assert res.status == "ok"
        assert res.counters["skipped_nonfinite"] == 2 and res.counters["iterations"] == 2
    else:
        assert res.status.startswith("guidance stopped") and "test_nan_at_2" in res.status
        assert res.counters["guidance_stopped"] == 1 and res.counters["iterations"] == 2
        assert not res.object_mesh.is_empty  # sampling finished unguided
    assert [r.skipped for r in res.history][2].startswith("nonfinite:test_nan_at_2")


def test_empty_isosurface_skips_iterations(scene):
    class Empty(GaussianGridBackbone):
        def decode_sdf(self, latent, points):  # all outside: no surface
            return super().decode_sdf(latent, points).abs() + 1.0

    sched = load_schedule({"base": "fast", "name": "e", "phases": {"hand": None,
                                                                   "joint": None}})
    res = GuidedSampler(Empty(), sched, _small(max_iterations=3)).run(
        scene.observations, progress=False)
    assert res.counters["skipped_empty_surface"] == 3
    assert res.counters["iterations"] == 0
    assert res.status == "empty object mesh" and res.object_mesh.is_empty
    assert {r.skipped for r in res.history} == {"empty_surface"}


def test_render_size_resamples_targets(backbone, scene):
    from hoiguide.guidance.targets import prepare_targets as _prepare_targets

    t = _prepare_targets(scene.observations, 32, torch.float64, torch.device("cpu"))
    assert t.camera.width == 32 and t.mask_hand.shape == (32, 32)
    assert torch.allclose(t.keypoints_2d, scene.observations.keypoints_2d.double() / 2)
    # area-downsampled mask keeps the covered fraction
    assert abs(float(t.mask_object.mean()) - float(scene.observations.mask_object.float().mean())
               ) < 1e-6
    n = t.target_normals.norm(dim=-1)
    assert torch.allclose(n[n > 0], torch.ones_like(n[n > 0]), atol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="did you mean render_size"):
        GuidanceOptions.coerce({"render_sise": 32})
    with pytest.raises(ValueError, match="grid_resolution"):
        GuidanceOptions(grid_resolution=1)


def test_sparse_decoding_gives_the_dense_result(backbone, scene):
    """Narrow-band decoding (forced at 33^3 with an options dict; ``True`` switches it on from
    65^3) reproduces the dense engine run: same history to float rounding and the same final
    mesh."""
    opts = {"grid_resolution": 33, "final_resolution": 33, "max_iterations": 2}
    runs = [GuidedSampler(backbone, "fast", _small(**opts, sparse=sp)).run(
        scene.observations, seed=5, progress=False) for sp in ({"band": 1.0}, False)]
    sparse, dense = runs
    assert sparse.object_mesh.num_faces == dense.object_mesh.num_faces > 0
    torch.testing.assert_close(sparse.object_mesh.vertices, dense.object_mesh.vertices,
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(sparse.history.series("total"), dense.history.series("total"),
                               rtol=1e-6)
    # and it did decode sparsely: the 33^3 grid's levels 9, 17, 33 leave points undecoded
    from hoiguide.geometry import sparse_grid
    from hoiguide.geometry.sparse import sdf_query

    q = sdf_query(backbone, sparse.latent)
    sg = sparse_grid(lambda p: q(p)[0], backbone.bounds, 33, dtype=torch.float64)
    assert sg.queries < sg.dense_queries
