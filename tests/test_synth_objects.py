"""Tests for hoiguide.synth.objects: the --objects grammar and the object meshes."""

import math

import numpy as np
import pytest
import torch

from hoiguide.synth.objects import (
    BROKEN_INDICES, DEV_INDICES, EVAL_INDICES, NAMED_OBJECTS, PROCEDURAL_KINDS, ObjectSource,
    load_object, parse_object_spec,
)


# ---------------------------------------------------------------------------------------
# naive references
# ---------------------------------------------------------------------------------------


def closed_and_consistent(faces: np.ndarray) -> bool:
    """Every directed edge appears exactly once and its reverse exactly once."""
    directed = {}
    for f in faces.tolist():
        for k in range(3):
            e = (f[k], f[(k + 1) % 3])
            directed[e] = directed.get(e, 0) + 1
    return all(c == 1 and directed.get((b, a), 0) == 1 for (a, b), c in directed.items())


def signed_volume(V: np.ndarray, F: np.ndarray) -> float:
    total = 0.0
    for a, b, c in F:
        total += float(np.dot(V[a], np.cross(V[b], V[c]))) / 6.0
    return total


# ---------------------------------------------------------------------------------------
# parse_object_spec
# ---------------------------------------------------------------------------------------


def test_constants():
    assert {"box", "cylinder", "sphere", "bottle", "mug", "torus"} <= set(PROCEDURAL_KINDS)
    assert len(PROCEDURAL_KINDS) >= 10 and len(set(PROCEDURAL_KINDS)) == len(PROCEDURAL_KINDS)
    assert DEV_INDICES == range(0, 700) and EVAL_INDICES == range(700, 1000)
    assert {"duck", "bunny", "teddy"} <= set(NAMED_OBJECTS)


def test_parse_ranges_and_splits():
    dev = parse_object_spec("pybullet:0-699")
    assert len(dev) == 700 - len(BROKEN_INDICES)
    assert all(s.split == "dev" and s.kind == "pybullet" for s in dev)
    assert [s.name for s in parse_object_spec("pybullet:000-010")] == \
        [f"{i:03d}" for i in range(11)]
    edge = parse_object_spec("pybullet:698-701")
    assert [(s.name, s.split) for s in edge] == [("698", "dev"), ("699", "dev"),
                                                 ("700", "eval"), ("701", "eval")]
    assert str(edge[0]) == "pybullet:698"
    assert parse_object_spec("pybullet:7")[0] == ObjectSource("pybullet", "007", "dev")
    ev = parse_object_spec("pybullet:eval")
    assert {s.split for s in ev} == {"eval"} and len(ev) == 300 + len(NAMED_OBJECTS)


def test_parse_names_procedural_and_joins():
    named = parse_object_spec("pybullet:duck,bunny")
    assert [str(s) for s in named] == ["pybullet:duck", "pybullet:bunny"]
    assert all(s.split == "eval" for s in named)
    proc = parse_object_spec("procedural:box, mug")
    assert [str(s) for s in proc] == ["procedural:box", "procedural:mug"]
    assert all(s.split == "procedural" for s in proc)
    assert [s.name for s in parse_object_spec("procedural:all")] == list(PROCEDURAL_KINDS)
    joined = parse_object_spec("procedural:mug+pybullet:1-2+pybullet:duck+procedural:mug")
    assert [str(s) for s in joined] == ["procedural:mug", "pybullet:001", "pybullet:002",
                                        "pybullet:duck"]  # duplicate dropped


def test_parse_broken_index_skipped_in_range_and_refused_alone():
    (b,) = BROKEN_INDICES
    names = [s.name for s in parse_object_spec(f"pybullet:{b - 1}-{b + 1}")]
    assert names == [f"{b - 1:03d}", f"{b + 1:03d}"]
    with pytest.raises(ValueError, match="no usable geometry"):
        parse_object_spec(f"pybullet:{b}")


@pytest.mark.parametrize("spec, pattern", [
    ("pybullet:duk", r"'duk'.*Did you mean 'duck'"),
    ("procedural:mugg", r"'mugg'.*Did you mean 'mug'"),
    ("procedral:box", r"Did you mean 'procedural'"),
    ("pybullet:5-3", r"reversed"),
    ("pybullet:0-1000", r"outside"),
    ("box", r"no 'KIND:' prefix"),
    ("", r"empty"),
    ("procedural:box,,mug", r"empty item"),
])
def test_parse_errors(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_object_spec(spec)


def test_parse_error_lists_valid_kinds():
    with pytest.raises(ValueError) as e:
        parse_object_spec("procedural:blob")
    for k in PROCEDURAL_KINDS:
        assert k in str(e.value)


# ---------------------------------------------------------------------------------------
# procedural objects
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
def test_procedural_closed_sized_centred(kind):
    for seed in (0, 1):
        size_range = (0.06, 0.12)
        m = load_object(ObjectSource.procedural(kind), rng=np.random.default_rng(seed),
                        size_range=size_range)
        V, F = m.numpy()
        assert m.metadata["source"] == f"procedural:{kind}"
        assert m.metadata["watertight"] is True
        assert closed_and_consistent(F), kind
        assert signed_volume(V, F) > 0, kind  # outward winding
        ext = V.max(0) - V.min(0)
        assert size_range[0] - 1e-6 <= ext.max() <= size_range[1] + 1e-6
        assert ext.max() == pytest.approx(m.metadata["size"], rel=1e-5)
        np.testing.assert_allclose(0.5 * (V.max(0) + V.min(0)), 0, atol=1e-6)
        assert m.num_faces <= 20_000
        # no degenerate sliver soup: every face has a positive area
        tri = V[F]
        areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                     axis=1)
        assert areas.min() > 0


def test_sphere_and_torus_volumes_match_analytic():
    m = load_object(ObjectSource.procedural("sphere"), rng=np.random.default_rng(3))
    V, F = m.numpy()
    r = 0.5 * (V.max(0) - V.min(0)).max()
    assert signed_volume(V, F) == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.01)
    m = load_object(ObjectSource.procedural("torus"), rng=np.random.default_rng(4))
    V, F = m.numpy()
    ext = V.max(0) - V.min(0)
    r_tube = 0.5 * ext[2]  # the torus lies in the xy plane
    R = 0.5 * ext[0] - r_tube
    assert signed_volume(V, F) == pytest.approx(2 * math.pi ** 2 * R * r_tube ** 2, rel=0.02)


def test_hollow_shapes_are_hollow():
    """A mug / cup / bowl encloses less volume than its solid of revolution, and the mug's
    handle sticks out on one side only."""
    for kind in ("mug", "cup", "bowl"):
        m = load_object(ObjectSource.procedural(kind), rng=np.random.default_rng(5))
        V, F = m.numpy()
        ext = V.max(0) - V.min(0)
        radius = 0.5 * ext[1]  # y: the handle (if any) is along +x
        solid = math.pi * radius ** 2 * ext[2]
        assert signed_volume(V, F) < 0.6 * solid, kind
    m = load_object(ObjectSource.procedural("mug"), rng=np.random.default_rng(5))
    V, _ = m.numpy()
    ext = V.max(0) - V.min(0)
    assert ext[0] > 1.2 * ext[1]


def test_procedural_deterministic():
    a = load_object(ObjectSource.procedural("bottle"), rng=np.random.default_rng(11))
    b = load_object("procedural:bottle", rng=np.random.default_rng(11))
    c = load_object(ObjectSource.procedural("bottle"), rng=np.random.default_rng(12))
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)
    assert a.vertices.shape != c.vertices.shape or not torch.equal(a.vertices, c.vertices)


def test_load_object_errors():
    with pytest.raises(ValueError, match="size_range"):
        load_object("procedural:box", rng=np.random.default_rng(0), size_range=(0.2, 0.1))
    with pytest.raises(TypeError, match="Generator"):
        load_object("procedural:box", rng=0)
    with pytest.raises(ValueError, match="one object"):
        load_object("procedural:box,mug", rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------------------
# pybullet objects
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pybullet_ready():
    pytest.importorskip("pybullet_data")
    pytest.importorskip("manifold3d")


def test_named_object_files_exist(pybullet_ready):
    from hoiguide.synth.objects import pybullet_data_path

    root = pybullet_data_path()
    for name, rel in NAMED_OBJECTS.items():
        assert (root / rel).is_file(), name


@pytest.mark.parametrize("index", [0, 1, 123])
def test_pybullet_objects_load_closed_sized_centred(pybullet_ready, index):
    size_range = (0.08, 0.16)
    m = load_object(ObjectSource.pybullet_index(index), rng=np.random.default_rng(index),
                    size_range=size_range)
    V, F = m.numpy()
    assert m.metadata["source"] == f"pybullet:{index:03d}"
    assert m.metadata["split"] == "dev"
    assert m.metadata["watertight"] is True and m.metadata["components"] == 1
    assert closed_and_consistent(F)
    assert signed_volume(V, F) > 0
    ext = V.max(0) - V.min(0)
    assert size_range[0] - 1e-6 <= ext.max() <= size_range[1] + 1e-6
    np.testing.assert_allclose(0.5 * (V.max(0) + V.min(0)), 0, atol=1e-6)
    assert m.num_faces <= 20_000


def test_pybullet_union_matches_pieces(pybullet_ready):
    """The united surface keeps the shape: its volume is the total volume of the convex
    pieces (they barely overlap) up to the small outward push and rounding."""
    import trimesh

    from hoiguide.synth.objects import _read_obj, pybullet_data_path

    Vraw, groups = _read_obj(pybullet_data_path() / "random_urdfs/001/001.obj")
    pieces = sum(trimesh.convex.convex_hull(Vraw[np.unique(f)]).volume for _, f in groups)
    lo, hi = Vraw.min(0), Vraw.max(0)
    m = load_object(ObjectSource.pybullet_index(1), rng=np.random.default_rng(0))
    V, F = m.numpy()
    scale = (V.max(0) - V.min(0)).max() / (hi - lo).max()
    assert signed_volume(V, F) / scale ** 3 == pytest.approx(pieces, rel=0.01)


def test_pybullet_deterministic_and_face_cap(pybullet_ready):
    a = load_object(ObjectSource.pybullet_index(123), rng=np.random.default_rng(7))
    b = load_object(ObjectSource.pybullet_index(123), rng=np.random.default_rng(7))
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)
    # object 123 (~100 convex pieces) unites into ~25k faces: simplified under the budget
    c = load_object(ObjectSource.pybullet_index(123), rng=np.random.default_rng(7),
                    max_faces=14_000)
    assert c.num_faces <= 14_000 and c.metadata["watertight"]
    assert closed_and_consistent(c.numpy()[1])
