"""Tests of hoiguide.phases: the YAML schema, validation errors (with their YAML paths),
window resolution, the presets and their ablation semantics."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from hoiguide.losses import LOSSES, Option, register_loss
from hoiguide.phases import (
    GROUPS,
    PhaseSchedule,
    ScheduleError,
    available_presets,
    load_schedule,
)
from hoiguide.phases import load as schema

PRESETS = {"followmyhold", "fast", "no_guidance", "no_phase1", "no_phase2", "swapped",
           "joint_only", "no_normal", "no_disparity", "no_silhouette", "no_intersection",
           "no_proximity", "unguided", "followmyhold_reference"}


def _write(tmp_path: Path, text: str, name: str = "sched.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


MINIMAL = """
name: mini
num_steps: 10
phases:
  - name: a
    window: {start: 0.5, end: 1.0}
    iterations: 3
    optimize: {velocity: 1.0e-2}
    weights: {normal: 1.0}
"""


# --------------------------------------------------------------------------------------
# followmyhold: the reference numbers
# --------------------------------------------------------------------------------------


def test_followmyhold_resolves_to_the_reference_schedule():
    s = load_schedule("followmyhold")
    r = s.resolve()
    assert r.num_steps == 20 and [p.name for p in r] == ["hand", "object", "joint"]
    hand, obj, joint = r
    assert hand.steps == (9,) and obj.steps == (10,) and joint.steps == tuple(range(11, 20))
    assert r.unguided_steps == tuple(range(9))
    assert (hand.iterations, obj.iterations, joint.iterations) == (200, 100, 50)
    # hand rates: our measured fix; the reference's are kept in followmyhold_reference
    assert hand.learning_rates == {"hand.scale": 1e-3, "hand.translation": 1e-3,
                                   "hand.rotation": 2e-2}
    ref = load_schedule("followmyhold_reference").resolve()
    assert ref[0].learning_rates == {"hand.scale": 1e-2, "hand.translation": 1e-2,
                                     "hand.rotation": 0.5}
    assert [p.steps for p in ref] == [p.steps for p in r]
    # object rates: our measured fix too; the reference's are in followmyhold_reference
    assert obj.learning_rates == {"object.scale": 2e-3, "object.translation": 2e-3,
                                  "object.rotation": 1e-2, "velocity": 1e-4}
    assert joint.learning_rates == {"hand.scale": 1e-4, "hand.translation": 1e-4,
                                    "hand.rotation": 1e-2, "object.scale": 1e-3,
                                    "object.translation": 1e-3, "object.rotation": 5e-3,
                                    "velocity": 1e-2}
    assert ref[1].learning_rates == {"object.scale": 1e-2, "object.translation": 1e-2,
                                     "object.rotation": 1e-2, "velocity": 1e-4}
    assert ref[2].learning_rates == {"hand.scale": 1e-4, "hand.translation": 1e-4,
                                     "hand.rotation": 1e-2, "object.scale": 5e-2,
                                     "object.translation": 1e-2, "object.rotation": 1e-2,
                                     "velocity": 1e-2}
    assert (hand.optimizer.type, hand.optimizer.eps, hand.optimizer.weight_decay) == \
        ("adam", 1e-4, 0.0)
    for p in (obj, joint):
        assert (p.optimizer.type, p.optimizer.eps, p.optimizer.weight_decay) == \
            ("adamw", 1e-4, 0.01)
    # the reference weights (REFERENCE.md section 3)
    w = {p.name: {k: v[0] for k, v in p.weights.items()} for p in r}
    assert w["hand"] == {"keypoints_2d": 1e-2, "normal": 1.0, "disparity": 10.0,
                         "silhouette": 1.0, "translation": 1e-2}
    assert w["object"] == {"normal": 10.0, "disparity": 10.0, "silhouette": 100.0,
                           "edge_length": 1.0, "vertex_l2": 1e-3, "translation": 1e-2}
    assert {k: v for k, v in w["joint"].items() if k != "intersection"} == {
        "proximity": 10.0, "normal": 10.0, "disparity": 10.0, "silhouette": 10.0,
        "edge_length": 1.0, "vertex_l2": 1e-3, "translation": 1e-3,
        # the phase-1 hand terms x 1e-3
        "keypoints_2d": 1e-5, "normal@hand": 1e-3, "disparity@hand": 1e-2,
        "silhouette@hand": 1e-3, "translation@hand": 1e-5}
    # intersection: weaker, then stronger in the last three steps
    iw = joint.weights["intersection"]
    assert len(set(iw[:-3])) == 1 and len(set(iw[-3:])) == 1 and iw[-1] > iw[0]
    # options: masks and our fixes
    ph = {p.name: p for p in s.phases}
    assert ph["hand"].weight("normal").options["mask"] == "hand"
    assert ph["hand"].weight("silhouette").options["which"] == "hand"
    assert ph["object"].weight("silhouette").options == {"which": "object",
                                                         "ignore_hand": True,
                                                         "target": "hard"}
    assert ph["joint"].weight("silhouette").options["which"] == "union"
    assert ph["joint"].weight("proximity").options["margin"] == 0.01
    assert s.on_nonfinite in ("raise", "skip", "stop")


def test_followmyhold_cfg_schedule():
    s = load_schedule("followmyhold")
    assert [s.guidance_scale_at(i) for i in range(11)] == [5.0] * 11
    for i in range(11, 20):   # w = 5 (1 - i / 20) after step 10
        assert s.guidance_scale_at(i) == pytest.approx(5 * (1 - i / 20))
    assert s.guidance_scale_at(19) == pytest.approx(0.25)
    assert s.resolve().guidance_scales[11] == pytest.approx(2.25)


def test_phase_at_and_terms_at():
    s = load_schedule("followmyhold")
    assert s.phase_at(8) is None and s.terms_at(8) == ()
    assert s.phase_at(9).name == "hand" and s.phase_at(10).name == "object"
    assert all(s.phase_at(i).name == "joint" for i in range(11, 20))
    t16 = {t.label: t for t in s.terms_at(16)}
    t17 = {t.label: t for t in s.terms_at(17)}
    assert t17["intersection"].weight > t16["intersection"].weight
    assert t16["normal@hand"].loss == "normal" and t16["normal@hand"].options["mask"] == "hand"
    assert all(t.loss in LOSSES for t in t16.values())
    # other step counts
    assert s.phase_at(4, 10).name == "hand" and s.phase_at(5, 10).name == "object"
    assert s.phase_at(9, 10).name == "joint"


@pytest.mark.parametrize("n,expect", [
    (20, ([9], [10], list(range(11, 20)))),
    (10, ([4], [5], [6, 7, 8, 9])),
    (40, ([18, 19], [20, 21], list(range(22, 40)))),
    (8, ([3], [4], [5, 6, 7])),
    (4, ([1], [2], [3])),
    (3, ([0], [1], [2])),
])
def test_windows_resolve_for_other_step_counts(n, expect):
    r = load_schedule("followmyhold").resolve(n)
    assert [list(p.steps) for p in r] == [list(e) for e in expect]


def test_windows_stay_ordered_and_disjoint_for_any_step_count():
    s = load_schedule("followmyhold")
    for n in range(1, 80):
        r = s.resolve(n)
        steps = [p.steps for p in r]
        flat = [i for st in steps for i in st]
        assert flat == sorted(flat) and len(set(flat)) == len(flat)
        assert all(0 <= i < n for i in flat)
        assert steps[2] and steps[2][-1] == n - 1   # joint runs to the end
        if n >= 3:
            assert all(steps)
        if n >= 5:   # room enough: nominal start of the first window
            assert steps[0][0] == int(0.45 * n + 1e-9)


def test_too_few_steps_leaves_a_phase_empty_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="hoiguide.phases.model"):
        r = load_schedule("followmyhold").resolve(2)
    assert [p.steps for p in r] == [(), (0,), (1,)]   # the earliest phase gives way
    assert r.by_name("hand").empty
    assert "covers no step at num_steps=2" in caplog.text
    assert [p.steps for p in load_schedule("followmyhold").resolve(3)] == [(0,), (1,), (2,)]
    assert "(none: too few steps)" in str(r)


def test_resolve_table_is_readable():
    text = str(load_schedule("followmyhold").resolve())
    assert "num_steps=20" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.split()}
    assert " 9 " in lines["hand"] and " 10 " in lines["object"] and "11-19" in lines["joint"]
    assert "200" in lines["hand"] and "adamw" in lines["object"]
    assert "unguided steps: 0-8" in text
    assert "intersection=[100@11-16; 1000@17-19]" in text


# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------


def test_every_preset_loads_resolves_and_round_trips(tmp_path):
    assert PRESETS <= set(available_presets())
    for name in available_presets():
        s = load_schedule(name)
        assert s.name == name and s.description
        r = s.resolve()
        assert any(p.steps or p.after_sampling for p in r) or name == "unguided"
        small = s.resolve(2)   # the 2-step smoke test of the engine
        assert all(i in (0, 1) for p in small for i in p.steps)
        for p in s.phases:
            assert p.make_optimizer({g: torch.zeros(2, requires_grad=True) for g in GROUPS})
            for w in p.weights:
                assert w.loss in LOSSES
        # to_yaml gives a complete file that loads back to the same schedule
        path = tmp_path / f"{name}.yaml"
        s.to_yaml(path)
        assert load_schedule(path) == s


def _terms(s: PhaseSchedule) -> dict:
    return {p.name: {w.label: (w.loss, w.weight, w.options, w.by_step) for w in p.weights}
            for p in s.phases}


def test_ablation_presets_mean_what_they_say():
    fmh = load_schedule("followmyhold")
    steps = lambda s: {p.name: p.steps for p in s.resolve()}  # noqa: E731
    assert steps(load_schedule("no_phase1")) == {"object": (10,), "joint": tuple(range(11, 20))}
    assert steps(load_schedule("no_phase2")) == {"hand": (9,), "joint": tuple(range(11, 20))}
    assert steps(load_schedule("swapped")) == {"object": (9,), "hand": (10,),
                                               "joint": tuple(range(11, 20))}
    assert steps(load_schedule("joint_only")) == {"joint": tuple(range(9, 20))}
    fast = load_schedule("fast")
    assert fast.num_steps < fmh.num_steps
    assert [p.name for p in fast.resolve()] == ["hand", "object", "joint"]
    assert all(f.iterations < g.iterations for f, g in zip(fast.phases, fmh.phases))
    assert _terms(fast) == _terms(fmh)
    # no_guidance: nothing during sampling, the transforms only afterwards, never velocity
    ng = load_schedule("no_guidance")
    assert ng.guided_phases == () and [p.name for p in ng.post_phases] == \
        ["hand", "object", "joint"]
    assert ng.resolve().unguided_steps == tuple(range(20))
    for p in ng.phases:
        assert "velocity" not in p.optimize and "latent" not in p.optimize
        assert set(p.optimize) == set(fmh.phase(p.name).optimize) - {"velocity"}
    assert _terms(ng) == _terms(fmh)
    # loss ablations: followmyhold minus every term of that loss
    for loss in ("normal", "disparity", "silhouette", "intersection", "proximity"):
        s = load_schedule(f"no_{loss}")
        want = {ph: {k: v for k, v in t.items() if v[0] != loss}
                for ph, t in _terms(fmh).items()}
        assert _terms(s) == want
        assert any(v[0] == loss for t in _terms(fmh).values() for v in t.values())
        assert [p.steps for p in s.resolve()] == [p.steps for p in fmh.resolve()]


def test_copy_a_preset_edit_it_and_load_the_path(tmp_path):
    src = schema._preset_dir() / "followmyhold.yaml"
    data = yaml.safe_load(src.read_text())
    data["name"] = "mine"
    joint = next(p for p in data["phases"] if p["name"] == "joint")
    joint["iterations"] = 7
    joint["weights"]["silhouette"]["weight"] = 3.5
    joint["optimize"]["velocity"] = 2e-3
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    s = load_schedule(str(path))
    r = s.resolve()
    j = r.by_name("joint")
    assert s.name == "mine" and s.source == str(path)
    assert j.iterations == 7 and j.weights["silhouette"] == (3.5,) * 9
    assert j.learning_rates["velocity"] == 2e-3
    assert r.by_name("hand").iterations == 200   # the rest is untouched
    # the same edit as a small derived file
    derived = _write(tmp_path, """
        base: followmyhold
        phases:
          joint:
            iterations: 7
            weights: {silhouette: {weight: 3.5}}
    """, "derived.yaml")
    d = load_schedule(derived)
    assert d.name == "derived"
    assert d.resolve().by_name("joint").iterations == 7
    assert d.phase("joint").weight("silhouette").weight == 3.5
    assert d.phase("joint").weight("silhouette").options["which"] == "union"  # merged
    # a base given as a path relative to the deriving file
    _write(tmp_path, "base: mine.yaml\nname: grandchild\nnum_steps: 10\n", "gc.yaml")
    g = load_schedule(tmp_path / "gc.yaml")
    assert g.num_steps == 10 and g.phase("joint").iterations == 7


def test_edits_through_the_api():
    s = load_schedule("followmyhold")
    s2 = s.replace_phase("joint", iterations=5).replace(num_steps=10)
    assert s2.resolve().by_name("joint").iterations == 5
    assert s2.resolve().by_name("joint").steps == (6, 7, 8, 9)
    assert s.phase("joint").iterations == 50   # frozen: the original is unchanged
    with pytest.raises(ScheduleError, match=r"phases\[0\].iterations: expected iterations > 0"):
        s.replace_phase("hand", iterations=0)
    with pytest.raises(KeyError, match="did you mean joint"):
        s.phase("jiont")
    # a parsed mapping may derive from a preset too
    m = load_schedule({"base": "followmyhold", "name": "m", "phases": {"hand": None}})
    assert [p.name for p in m.phases] == ["object", "joint"]


# --------------------------------------------------------------------------------------
# the YAML form
# --------------------------------------------------------------------------------------


def test_minimal_schedule_defaults_and_float_spelling(tmp_path):
    p = _write(tmp_path, MINIMAL.replace("1.0e-2", "1e-2"))   # YAML 1.1 reads 1e-2 as text
    s = load_schedule(p)
    assert s.phase("a").optimize == {"velocity": 0.01}
    assert s.guidance_scale == 5.0 and s.guidance_decay is None and s.on_nonfinite == "raise"
    assert s.phase("a").optimizer.type == "adam" and s.phase("a").optimizer.eps == 1e-8
    assert s.resolve().by_name("a").steps == (5, 6, 7, 8, 9)
    assert s.phase("a").weight("normal").options == {"mask": "union"}   # defaults filled in
    assert load_schedule(yaml.safe_load(MINIMAL)) == s   # a mapping works too
    assert load_schedule(s) is s


def test_explicit_steps_and_after_sampling(tmp_path):
    p = _write(tmp_path, """
        name: explicit
        num_steps: 12
        phases:
          - name: early
            steps: [2, 3]
            iterations: 1
            optimize: {latent: 1.0e-3}
            weights: {silhouette: 1.0}
          - name: last
            steps: [-1]
            iterations: 2
            optimize: {object.scale: 1.0e-2}
            weights: {normal: 1.0}
          - name: mid
            window: {start: 0.5, end: 0.75}
            iterations: 1
            optimize: {velocity: 1.0e-2}
            weights:
              intersection: {weight: 1.0, by_step: [{from: 1, weight: 2.0}, {from: -1, weight: 3.0}]}
          - name: post
            window: after_sampling
            iterations: 4
            optimize: {hand.translation: 1.0e-3}
            weights: {keypoints_2d: 1.0}
    """)
    s = load_schedule(p)
    r = s.resolve()
    assert [(x.name, x.steps, x.after_sampling) for x in r] == [
        ("early", (2, 3), False), ("mid", (6, 7, 8), False), ("last", (11,), False),
        ("post", (), True)]
    assert r.by_name("mid").weights["intersection"] == (1.0, 2.0, 3.0)
    assert s.resolve(20).by_name("last").steps == (19,)
    assert s.phase_at(11).name == "last" and s.phase_at(5) is None
    assert [p.name for p in s.post_phases] == ["post"]
    assert s.resolve().by_name("post").total_iterations == 4


def test_make_optimizer_uses_the_groups_learning_rates():
    ph = load_schedule("followmyhold").phase("object")
    params = {g: torch.zeros(3, requires_grad=True) for g in GROUPS}
    opt = ph.make_optimizer(params)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == ph.optimize
    assert all(g["eps"] == 1e-4 and g["weight_decay"] == 0.01 for g in opt.param_groups)
    hand = load_schedule("followmyhold").phase("hand").make_optimizer(params)
    assert type(hand) is torch.optim.Adam
    with pytest.raises(ValueError, match=r"needs tensors for \['velocity'\]"):
        ph.make_optimizer({g: params[g] for g in ("object.scale", "object.rotation",
                                                  "object.translation")})


def test_a_registered_custom_loss_can_be_scheduled(tmp_path):
    @register_loss("test_custom_term", options={"k": Option(2, minimum=1)}, overwrite=True)
    def _custom(ctx, k):
        return torch.zeros(())

    try:
        p = _write(tmp_path, MINIMAL.replace("{normal: 1.0}", "{test_custom_term: {weight: 1, k: 3}}"))
        assert load_schedule(p).phase("a").weight("test_custom_term").options == {"k": 3}
        p = _write(tmp_path, MINIMAL.replace("{normal: 1.0}", "{test_custom_term: {weight: 1, k: 0}}"))
        with pytest.raises(ScheduleError, match=r"phases\[0\].weights.test_custom_term.k: expected a value >= 1"):
            load_schedule(p)
    finally:
        LOSSES._remove("test_custom_term")


# --------------------------------------------------------------------------------------
# errors: every one names the YAML path
# --------------------------------------------------------------------------------------


def _err(tmp_path, text: str) -> str:
    p = _write(tmp_path, text)
    with pytest.raises(ScheduleError) as e:
        load_schedule(p)
    msg = str(e.value)
    assert str(p) in msg   # the file is named
    assert isinstance(e.value, ValueError)
    return msg


def _mini(**repl) -> str:
    text = MINIMAL
    for old, new in repl.items():
        old = old.replace("__", " ")
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("old,new,expect", [
    # the brief's example
    ("weights: {normal: 1.0}", "weights: {silhuette: 1.0}",
     "phases[0].weights.silhuette: unknown loss; did you mean silhouette?"),
    ("weights: {normal: 1.0}", "weights: {proximity: {weight: 1, margn: 0.01}}",
     "phases[0].weights.proximity.margn: unknown option of loss 'proximity'; did you mean margin?"),
    ("weights: {normal: 1.0}", "weights: {silhouette: {weight: 1, which: objet}}",
     "phases[0].weights.silhouette.which: expected one of"),
    ("weights: {normal: 1.0}", "weights: {normal: -1.0}",
     "phases[0].weights.normal: expected a weight >= 0"),
    ("weights: {normal: 1.0}", "weights: {normal: {mask: hand}}",
     "phases[0].weights.normal: a mapping needs 'weight'"),
    ("weights: {normal: 1.0}", "weights: {normal@: 1.0}", "phases[0].weights.normal@:"),
    ("weights: {normal: 1.0}", "weights: {normal: {weight: 1, by_step: [{from: 1.5, weight: 2}]}}",
     "phases[0].weights.normal.by_step[0].from: expected a step index into the phase (an integer)"),
    ("weights: {normal: 1.0}", "weights: {}", "phases[0].weights: expected a non-empty mapping"),
    ("optimize: {velocity: 1.0e-2}", "optimize: {hand.scal: 1.0e-2}",
     "phases[0].optimize.hand.scal: unknown parameter group; did you mean hand.scale?"),
    ("optimize: {velocity: 1.0e-2}", "optimize: {velocity: -1.0e-2}",
     "phases[0].optimize.velocity: expected a learning rate > 0"),
    ("optimize: {velocity: 1.0e-2}", "optimize: {velocity: 0}",
     "phases[0].optimize.velocity: expected a learning rate > 0"),
    ("iterations: 3", "iterations: 0", "phases[0].iterations: expected iterations > 0"),
    ("iterations: 3", "iterations: 2.5", "phases[0].iterations: expected iterations (an integer)"),
    ("iterations: 3", "iterations: true", "phases[0].iterations: expected iterations, got True"),
    ("iterations: 3", "iteratons: 3", "phases[0].iteratons: unknown key; did you mean iterations?"),
    ("iterations: 3", "iterations: 3\n    optimizer: {type: adamm}",
     "phases[0].optimizer.type: expected one of adam, adamw, got 'adamm'; did you mean adam?"),
    ("iterations: 3", "iterations: 3\n    optimizer: {eps: -1.0}",
     "phases[0].optimizer.eps: expected eps > 0"),
    ("iterations: 3", "iterations: 3\n    optimizer: {betas: [0.9, 1.0]}",
     "phases[0].optimizer.betas[1]: expected a beta < 1"),
    ("iterations: 3", "iterations: 3\n    optimizer: {lr: 0.1}",
     "phases[0].optimizer.lr: unknown key"),
    ("window: {start: 0.5, end: 1.0}", "window: {start: 0.8, end: 0.5}",
     "phases[0].window: expected start < end"),
    ("window: {start: 0.5, end: 1.0}", "window: {start: 0.5, end: 1.5}",
     "phases[0].window.end: expected a fraction <= 1.0"),
    ("window: {start: 0.5, end: 1.0}", "window: {start: 0.5, stop: 1.0}",
     "phases[0].window.stop: unknown key"),
    ("window: {start: 0.5, end: 1.0}", "window: aftersampling",
     "phases[0].window: expected one of after_sampling"),
    ("window: {start: 0.5, end: 1.0}", "window: after_sampling",
     "phases[0].optimize.velocity: 'velocity' cannot be optimised after sampling"),
    ("window: {start: 0.5, end: 1.0}", "steps: [12]",
     "phases[0].steps[0]: step 12 is out of range for num_steps=10"),
    ("window: {start: 0.5, end: 1.0}", "steps: [3, 3]", "phases[0].steps: repeated step index"),
    ("window: {start: 0.5, end: 1.0}", "window: {start: 0.5, end: 1.0}\n    steps: [3]",
     "phases[0]: give either 'window' or 'steps', not both"),
    ("name: mini", "name: mini\nguidance_scal: 3", "guidance_scal: unknown key; did you mean guidance_scale?"),
    ("name: mini", "name: mini\non_nonfinite: ignore", "on_nonfinite: expected one of raise, skip, stop"),
    ("name: mini", "name: mini\nguidance_decay: {start: 0.5, start_step: 3}",
     "guidance_decay: give exactly one of 'start' (fraction) or 'start_step' (index)"),
    ("name: mini", "name: mini\nguidance_decay: {start: 0.5, kind: cosine}",
     "guidance_decay.kind: expected one of linear"),
    ("num_steps: 10", "num_steps: 0", "num_steps: expected num_steps >= 1"),
    ("name: mini", "name: mini\ndrop_losses: [normal]", "drop_losses: 'drop_losses' needs a 'base'"),
])
def test_errors_name_the_yaml_path(tmp_path, old, new, expect):
    msg = _err(tmp_path, MINIMAL.replace(old, new, 1))
    assert expect in msg, msg


PHASE_B = """
  - name: b
    window: {start: 0.2, end: 0.6}
    iterations: 1
    optimize: {velocity: 1.0e-2}
    weights: {normal: 1.0}
"""


def test_overlaps_and_duplicates(tmp_path):
    msg = _err(tmp_path, MINIMAL + PHASE_B)
    assert "phases[0].window: window [0.5, 1) overlaps phases[1] ('b', [0.2, 0.6))" in msg
    msg = _err(tmp_path, MINIMAL + PHASE_B.replace("name: b", "name: a").replace(
        "{start: 0.2, end: 0.6}", "{start: 0.2, end: 0.5}"))
    assert "phases[1].name: duplicate phase name 'a' (also phases[0])" in msg
    # explicit steps colliding with a window: found when resolving
    msg = _err(tmp_path, MINIMAL + PHASE_B.replace("window: {start: 0.2, end: 0.6}",
                                                   "steps: [6]"))
    assert "phases[0].window: window covers step 6 at num_steps=10, which phase 'b' also " \
           "covers" in msg
    # ...also at a step count other than the default
    s = load_schedule(_write(tmp_path, MINIMAL + PHASE_B.replace(
        "window: {start: 0.2, end: 0.6}", "steps: [4]")))
    with pytest.raises(ScheduleError, match=r"phases\[0\].window: window covers step 4 at num_steps=8"):
        s.resolve(8)


def test_base_and_file_errors(tmp_path):
    msg = _err(tmp_path, "base: followmyhol\n")
    assert "base: unknown preset 'followmyhol'; did you mean followmyhold?" in msg
    msg = _err(tmp_path, "base: followmyhold\nphases: {hnd: null}\n")
    assert "phases.hnd: base 'followmyhold' has no phase 'hnd' to remove; did you mean hand?" in msg
    msg = _err(tmp_path, "base: followmyhold\ndrop_losses: [silhuette]\n")
    assert "drop_losses[0]: unknown loss; did you mean silhouette?" in msg
    msg = _err(tmp_path, "base: followmyhold\nphases: {joint: {weights: {proximty: 1.0}}}\n")
    assert "phases[2].weights.proximty: unknown loss; did you mean proximity?" in msg
    msg = _err(tmp_path, "base: missing.yaml\n")
    assert "base: no such schedule file" in msg
    _write(tmp_path, "base: loop_b.yaml\n", "loop_a.yaml")
    _write(tmp_path, "base: loop_a.yaml\n", "loop_b.yaml")
    with pytest.raises(ScheduleError, match="circular base chain"):
        load_schedule(tmp_path / "loop_a.yaml")
    msg = _err(tmp_path, "name: x\nphases: [\n")
    assert "not valid YAML" in msg
    msg = _err(tmp_path, "")
    assert "the file is empty" in msg
    msg = _err(tmp_path, "- 1\n- 2\n")
    assert "expected a mapping at the top level" in msg
    with pytest.raises(ScheduleError, match="unknown preset 'folowmyhold'; did you mean followmyhold"):
        load_schedule("folowmyhold")
    with pytest.raises(ScheduleError, match="no such schedule file"):
        load_schedule(tmp_path / "nope.yaml")
    with pytest.raises(TypeError, match="expected a preset name"):
        load_schedule(3)


def test_unguided_preset_runs_no_phase_at_all():
    r = load_schedule("unguided").resolve(10)
    assert list(r) == [] and r.unguided_steps == tuple(range(10))
    assert load_schedule("unguided").post_phases == ()
