"""Development tuning: run candidate schedules on cached observations (observe_scenes.py) and
append one JSON line per scene (hand-aligned CD cm^2, F5, F10, IV cm^3, seconds) to OUT.

    .venv/bin/python benchmarks/tuning/tune_presets.py CONFIG SCENES_DIR CACHE_DIR OUT.jsonl 0000 ...

CONFIG is a key of CONFIGS below. Options as the README's benchmark: inner grid 33 (env GRID),
renders 128, final grid 65; 5,000 surface samples per mesh for the metrics.
"""
import sys, time, json, torch, copy, os

torch.set_num_threads(int(__import__('os').environ.get("THREADS", "1")))
import logging; logging.basicConfig(level=logging.WARNING)
from hoiguide.backbones import tiny
from hoiguide.synth.scene import Scene
from hoiguide.api import guided_reconstruct
from hoiguide.eval.protocol import hand_aligned_metrics
from hoiguide.apps.bench import scene_seed

H = {"hand": {"iterations": 20}}
LOW_O = {"object.scale": 2e-3, "object.translation": 2e-3, "object.rotation": 1e-2}
LOW_J = {"object.scale": 1e-3, "object.translation": 1e-3, "object.rotation": 5e-3}
def fastv(name, upd=None, rep=None, vel=(None, None), obj=LOW_O, jnt=LOW_J, extra=None):
    o = dict(obj); j = dict(jnt)
    if vel[0]: o["velocity"] = vel[0]
    if vel[1]: j["velocity"] = vel[1]
    ph = {"object": {"optimize": o}, "joint": {"optimize": j}}
    for k in ("object", "joint"):
        if upd: ph[k]["update"] = upd
        if rep: ph[k]["repeats"] = rep
    d = {"base": "fast", "name": name, "phases": ph}
    if extra: d.update(extra)
    return d
CONFIGS = {
 "unguided": "unguided",
 "fast": "fast",
 "fast_ng": os.path.join(os.path.dirname(__file__), "..", "presets", "fast_no_guidance.yaml"),
 "fast_lowlr": fastv("fast_lowlr"),
 "fast_renoise": fastv("fast_renoise", upd="renoise"),
 "fast_renoise_v": fastv("fast_renoise_v", upd="renoise", vel=(1e-2, 1e-2)),
 "posthoc_fast": {"base": "posthoc_fit", "name": "posthoc_fast", "num_steps": 8, "phases": {
     "hand": {"iterations": 20}, "object": {"iterations": 10, "optimize": {"object.scale": 2e-3, "object.translation": 2e-3, "object.rotation": 1e-2}},
     "joint": {"iterations": 15, "optimize": {"object.scale": 1e-3, "object.translation": 1e-3, "object.rotation": 5e-3}}}},
 "fast_v1": fastv("fast_v1", vel=(0.1, 0.1)),
 "fast_renoise_v1": fastv("fast_renoise_v1", upd="renoise", vel=(0.1, 0.1)),
 "fast_renoise_v1_lat": fastv("fast_renoise_v1_lat", upd="renoise", vel=(0.1, 0.1)),
 "posthoc_fast_l5": {"base": "posthoc_fit", "name": "posthoc_fast_l5", "num_steps": 8, "phases": {
     "hand": {"iterations": 20}, "object": {"iterations": 10, "optimize": {"latent": 5e-2, "object.scale": 2e-3, "object.translation": 2e-3, "object.rotation": 1e-2}},
     "joint": {"iterations": 15, "optimize": {"latent": 5e-2, "object.scale": 1e-3, "object.translation": 1e-3, "object.rotation": 5e-3}}}},
 "fast_tt": {"base": "fast", "name": "fast_tt", "phases": {"object": {"repeats": 2}, "joint": {"repeats": 2}}},
 "fast_tt_renoise": {"base": "fast", "name": "fast_tt_renoise", "phases": {"object": {"repeats": 2, "update": "renoise"}, "joint": {"repeats": 2, "update": "renoise"}}},
 "fast_new": "fast",
 "posthoc_new": "fast_posthoc_fit",
 # the paper's no_guidance at the fast budget with the REFERENCE's object rates (what
 # fast_no_guidance was before followmyhold's object rates were fixed)
 "ng_reference_rates": {"base": os.path.join(os.path.dirname(__file__), "..", "presets",
                                             "fast_no_guidance.yaml"),
                        "name": "ng_reference_rates", "phases": {
     "object": {"optimize": {"object.scale": 1e-2, "object.translation": 1e-2, "object.rotation": 1e-2}},
     "joint": {"optimize": {"object.scale": 5e-2, "object.translation": 1e-2, "object.rotation": 1e-2}}}},
 "ng_lowlr": {"base": os.path.join(os.path.dirname(__file__), "..", "presets", "fast_no_guidance.yaml"), "name": "ng_lowlr", "phases": {
     "object": {"optimize": LOW_O}, "joint": {"optimize": LOW_J}}},
}

def main():
    name, scenes, cache, out_path = sys.argv[1:5]; ids = sys.argv[5:]
    opts = dict(grid_resolution=int(__import__('os').environ.get("GRID", "33")), render_size=128, final_resolution=65)
    bb = tiny(device="cpu")
    for sid in ids:
        sc = Scene.load(os.path.join(scenes, sid))
        obs = torch.load(os.path.join(cache, f"obs_{sid}.pt"), weights_only=False)
        t = time.time()
        rec = guided_reconstruct(observations=obs, backbone=bb, schedule=CONFIGS[name], seed=scene_seed(0, sc.scene_id), progress=False, options=opts)
        dt = time.time() - t
        row = {"cfg": name, "scene": sid, "status": rec.status, "s": round(dt, 1)}
        if not rec.object_mesh.is_empty:
            m = hand_aligned_metrics(rec.hand_mesh, rec.object_mesh, sc.hand_mesh, sc.object_mesh, num_samples=5000, seed=0)
            row.update({k: round(float(m[k]), 3) for k in ("cd_cm2", "f5", "f10", "iv_cm3") if k in m})
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)
main()
