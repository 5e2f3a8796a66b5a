"""Procedural families of hand-held objects (hoiguide.synth.objects): closed surfaces,
proportions and sizes within each family's declared ranges, seeded instances, the
train / validation / evaluation seed split and its spec grammar, and grasps on every family."""

import numpy as np
import pytest
import torch

from hoiguide.synth.objects import (
    EVAL_SEEDS, FAMILIES, GENERATOR_TRAIN_INDICES, GENERATOR_VAL_INDICES, PROCEDURAL_KINDS,
    SEED_SPLITS, TRAIN_SEEDS, VAL_SEEDS, ObjectSource, load_object, parse_object_spec,
    seed_split,
)

HAND_HELD = ("mug", "cup", "bowl", "bottle", "can", "box", "carton", "phone", "knife",
             "spatula", "screwdriver", "pen", "marker", "banana", "spray_bottle")


def closed_and_consistent(faces: np.ndarray) -> bool:
    """Every directed edge appears exactly once and its reverse exactly once (naive)."""
    directed: dict[tuple[int, int], int] = {}
    for f in faces.tolist():
        for k in range(3):
            e = (f[k], f[(k + 1) % 3])
            directed[e] = directed.get(e, 0) + 1
    return all(c == 1 and directed.get((b, a), 0) == 1 for (a, b), c in directed.items())


def signed_volume(V: np.ndarray, F: np.ndarray) -> float:
    t = V[F]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def test_the_hand_held_categories_are_families():
    assert set(HAND_HELD) <= set(PROCEDURAL_KINDS)
    assert tuple(FAMILIES) == PROCEDURAL_KINDS
    for f in FAMILIES.values():
        lo, hi = f.size
        assert 0.03 <= lo < hi <= 0.4, f.name          # things a hand holds, metres
        for r in f.aspect:
            assert 0 < r[0] <= r[1] <= 1, f.name


@pytest.mark.parametrize("name", PROCEDURAL_KINDS)
def test_family_instances_closed_and_within_declared_ranges(name):
    fam = FAMILIES[name]
    for seed in (TRAIN_SEEDS[3], VAL_SEEDS[7], EVAL_SEEDS[11]):
        m = load_object(ObjectSource.procedural(name, seed), rng=np.random.default_rng(0))
        V, F = m.numpy()
        assert m.metadata["watertight"] is True, (name, seed)
        assert closed_and_consistent(F), (name, seed)
        assert signed_volume(V, F) > 0, (name, seed)
        ext = np.sort(V.max(0) - V.min(0))[::-1]
        assert fam.size[0] - 1e-6 <= ext[0] <= fam.size[1] + 1e-6, (name, seed, ext)
        (mid_lo, mid_hi), (short_lo, short_hi) = fam.aspect
        assert mid_lo - 1e-3 <= ext[1] / ext[0] <= mid_hi + 1e-3, (name, seed, ext)
        assert short_lo - 1e-3 <= ext[2] / ext[0] <= short_hi + 1e-3, (name, seed, ext)
        np.testing.assert_allclose(0.5 * (V.max(0) + V.min(0)), 0, atol=1e-6)
        tri = V[F]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        assert area.min() > 0, (name, seed)                        # no degenerate faces
        assert m.metadata["components"] == 1 and m.metadata["self_intersecting"] is False


def test_real_world_proportions_of_some_families():
    """The numbers a person would check: a pen is slim, a phone is thin, a knife is long, a
    bowl is wider than tall, a mug's handle sticks out along +x."""
    def ext(spec):
        V, _ = load_object(spec, rng=np.random.default_rng(0)).numpy()
        return V.max(0) - V.min(0)

    for s in VAL_SEEDS[:3]:
        pen = ext(f"procedural:pen@{s}")
        assert 0.12 <= pen[2] <= 0.15 and pen[:2].max() < 0.02     # ~1 cm thick, axis z
        phone = ext(f"procedural:phone@{s}")
        assert phone[1] < 0.013 and 0.05 < phone[0] < 0.09          # thin along y
        knife = ext(f"procedural:knife@{s}")
        assert knife[2] > 0.18 and knife[1] < 0.025
        bowl = ext(f"procedural:bowl@{s}")
        assert bowl[0] > 2 * bowl[2]
        mug = ext(f"procedural:mug@{s}")
        assert mug[0] > 1.2 * mug[1]


def test_seeded_instances_are_reproducible_and_ignore_the_callers_rng():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    a = load_object("procedural:knife@10003", rng=rng)
    assert rng.bit_generator.state == state                 # caller's stream untouched
    b = load_object(ObjectSource.procedural("knife", 10003), rng=np.random.default_rng(99))
    c = load_object("procedural:knife@10004", rng=np.random.default_rng(5))
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)
    assert a.metadata["size"] == b.metadata["size"]
    assert a.vertices.shape != c.vertices.shape or not torch.equal(a.vertices, c.vertices)
    assert a.metadata["source"] == "procedural:knife@10003" and a.metadata["split"] == "dev"
    # the same family under different names gives different instances
    d = load_object("procedural:marker@10003", rng=np.random.default_rng(5))
    assert d.vertices.shape != a.vertices.shape
    # without a seed: drawn from the caller's stream, as before
    e = load_object("procedural:knife", rng=np.random.default_rng(1))
    f = load_object("procedural:knife", rng=np.random.default_rng(1))
    assert torch.equal(e.vertices, f.vertices)
    assert e.metadata["source"] == "procedural:knife"


def test_size_default_is_the_familys_and_an_explicit_range_wins():
    for s in VAL_SEEDS[:4]:
        m = load_object(f"procedural:spatula@{s}", rng=np.random.default_rng(0))
        assert FAMILIES["spatula"].size[0] <= m.metadata["size"] <= FAMILIES["spatula"].size[1]
        m = load_object(f"procedural:spatula@{s}", rng=np.random.default_rng(0),
                        size_range=(0.05, 0.06))
        assert 0.05 <= m.metadata["size"] <= 0.06
    # without a seed the historical default (0.05-0.20 m) is kept: older scenes are unchanged
    sizes = [load_object("procedural:spatula", rng=np.random.default_rng(k)).metadata["size"]
             for k in range(8)]
    assert 0.05 <= min(sizes) and max(sizes) <= 0.20 and min(sizes) < 0.2


def test_seed_split_ranges_are_disjoint_and_named():
    names = list(SEED_SPLITS)
    assert names == ["train", "val", "eval"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(SEED_SPLITS[a]) & set(SEED_SPLITS[b])
    assert seed_split(0) == "train" and seed_split(9999) == "train"
    assert seed_split(10000) == "val" and seed_split(10999) == "val"
    assert seed_split(20000) == "eval"
    for bad in (11000, 19999, 21000, -1):
        with pytest.raises(ValueError, match="no split"):
            seed_split(bad)
    # the generator's random_urdfs split never reaches the evaluation indices
    assert max(GENERATOR_VAL_INDICES) < 700 and not set(GENERATOR_TRAIN_INDICES) & set(
        GENERATOR_VAL_INDICES)


def test_spec_grammar_for_seeded_instances():
    one = parse_object_spec("procedural:mug@10003")
    assert one == [ObjectSource("procedural", "mug", "dev", 10003)]
    assert str(one[0]) == "procedural:mug@10003" and one[0].generator_split == "val"
    rng5 = parse_object_spec("procedural:knife@10000-10004")
    assert [s.seed for s in rng5] == list(range(10000, 10005))
    val = parse_object_spec("procedural:all@val")
    assert len(val) == len(PROCEDURAL_KINDS) * len(VAL_SEEDS)
    assert {s.generator_split for s in val} == {"val"} and {s.split for s in val} == {"dev"}
    ev = parse_object_spec("procedural:pen@eval")
    assert {s.split for s in ev} == {"eval"} and len(ev) == len(EVAL_SEEDS)
    tr = parse_object_spec("procedural:banana@train")
    assert {s.generator_split for s in tr} == {"train"}
    # splits of the same family are disjoint as objects
    assert not {str(s) for s in tr} & {str(s) for s in parse_object_spec("procedural:banana@val")}
    # old specs keep their meaning
    assert parse_object_spec("procedural:mug") == [ObjectSource("procedural", "mug",
                                                                "procedural")]
    assert parse_object_spec("procedural:mug")[0].generator_split is None
    assert [s.name for s in parse_object_spec("procedural:all")] == list(PROCEDURAL_KINDS)
    # mixed with pybullet parts; the generator split of pybullet objects
    mix = parse_object_spec("procedural:cup@5+pybullet:599,600,700,duck")
    assert [s.generator_split for s in mix] == ["train", "train", "val", "eval", "eval"]


@pytest.mark.parametrize("spec, msg", [
    ("procedural:mug@abc", "after '@'"),
    ("procedural:mug@15000", "no split"),
    ("procedural:mug@10010-10001", "reversed"),
    ("procedural:mug@10990-11010", "no split"),
    ("procedural:knif@10000", "Did you mean 'knife'"),
])
def test_spec_grammar_errors_name_the_problem(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_object_spec(spec)


def test_object_source_refuses_inconsistent_seeds():
    with pytest.raises(ValueError, match="belongs to split"):
        ObjectSource("procedural", "mug", "dev", 20001)
    with pytest.raises(ValueError, match="only procedural"):
        ObjectSource("pybullet", "001", "dev", 3)


@pytest.mark.slow
def test_a_grasp_is_found_on_every_family():
    """Two validation instances per family: the grasp synthesis finds a grasp that touches
    without penetrating (within its 2 mm tolerance)."""
    from hoiguide.synth.generate import default_hand
    from hoiguide.synth.grasp import GraspError, synthesize_grasp

    hand = default_hand()
    failed = []
    for name in PROCEDURAL_KINDS:
        for seed in VAL_SEEDS[:2]:
            obj = load_object(f"procedural:{name}@{seed}", rng=np.random.default_rng(0),
                              max_faces=6000).to(dtype=torch.float64)
            try:
                g = synthesize_grasp(obj, model=hand, rng=np.random.default_rng(seed))
            except GraspError:
                failed.append(f"{name}@{seed}")
                continue
            assert g.stats["hand_penetration_m"] <= 0.0021, (name, seed)
            assert g.stats["object_penetration_m"] <= 0.0021, (name, seed)
            assert len(g.stats["contact_fingers"]) >= 2, (name, seed)
    assert not failed, f"no grasp found for {failed}"
