"""Cache the simulated observations of development scenes (bundled tiny generator, default
noise, the benchmark's per-scene seeds) for tune_presets.py; print the object placement's scale
against the truth: ICP c (gen_to_image) and the hand-object ICP a alone (gen_to_image_hoi).

    .venv/bin/python benchmarks/tuning/observe_scenes.py SCENES_DIR CACHE_DIR 0000 0001 ...

With HOIGUIDE_ICP_C=0 the object keeps the hand-object transform (the reference's placement:
``AlignmentOptions(object_icp="none")``). The cache holds pickled Observations (our own files, loaded with weights_only=False by
tune_presets.py): never point it at files from elsewhere.
"""
import sys
import time
from pathlib import Path

import os

import torch

from hoiguide.alignment import AlignmentOptions

from hoiguide.backbones import tiny
from hoiguide.apps.bench import scene_seed
from hoiguide.synth.observers import simulate_observations
from hoiguide.synth.scene import Scene

scenes, cache, ids = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
cache.mkdir(parents=True, exist_ok=True)
bb = tiny(device="cpu")
for sid in ids:
    t = time.time()
    sc = Scene.load(scenes / sid)
    align = None if os.environ.get("HOIGUIDE_ICP_C", "1") != "0" else \
        AlignmentOptions(object_icp="none")
    obs = simulate_observations(sc, backbone=bb, noise="default", seed=scene_seed(0, sc.scene_id),
                                alignment=align)
    torch.save(obs, cache / f"obs_{sid}.pt")
    true = obs.metadata["gen_to_image_true"]["scale"]
    hoi = obs.metadata.get("gen_to_image_hoi")
    print(f"{sid}: object scale / true {float(obs.gen_to_image.scale) / true:.2f}"
          + (f", hand-object ICP a alone {hoi['scale'] / true:.2f}" if hoi else "")
          + f" ({time.time() - t:.0f} s)", flush=True)
