"""Quality of generated grasps over N development objects (issue 5 acceptance numbers).

    python benchmarks/grasp_quality.py --n 50 --seed 2026

For each grasp: the median distance of the in-contact fingertips to the object surface, the
deepest penetration each way, and the paper's intersection volume (0.5 cm voxels). Objects are
drawn from pybullet random_urdfs 0-699 and the procedural kinds (development set only).
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
import torch

from hoiguide.eval import intersection_volume
from hoiguide.synth.generate import _default_hand
from hoiguide.synth.grasp import GraspError, synthesize_grasp
from hoiguide.synth.objects import load_object, parse_object_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    hand = _default_hand()
    sources = parse_object_spec("pybullet:0-699") + parse_object_spec("procedural:all")
    rng = np.random.default_rng(args.seed)
    rows, failures, seconds = [], 0, []
    while len(rows) < args.n:
        src = sources[int(rng.integers(len(sources)))]
        obj = load_object(src, rng=rng, max_faces=6000).to(dtype=torch.float64)
        t0 = time.perf_counter()
        try:
            g = synthesize_grasp(obj, model=hand, rng=rng)
        except GraspError:
            failures += 1
            continue
        seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            out = hand(global_orient=g.global_orient[None], hand_pose=g.hand_pose[None],
                       betas=g.betas[None], transl=g.transl[None])
        rows.append({"object": str(src), "type": g.grasp_type,
                     "contact_mm": 1000 * g.stats["median_contact_distance_m"],
                     "fingers": len(g.stats["contact_fingers"]),
                     "hand_pen_mm": 1000 * g.stats["hand_penetration_m"],
                     "obj_pen_mm": 1000 * g.stats["object_penetration_m"],
                     "iv_cm3": intersection_volume(out.mesh(0).to(dtype=torch.float64), obj)})
    c = np.array([r["contact_mm"] for r in rows])
    iv = np.array([r["iv_cm3"] for r in rows])
    summary = {
        "grasps": len(rows), "objects_without_grasp": failures,
        "median_contact_mm": float(np.median(c)), "p90_contact_mm": float(np.percentile(c, 90)),
        "max_hand_penetration_mm": max(r["hand_pen_mm"] for r in rows),
        "max_object_penetration_mm": max(r["obj_pen_mm"] for r in rows),
        "median_iv_cm3": float(np.median(iv)), "max_iv_cm3": float(iv.max()),
        "median_fingers_in_contact": float(np.median([r["fingers"] for r in rows])),
        "types": dict(collections.Counter(r["type"] for r in rows)),
        "median_seconds_per_grasp": float(np.median(seconds)),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "grasps": rows}, f, indent=1)


if __name__ == "__main__":
    main()
