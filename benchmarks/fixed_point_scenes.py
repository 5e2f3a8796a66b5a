"""Fixed-point probe on synthetic scenes: each phase of a preset, started AT the truth, must not
move the reconstruction away.

The backbone is the bundled tiny generator except that its decoder returns the TRUE object's
signed distance (generator frame; the latent is ignored), the observations are noise-free, and
the observed hand and the generator -> image placement are the true ones, so the
reconstruction starts exactly at the truth (up to the in-loop grid's iso-surface). Each phase
of each preset then runs alone through the engine's inner loop (only the similarities can
move: the decoded shape does not depend on the latent). Reports the object's Chamfer distance
to the truth (cm^2) and the hand's mean vertex displacement (mm) after the phase, and the
phase's total loss at its first and best iterates.

    .venv/bin/python benchmarks/fixed_point_scenes.py SCENES_DIR [--limit 3] [--preset fast ...]
        [--render-size 128] [--grid 33] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

import hoiguide
from hoiguide.backbones import tiny
from hoiguide.eval import chamfer_distance
from hoiguide.geometry.mesh_query import signed_distance
from hoiguide.guidance import GuidanceOptions, RunContext, optimise_phase
from hoiguide.guidance.flow import TimeConvention
from hoiguide.guidance.sampler import latent_to_mesh
from hoiguide.synth import Scene, list_scenes, simulate_observations
from hoiguide.types import Similarity


class TrueShape:
    """The tiny generator with a decoder that returns the true object's SDF."""

    def __init__(self, base, mesh_gen):
        self._base, self.mesh_gen = base, mesh_gen
        for k in ("latent_shape", "dtype", "device", "time_convention", "bounds",
                  "default_resolution"):
            setattr(self, k, getattr(base, k))

    def sigmas(self, n):
        return self._base.sigmas(n)

    def encode_condition(self, image):
        return self._base.encode_condition(image)

    def velocity(self, *a, **k):
        return self._base.velocity(*a, **k)

    def decode_sdf(self, latent, points):
        p = points if points.ndim == 2 else points[0]
        d = signed_distance(p.detach().double(), self.mesh_gen).to(latent.dtype)
        return d[None].expand(latent.shape[0], -1) + 0 * latent.sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--preset", action="append", default=None)
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--grid", type=int, default=33)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    presets = a.preset or ["fast", "fast_posthoc_fit"]
    base = tiny()
    rows = []
    for path in list(list_scenes(a.scenes))[: a.limit]:
        scene = Scene.load(path)
        obs = simulate_observations(scene, noise="none", seed=0)
        g2i = Similarity.from_dict(obs.metadata["gen_to_image_true"])
        mesh_gen = scene.object_mesh.to(dtype=torch.float64).transformed(g2i.inverse())
        bb = TrueShape(base, mesh_gen)
        obs = dataclasses.replace(obs, gen_to_image=g2i,
                                  hand_mesh=scene.hand_mesh.to(dtype=torch.float32))
        lat = torch.zeros((1, *bb.latent_shape), dtype=torch.float64)
        start = latent_to_mesh(bb, lat[0], a.grid).transformed(g2i)
        cd_start = chamfer_distance(start, scene.object_mesh, num_samples=5000, seed=0)
        for preset in presets:
            sched = hoiguide.load_schedule(preset)
            for phase in sched.phases:
                opts = GuidanceOptions(grid_resolution=a.grid, render_size=a.render_size)
                ctx = RunContext.create(bb, sched, opts, TimeConvention.DATA_AT_1, a.grid,
                                        torch.float64, obs, 0, False)
                no_latent = dataclasses.replace(phase, optimize={
                    k: v for k, v in phase.optimize.items() if k not in ("velocity", "latent")})
                t0 = time.perf_counter()
                optimise_phase(ctx, no_latent, phase.terms(0, 1), None, lat, None, None)
                obj = ctx.place_object(latent_to_mesh(bb, lat[0], a.grid))
                cd = chamfer_distance(obj, scene.object_mesh, num_samples=5000, seed=0)
                hand_mm = 1e3 * float((ctx.hand_mesh().vertices.double()
                                       - scene.hand_mesh.vertices.double()).norm(dim=-1).mean())
                tot = ctx.history.series("total")
                row = {"scene": scene.scene_id, "preset": preset, "phase": phase.name,
                       "cd_start_cm2": cd_start, "cd_cm2": cd, "hand_mm": hand_mm,
                       "loss_first": tot[0] if tot else None,
                       "loss_best": min(tot) if tot else None, "seconds":
                       time.perf_counter() - t0}
                rows.append(row)
                print(f"{scene.scene_id} {preset:>16s} {phase.name:>6s}: CD {cd_start:.4f} -> "
                      f"{cd:.4f} cm^2, hand {hand_mm:.2f} mm, loss {row['loss_first']:.4g} -> "
                      f"{row['loss_best']:.4g}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
