#!/usr/bin/env python
"""Train the tiny Hunyuan3D-2-architecture generator bundled with hoiguide.

Produces a weights folder (``config.yaml`` + ``model.safetensors`` + ``training_objects.json``)
from a seed, on a CPU. The model is made of hy3dgen 2.0.2's own classes at a tiny size
(Hunyuan3DDiT, ShapeVAE decoder, DINOv2 ``SingleImageEncoder``), so it loads through the same
``HunyuanBackbone.from_pretrained`` code path as the real Hunyuan3D-2.

**Generator frame (view-aligned).** A sample is the object as seen from the input image's
camera: its axes are the camera's (OpenCV: +x right, +y down, +z forward) up to the
processor's recentring, bounding-box centre at the origin, longest side 1.8
(``hoiguide.synth.generate.GEN_BOX_SIDE``). For view ``v`` of a shape with object-to-camera
rotation ``R_v`` this is ``gen_v(p) = s_v (R_v p - c_v)`` of the canonical generator frame
``p`` (the object's own frame, centred, longest side 1.8), with ``c_v`` and ``s_v`` from the
rotated bounding box. (The first bundled generator used the object's own frame: for an unseen
object the image cannot tell which of its axes is which, and the samples averaged over them.)

Stages (each resumable, intermediate files in ``--work``, default ``/tmp/tiny_work``):

``data``
    Training and validation shapes (:func:`shape_list`): the procedural families of
    ``hoiguide.synth.objects`` (``--fam-train`` instances per family from the training seeds,
    ``--fam-val`` from the validation seeds, e.g. ``procedural:mug@10000``) and
    ``pybullet_data`` ``random_urdfs`` 000-599 (train) and 600-699 (validation), broken
    indices skipped. Evaluation objects (``random_urdfs`` 700-999, the named objects,
    procedural evaluation seeds) are never listed. Per shape, in the canonical generator
    frame: 8192 SDF samples (half near the surface, half uniform in ``[-1.2, 1.2]^3``; sign by
    winding number), 4096 surface points, the convex hull, and ``--views`` conditioning views
    (2 for validation shapes: one clean, one hand-occluded). A view is rendered from a random
    viewpoint (image "up" = the object's -y, as ``hoiguide.synth.cameras.place_camera`` does:
    half egocentric-like from above, half from any direction) with a random material and
    light (``hoiguide.synth.appearance``); for ``--occluded`` % of them a rendered
    ``ProceduralHand`` silhouette is laid over the object first, then the inference-time
    inpainting observer ``hoiguide.synth.observers.inpaint_object`` (OpenCV Telea on the hand
    region, cut out with the amodal mask, white background, square crop) makes the RGBA crop
    that hy3dgen's ``ImageProcessorV2`` turns into the generator's input (at
    ``--image-size``, cached per size).

``a``
    A point-cloud encoder (training only) and the ShapeVAE decoder, trained jointly with an L1
    loss on the truncated SDF ``clamp(-sdf / 0.1, -1, 1)`` (positive inside, like hy3dgen's
    logits), each shape under a random rotation per step (half a uniform random rotation,
    half one of its views' rotations, re-normalised to the view-aligned frame; points of the
    decode box outside the sampled region count as far outside); latents normalised to unit
    std, noise added during training. Then every (shape, view) pair is encoded: the flow
    model's targets.

``b``
    Flow matching on those latents with hy3dgen's convention (sigma 0 = noise, 1 = data;
    x_sigma = (1 - sigma) eps + sigma x1; velocity target x1 - eps; the DiT receives
    ``t = sigma``), conditioned on the view's image through the DINOv2 conditioner trained
    jointly from scratch; 10 % of the conditions are replaced by the unconditional (all-zero)
    embedding for classifier-free guidance; optional auxiliary loss (``--aux``): a
    training-only linear head regresses the target latent from the mean conditioner token.
    The EMA of the weights is exported. Checkpoints every 1000 steps; ``--steps-b`` can be
    raised and the stage re-run to continue.

``eval``
    Unguided samples (``hoiguide.guidance.sampler.sample`` + ``latent_to_mesh``) from a clean
    and an occluded-inpainted view of every validation shape, Chamfer distance to the true
    shape in that view's generator frame, against (a) a random training shape and (b) the
    sample from another validation shape's image; per family; a contact sheet and training
    curves in ``docs/images/`` (``--fig-prefix``).

``export``
    ``HunyuanBackbone.save_pretrained`` -> ``--out`` (a new folder; the bundled
    ``weights/tiny`` is only replaced on purpose), plus ``training_objects.json``: every
    object spec used for training and for validation, so a benchmark can refuse them.

``sheet``
    A contact sheet of the procedural families (``docs/images/procedural_families.png``).

Usage (docs/tiny-generator.md has the commands and times of the exported run)::

    nice -n 10 .venv/bin/python scripts/train_tiny_generator.py --stage all \
        --work /tmp/tiny_v2 --out hoiguide/backbones/weights/tiny_v2
    .venv/bin/python scripts/train_tiny_generator.py --stage b --steps-b 20000 \
        --lr-horizon 20000 ...                                              # continue

The script sets ``torch.set_num_threads(--threads)`` (default 1). Everything is seeded by
``--seed``; with the same seed, thread count and library versions the exported weights are
reproduced (floating-point reductions on other CPUs may differ in the last bits).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("train_tiny")

GEN_BOX_SIDE = 1.8          # hoiguide.synth.generate.GEN_BOX_SIDE (kept in sync, checked below)
BOX_V = 1.01                # HunyuanBackbone decode box [-1.01, 1.01]^3
UNI_BOX = 1.2               # uniform SDF samples in [-UNI_BOX, UNI_BOX]^3 (canonical frame)
TRUNC = 0.1                 # SDF truncation (generator units) of the logit target
RENDER_SIZE = 128           # rendered view (object fills ~55-85 % of it)
N_SDF = 8192
N_SURF = 4096

ARCH_DEFAULT: dict[str, Any] = {
    "latents": [64, 16],      # num_latents x channels
    "dit_hidden": 128, "dit_heads": 4, "dit_double": 1, "dit_single": 1,
    "cond_hidden": 96, "cond_heads": 3, "cond_layers": 2, "image_size": 84,
    "vae_width": 64, "vae_layers": 1,
}
"""Model size knobs (command-line flags of the same names)."""


# --------------------------------------------------------------------------------------
# configuration of the model
# --------------------------------------------------------------------------------------


def tiny_generator_config(arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """hy3dgen hub-style config of a tiny generator of the given size."""
    ar = dict(ARCH_DEFAULT, **(arch or {}))
    n_lat, ch = ar["latents"]
    size = int(ar["image_size"])
    if size % 14:
        raise ValueError(f"image_size must be a multiple of the DINOv2 patch (14), got {size}")
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {"in_channels": ch, "context_in_dim": ar["cond_hidden"],
                       "hidden_size": ar["dit_hidden"], "mlp_ratio": 4.0,
                       "num_heads": ar["dit_heads"], "depth": ar["dit_double"],
                       "depth_single_blocks": ar["dit_single"],
                       "axes_dim": [ar["dit_hidden"] // ar["dit_heads"]], "theta": 10000,
                       "qkv_bias": True, "guidance_embed": False},
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {"num_latents": n_lat, "embed_dim": ch, "num_freqs": 8,
                       "include_pi": False, "heads": 4, "width": ar["vae_width"],
                       "num_decoder_layers": ar["vae_layers"],
                       "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0},
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {"config": {
                    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
                    "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                    "hidden_size": ar["cond_hidden"], "image_size": size,
                    "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0,
                    "mlp_ratio": 3, "model_type": "dinov2",
                    "num_attention_heads": ar["cond_heads"], "num_channels": 3,
                    "num_hidden_layers": ar["cond_layers"], "patch_size": 14, "qkv_bias": True,
                    "use_swiglu_ffn": False},
                    "image_size": size},
            }},
        },
        "scheduler": {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": size, "border_ratio": 0.15},
        },
    }


def _arch(a: argparse.Namespace) -> dict[str, Any]:
    return {k: (list(getattr(a, k)) if k == "latents" else getattr(a, k)) for k in ARCH_DEFAULT}


def _instantiate(cfg_section: dict[str, Any], seed: int) -> torch.nn.Module:
    from hoiguide.backbones.hunyuan import import_hy3dgen

    import_hy3dgen()
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = instantiate_from_config(copy.deepcopy(cfg_section))
    m.train()
    m.requires_grad_(True)
    return m


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------------------
# stage data
# --------------------------------------------------------------------------------------


def shape_list(seed: int, fam_train: int, fam_val: int, families: list[str] | None = None,
               pybullet: bool = True) -> list[dict[str, Any]]:
    """All shapes with split, object spec and a per-shape seed. Never lists random_urdfs
    700-999, the named objects or procedural evaluation seeds (the evaluation set)."""
    from hoiguide.synth.objects import (BROKEN_INDICES, GENERATOR_TRAIN_INDICES,
                                        GENERATOR_VAL_INDICES, PROCEDURAL_KINDS, TRAIN_SEEDS,
                                        VAL_SEEDS)

    fams = list(PROCEDURAL_KINDS) if families is None else families
    out = []
    if pybullet:
        for i in list(GENERATOR_TRAIN_INDICES) + list(GENERATOR_VAL_INDICES):
            if i in BROKEN_INDICES:
                continue
            assert i < 700
            out.append({"name": f"pybullet_{i:03d}", "spec": f"pybullet:{i:03d}",
                        "family": "pybullet",
                        "split": "train" if i in GENERATOR_TRAIN_INDICES else "val",
                        "seed": [seed, 1, i]})
    assert fam_train <= len(TRAIN_SEEDS) and fam_val <= len(VAL_SEEDS)
    for kind in fams:
        for split, seeds, n in (("train", TRAIN_SEEDS, fam_train), ("val", VAL_SEEDS, fam_val)):
            for j in range(n):
                s = seeds[j]
                out.append({"name": f"proc_{kind}_{s:05d}", "spec": f"procedural:{kind}@{s}",
                            "family": kind, "split": split, "seed": [seed, 2, s]})
    return out


_HAND_BANK: list[np.ndarray] | None = None


def hand_bank(seed: int, n: int = 48, size: int = 128) -> list[np.ndarray]:
    """Silhouettes of the procedural hand (random finger curls, random orientation), cropped
    to their bounding box: the occluders laid over object renders."""
    global _HAND_BANK
    if _HAND_BANK is not None:
        return _HAND_BANK
    from scipy.spatial.transform import Rotation

    from hoiguide.hands import ProceduralHand
    from hoiguide.render import render
    from hoiguide.synth.cameras import look_at
    from hoiguide.types import Camera

    rng = np.random.default_rng([seed, 7])
    hand = ProceduralHand("right", detail=0)
    bank = []
    for _ in range(n):
        amounts = torch.tensor(rng.uniform(0.15, 0.9, size=(1, 5, 3)))
        pose = hand.flexion_pose(amounts)
        go = torch.tensor(Rotation.random(random_state=int(rng.integers(2**31))).as_rotvec()[None])
        with torch.no_grad():
            out = hand(global_orient=go, hand_pose=pose)
        m = out.mesh(0).to(dtype=torch.float64)
        V = m.vertices.numpy()
        c = 0.5 * (V.min(0) + V.max(0))
        r = float(np.linalg.norm(V - c, axis=1).max())
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        w2c = look_at(c + d * r * 3.5, c)
        f = 0.5 * size / math.tan(math.radians(25))
        cam = Camera(f, f, size / 2, size / 2, size, size)
        res = render([m.transformed(w2c)], cam)
        mask = (res.mesh_id == 0).numpy()
        if mask.sum() < 50:
            continue
        ii, jj = np.nonzero(mask)
        bank.append(mask[ii.min():ii.max() + 1, jj.min():jj.max() + 1].copy())
    _HAND_BANK = bank
    return bank


def _occluder(obj_mask: np.ndarray, bank: list[np.ndarray], rng: np.random.Generator
              ) -> np.ndarray | None:
    """A hand-shaped mask over part of the object (visible fraction 0.4-0.9), or None."""
    import cv2

    H, W = obj_mask.shape
    ii, jj = np.nonzero(obj_mask)
    oh, ow = ii.max() - ii.min() + 1, jj.max() - jj.min() + 1
    area = obj_mask.sum()
    for _ in range(12):
        hm = bank[int(rng.integers(len(bank)))].astype(np.uint8) * 255
        s = float(rng.uniform(0.7, 1.5)) * max(oh, ow) / max(hm.shape)
        ang = float(rng.uniform(0, 360))
        # a random object pixel near the outline side is the hand's centre target
        k = int(rng.integers(len(ii)))
        ty, tx = ii[k], jj[k]
        cy, cx = (hm.shape[0] - 1) / 2, (hm.shape[1] - 1) / 2
        M = cv2.getRotationMatrix2D((cx, cy), ang, s)
        off = rng.normal(0, 0.25, 2) * np.array([oh, ow])
        M[0, 2] += tx + off[1] - cx
        M[1, 2] += ty + off[0] - cy
        warped = cv2.warpAffine(hm, M, (W, H), flags=cv2.INTER_NEAREST) > 127
        vis = float((obj_mask & ~warped).sum()) / area
        if 0.4 <= vis <= 0.9:
            return warped
    return None


def _view(obj_metric, tex, rng: np.random.Generator, occlude: bool, bank
          ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Render one conditioning view of an object (object frame, bbox centre at the origin).
    Returns (RGBA crop ``RENDER_SIZE`` as the inpainting observer makes it, the
    object-to-camera rotation (3, 3), occluded)."""
    from hoiguide.render import render
    from hoiguide.synth.appearance import random_lighting, shade
    from hoiguide.synth.cameras import look_at
    from hoiguide.synth.observers import inpaint_object
    from hoiguide.types import Camera, Similarity

    V = obj_metric.vertices.numpy()
    r = float(np.linalg.norm(V, axis=1).max())
    up = np.array([0.0, -1.0, 0.0])
    if rng.uniform() < 0.5:   # egocentric-like: 30-65 degrees above the horizon
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(30, 65))
        h = np.array([math.cos(az), 0.0, math.sin(az)])
        d = math.cos(el) * h + math.sin(el) * up
    else:                      # third-person-like: any direction
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
    fov = math.radians(rng.uniform(40, 60))
    fill = rng.uniform(0.55, 0.85)
    dist = r / (fill * math.tan(fov / 2)) + 0.3 * r
    roll = math.radians(rng.uniform(-10, 10))
    w2c = look_at(d * dist, np.zeros(3), up=up)
    R = w2c.rotation.numpy()
    cr, sr = math.cos(roll), math.sin(roll)
    Rr = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]]) @ R
    w2c = Similarity(torch.ones((), dtype=torch.float64), torch.as_tensor(Rr),
                     torch.as_tensor(-Rr @ (d * dist)))
    f = 0.5 * RENDER_SIZE / math.tan(fov / 2)
    cam = Camera(f, f, RENDER_SIZE / 2, RENDER_SIZE / 2, RENDER_SIZE, RENDER_SIZE)
    obj_c = obj_metric.transformed(w2c)
    light = random_lighting(rng)
    img = shade([obj_c], [tex], cam, light, supersample=1, rng=rng)
    mask = (render([obj_c], cam).mesh_id == 0).numpy()
    hand = None
    if occlude and mask.sum() > 30:
        hand = _occluder(mask, bank, rng)
    occluded = hand is not None
    if hand is None:
        hand = np.zeros_like(mask)
    rgba = inpaint_object(img, hand, mask, dilate_px=2, size=RENDER_SIZE, margin=0.1)
    return rgba, Rr.astype(np.float32), occluded


def _prepare_shape(args: tuple[dict[str, Any], str, int, float, int]) -> str:
    entry, work, n_views, occl_pct, seed = args
    out = Path(work) / "shapes" / f"{entry['name']}.npz"
    if out.is_file():
        return entry["name"]
    torch.set_num_threads(1)
    from scipy.spatial import ConvexHull

    from hoiguide.geometry import sample_surface, signed_distance
    from hoiguide.synth.appearance import Texture, random_material
    from hoiguide.synth.objects import load_object
    from hoiguide.types import Mesh

    rng = np.random.default_rng(entry["seed"])
    obj = load_object(entry["spec"], rng=rng).to(dtype=torch.float64)
    V = obj.vertices
    lo, hi = V.min(0).values, V.max(0).values
    c = 0.5 * (lo + hi)
    L = float((hi - lo).max())
    obj = Mesh(V - c, obj.faces, None, dict(obj.metadata))      # bbox centre at the origin
    gen = Mesh((V - c) * (GEN_BOX_SIDE / L), obj.faces)          # canonical generator frame
    surf = sample_surface(gen, N_SDF // 2 + N_SURF, seed=int(rng.integers(2**31)))
    near = surf[:N_SDF // 2]
    sig = np.where(rng.uniform(size=(len(near), 1)) < 0.5, 0.01, 0.05)
    near = near + rng.normal(size=near.shape) * sig
    uni = rng.uniform(-UNI_BOX, UNI_BOX, size=(N_SDF - len(near), 3))
    pts = np.concatenate([near, uni]).astype(np.float64)
    sdf = signed_distance(torch.from_numpy(pts), gen).numpy()
    Vg = gen.vertices.numpy()
    hull = Vg[ConvexHull(Vg).vertices]
    bank = hand_bank(seed)
    tex = Texture.of(obj, random_material(rng))
    crops, rots, occ = [], [], []
    for v in range(n_views):
        # view 0 of a validation shape is always clean, view 1 always occluded
        if entry["split"] == "val":
            want = v % 2 == 1
        else:
            want = rng.uniform() * 100 < occl_pct
        if v > 0 and entry["split"] == "train" and v % 2 == 0:
            tex = Texture.of(obj, random_material(rng))              # another material
        crop, R, o = _view(obj, tex, rng, want, bank)
        crops.append(crop)
        rots.append(R)
        occ.append(o)
    np.savez_compressed(out, points=pts.astype(np.float32), sdf=sdf.astype(np.float32),
                        surface=surf[N_SDF // 2:].astype(np.float32),
                        hull=hull.astype(np.float32), crops=np.stack(crops),
                        rots=np.stack(rots), occluded=np.array(occ), size_m=np.array(L),
                        watertight=np.array(bool(obj.metadata.get("watertight", True))))
    return entry["name"]


def view_frame(hull: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, float]:
    """``(c, s)`` of the view-aligned generator frame ``gen(p) = s (R p - c)``: the bounding
    box of the rotated shape centred, its longest side ``GEN_BOX_SIDE``."""
    q = hull @ R.T
    lo, hi = q.min(0), q.max(0)
    return 0.5 * (lo + hi), float(GEN_BOX_SIDE / (hi - lo).max())


def _families_arg(a: argparse.Namespace) -> list[str] | None:
    from hoiguide.synth.objects import PROCEDURAL_KINDS

    if a.families in ("all", ""):
        return None
    if a.families == "none":
        return []
    fams = [f.strip() for f in a.families.split(",") if f.strip()]
    bad = [f for f in fams if f not in PROCEDURAL_KINDS]
    if bad:
        raise SystemExit(f"--families: unknown {bad}; valid: {', '.join(PROCEDURAL_KINDS)}")
    return fams


def _shapes(a: argparse.Namespace) -> list[dict[str, Any]]:
    shapes = shape_list(a.seed, a.fam_train, a.fam_val, _families_arg(a), not a.no_pybullet)
    if a.limit:
        shapes = shapes[::max(1, len(shapes) // a.limit)][:a.limit]
    return shapes


def stage_data(a: argparse.Namespace) -> None:
    from hoiguide.synth.generate import GEN_BOX_SIDE as gbs

    assert gbs == GEN_BOX_SIDE, "generator box side changed in hoiguide.synth.generate"
    work = Path(a.work)
    (work / "shapes").mkdir(parents=True, exist_ok=True)
    shapes = _shapes(a)
    jobs = [(s, str(work), a.views if s["split"] == "train" else 2, a.occluded, a.seed)
            for s in shapes
            if not (work / "shapes" / f"{s['name']}.npz").is_file()]
    t0 = time.time()
    done = 0
    log.info("data: %d shapes, %d to prepare", len(shapes), len(jobs))
    if a.workers > 1 and jobs:
        ctx = mp.get_context("spawn")
        with ctx.Pool(a.workers) as pool:
            for _ in pool.imap_unordered(_prepare_shape, jobs, chunksize=2):
                done += 1
                if done % 50 == 0:
                    log.info("data: %d / %d shapes (%.0f s)", done, len(jobs), time.time() - t0)
    else:
        for j in jobs:
            _prepare_shape(j)
            done += 1
            if done % 50 == 0:
                log.info("data: %d / %d shapes (%.0f s)", done, len(jobs), time.time() - t0)
    t_prep = time.time() - t0
    # pack (everything but the images, which are cached per input size)
    packed: dict[str, Any] = {k: [] for k in ("names", "specs", "families", "split", "points",
                                              "sdf", "surface", "hull", "rots", "occluded",
                                              "crops_val")}
    for s in shapes:
        z = np.load(work / "shapes" / f"{s['name']}.npz")
        packed["names"].append(s["name"])
        packed["specs"].append(s["spec"])
        packed["families"].append(s["family"])
        packed["split"].append(s["split"])
        for k in ("points", "sdf", "surface"):
            packed[k].append(torch.from_numpy(z[k]))
        packed["hull"].append(z["hull"].astype(np.float64))
        packed["rots"].append(z["rots"].astype(np.float64))
        packed["occluded"].append(torch.from_numpy(z["occluded"]))
        packed["crops_val"].append(z["crops"] if s["split"] == "val" else None)
    for k in ("points", "sdf", "surface"):
        packed[k] = torch.stack(packed[k])
    torch.save(packed, work / "data.pt")
    for f in work.glob("images_*.pt"):
        f.unlink()                                   # stale image caches
    n_tr = sum(1 for s in packed["split"] if s == "train")
    occ = torch.cat([o for o, s in zip(packed["occluded"], packed["split"]) if s == "train"])
    info = {"shapes_train": n_tr, "shapes_val": len(shapes) - n_tr,
            "views_train": int(sum(len(r) for r, s in zip(packed["rots"], packed["split"])
                                   if s == "train")),
            "occluded_fraction_train": float(occ.float().mean()),
            "families": sorted(set(packed["families"])),
            "seconds_prepare": round(t_prep, 1), "seconds": round(time.time() - t0, 1)}
    _update_json(work / "timings.json", {"data": info})
    log.info("data: %s", info)


def load_images(work: Path, names: list[str], size: int) -> list[torch.Tensor]:
    """Per shape ``(V, size, size, 3)`` uint8 generator inputs (ImageProcessorV2 of the stored
    RGBA crops), cached in ``work/images_<size>.pt``."""
    cache = work / f"images_{size}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=False)
        if d["names"] == names:
            return d["images"]
    from PIL import Image

    from hoiguide.backbones.hunyuan import import_hy3dgen

    import_hy3dgen()   # hy3dgen imports torchvision: hoiguide supplies the stand-in
    from hy3dgen.shapegen.preprocessors import ImageProcessorV2

    proc = ImageProcessorV2(size=size, border_ratio=0.15)
    t0 = time.time()
    out = []
    for n in names:
        crops = np.load(work / "shapes" / f"{n}.npz")["crops"]
        out.append(torch.from_numpy(np.stack([
            np.ascontiguousarray(proc(Image.fromarray(c, "RGBA"), to_tensor=False)["image"],
                                 dtype=np.uint8) for c in crops])))
    torch.save({"names": names, "images": out}, cache)
    log.info("images at %d px: %d shapes processed in %.0f s", size, len(names),
             time.time() - t0)
    return out


# --------------------------------------------------------------------------------------
# stage a: encoder + decoder under rotations
# --------------------------------------------------------------------------------------


def _normalise(lat: torch.Tensor) -> torch.Tensor:
    return lat / lat.flatten(1).std(1).clamp_min(1e-8)[:, None, None]


def _decode(vae: torch.nn.Module, z: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Occupancy logits (positive inside) of latents z (diffusion space) at pts (B, P, 3)."""
    h = vae(z / vae.scale_factor)
    return vae.geo_decoder(queries=pts, latents=h)[..., 0]


def _to_view(p: torch.Tensor, R: torch.Tensor, c: torch.Tensor, s: torch.Tensor
             ) -> torch.Tensor:
    """Canonical generator frame -> view-aligned frame, batched: ``s (R p - c)``."""
    return s[:, None, None] * (torch.einsum("bij,bpj->bpi", R, p) - c[:, None])


class PointEncoder(torch.nn.Module):
    """Surface points -> a (num_latents, channels) latent set, Perceiver style: learned queries
    cross-attend to Fourier-embedded points (as 3DShape2VecSet / Hunyuan's ShapeVAE encoder),
    then one self-attention block. Training-only: the shipped model is the decoder side."""

    def __init__(self, n_lat: int, ch: int, width: int = 64, heads: int = 4,
                 num_freqs: int = 8) -> None:
        super().__init__()
        from hoiguide.backbones.hunyuan import import_hy3dgen

        import_hy3dgen()
        from hy3dgen.shapegen.models.autoencoders.attention_blocks import FourierEmbedder

        nn = torch.nn
        self.fourier = FourierEmbedder(num_freqs=num_freqs, include_pi=False)
        self.inp = nn.Linear(self.fourier.out_dim, width)
        self.queries = nn.Parameter(torch.randn(n_lat, width) * 0.02)
        self.ln_q, self.ln_kv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.ln_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, ch)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(self.inp(self.fourier(pts)))
        q = self.queries.expand(pts.shape[0], -1, -1)
        x = q + self.cross(self.ln_q(q), kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        x = self.block(x)
        return self.out(self.ln_out(x))


def _batch_frames(data, ii: np.ndarray, rng: np.random.Generator, p_view: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per batch element a rotation (one of the shape's views with probability ``p_view``,
    else uniform) and its view-frame ``(c, s)``."""
    from scipy.spatial.transform import Rotation

    Rs, cs, ss = [], [], []
    for i in ii:
        rots = data["rots"][int(i)]
        if rng.uniform() < p_view:
            R = rots[int(rng.integers(len(rots)))]
        else:
            R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        c, s = view_frame(data["hull"][int(i)], R)
        Rs.append(R)
        cs.append(c)
        ss.append(s)
    return (torch.tensor(np.stack(Rs), dtype=torch.float32),
            torch.tensor(np.stack(cs), dtype=torch.float32), torch.tensor(ss, dtype=torch.float32))


def _fit_encoder(vae, enc, data, idx_all, steps, lr, batch, pts_per, enc_pts, n_far, noise,
                 rng, curve: list) -> None:
    params = list(enc.parameters()) + list(vae.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=max(0.05, 3.0 / steps),
                                                final_div_factor=20)
    n = len(idx_all)
    data_pts, data_sdf, surf = data["points"], data["sdf"], data["surface"]
    P, S = data_pts.shape[1], surf.shape[1]
    t0, run = time.time(), 0.0
    for step in range(steps):
        b = rng.choice(n, size=min(batch, n), replace=False)
        ii = idx_all[torch.from_numpy(b)]
        R, c, s = _batch_frames(data, ii.numpy(), rng)
        sel = torch.from_numpy(rng.integers(0, P, size=(len(b), pts_per)))
        pts = _to_view(torch.gather(data_pts[ii], 1, sel[..., None].expand(-1, -1, 3)), R, c, s)
        tgt = (-(s[:, None] * torch.gather(data_sdf[ii], 1, sel)) / TRUNC).clamp(-1, 1)
        w = torch.ones_like(tgt)
        if n_far:
            # decode-box points outside the sampled region [-UNI_BOX, UNI_BOX]^3: far outside
            q = torch.from_numpy(rng.uniform(-BOX_V, BOX_V, size=(len(b), n_far, 3))).float()
            p = torch.einsum("bpi,bij->bpj", q / s[:, None, None] + c[:, None], R)
            far = (p.abs().amax(-1) > UNI_BOX).float()
            pts = torch.cat([pts, q], 1)
            tgt = torch.cat([tgt, -torch.ones_like(far)], 1)
            w = torch.cat([w, far], 1)
        es = torch.from_numpy(rng.integers(0, S, size=(len(b), enc_pts)))
        sp = _to_view(torch.gather(surf[ii], 1, es[..., None].expand(-1, -1, 3)), R, c, s)
        z = _normalise(enc(sp))
        if noise > 0:
            z = z + noise * torch.randn_like(z)
        loss = ((_decode(vae, z, pts) - tgt).abs() * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        lv = float(loss.detach())
        run = 0.98 * run + 0.02 * lv if step else lv
        if step % 50 == 0 or step == steps - 1:
            curve.append({"step": step, "loss": lv, "ema_loss": run,
                          "t": round(time.time() - t0, 1)})
            if step % 250 == 0 or step == steps - 1:
                log.info("A step %d/%d  L1 %.4f (avg %.4f)  %.1f s", step, steps, lv, run,
                         time.time() - t0)


def _view_tensors(data, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotations and view frames of all stored views of shape ``i``."""
    rots = data["rots"][i]
    fr = [view_frame(data["hull"][i], R) for R in rots]
    return (torch.tensor(rots, dtype=torch.float32),
            torch.tensor(np.stack([f[0] for f in fr]), dtype=torch.float32),
            torch.tensor([f[1] for f in fr], dtype=torch.float32))


def view_points(data, i: int, v: int, key: str = "surface") -> np.ndarray:
    """Stored points of shape ``i`` in the generator frame of its view ``v``."""
    R, c, s = _view_tensors(data, i)
    return _to_view(data[key][i][None].float(), R[v:v + 1], c[v:v + 1], s[v:v + 1])[0].numpy()


@torch.no_grad()
def _encode_views(enc, data, idx: torch.Tensor, n_pts: int = 2048) -> list[torch.Tensor]:
    """Latent of every stored view of every shape in ``idx`` (list of (V, n_lat, ch))."""
    g = torch.Generator().manual_seed(123)
    out = []
    for i in idx.tolist():
        R, c, s = _view_tensors(data, i)
        sel = torch.randperm(data["surface"].shape[1], generator=g)[:n_pts]
        sp = data["surface"][i][sel][None].expand(len(R), -1, -1)
        out.append(_normalise(enc(_to_view(sp, R, c, s))))
    return out


@torch.no_grad()
def _recon_metrics(vae, data, idx: torch.Tensor, z_views: list[torch.Tensor]
                   ) -> dict[str, float]:
    """IoU (sign agreement on the uniform half of the samples, view 0's frame) and L1."""
    ious, l1s = [], []
    u = slice(N_SDF // 2, None)
    for k, i in enumerate(idx.tolist()):
        R, c, s = _view_tensors(data, i)
        pts = _to_view(data["points"][i][u][None], R[:1], c[:1], s[:1])
        tgt = (-(s[0] * data["sdf"][i][u]) / TRUNC).clamp(-1, 1)[None]
        inside = (pts.abs().amax(-1) <= BOX_V)
        pred = _decode(vae, z_views[k][:1], pts)
        l1s.append(float((pred - tgt).abs()[inside].mean()))
        pi, ti = (pred > 0) & inside, (tgt > 0) & inside
        ious.append(float((pi & ti).sum()) / max(1.0, float((pi | ti).sum())))
    return {"iou": float(np.mean(ious)), "l1": float(np.mean(l1s))}


def stage_a(a: argparse.Namespace) -> None:
    """Stage A: encoder + decoder; then the latents of every (shape, view)."""
    work = Path(a.work)
    out_path = work / "stage_a.pt"
    arch = _arch(a)
    if out_path.is_file():
        old = torch.load(out_path, weights_only=False)
        if old.get("arch_vae") == _vae_arch(arch) and old.get("steps") == a.steps_a:
            log.info("A: %s exists with this decoder size and step count; kept", out_path)
            return
    data = torch.load(work / "data.pt", weights_only=False)
    cfg = tiny_generator_config(arch)
    split = np.array(data["split"])
    tr = torch.from_numpy(np.nonzero(split == "train")[0])
    va = torch.from_numpy(np.nonzero(split == "val")[0])
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 11])
    vae = _instantiate(cfg["vae"], a.seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed + 5)
        enc = PointEncoder(*arch["latents"], width=a.enc_width)
    enc.train()
    curve: list = []
    t0 = time.time()
    _fit_encoder(vae, enc, data, tr, a.steps_a, a.lr_a, 32, 512, 512, 128, a.noise_a, rng,
                 curve)
    t_a = time.time() - t0
    vae.eval(), enc.eval()
    vae.requires_grad_(False)
    enc.requires_grad_(False)
    z_tr = _encode_views(enc, data, tr)
    z_va = _encode_views(enc, data, va)
    m_tr = _recon_metrics(vae, data, tr[:200], z_tr[:200])
    m_va = _recon_metrics(vae, data, va, z_va)
    log.info("A: reconstruction train %s, validation (unseen shapes) %s (%.0f s)", m_tr, m_va,
             t_a)
    torch.save({"vae": vae.state_dict(), "encoder": enc.state_dict(), "z_train": z_tr,
                "z_val": z_va, "train_idx": tr, "val_idx": va, "arch_vae": _vae_arch(arch),
                "steps": a.steps_a}, out_path)
    _update_json(work / "curves.json", {"a": curve})
    _update_json(work / "timings.json", {"a": {
        "seconds": round(t_a, 1), "steps": a.steps_a,
        "decoder_params": _count(vae), "encoder_params": _count(enc),
        "latent_shape": list(arch["latents"]), "noise": a.noise_a, "train_recon": m_tr,
        "val_recon": m_va, "final_l1_avg": curve[-1]["ema_loss"]}})


def _vae_arch(arch: dict[str, Any]) -> dict[str, Any]:
    return {k: arch[k] for k in ("latents", "vae_width", "vae_layers")}


# --------------------------------------------------------------------------------------
# stage b: flow matching
# --------------------------------------------------------------------------------------


def _images_to_tensor(u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 from ImageProcessorV2(to_tensor=False) -> (B, 3, H, W) in [-1, 1],
    exactly what its to_tensor path gives."""
    return u8.permute(0, 3, 1, 2).float() / 255 * 2 - 1


def _sample_t(b: int, gen: torch.Generator, mode: str) -> torch.Tensor:
    """Flow times: ``uniform`` in [0, 1], or ``mix``: half uniform, half logit-normal(-0.8, 1)
    (more weight towards the noise end, where the image decides the overall shape)."""
    u = torch.rand(b, generator=gen)
    if mode == "uniform":
        return u
    ln = torch.sigmoid(-0.8 + torch.randn(b, generator=gen))
    pick = torch.rand(b, generator=gen) < 0.5
    return torch.where(pick, u, ln)


def _flow_loss(model, cond, z1, gen: torch.Generator, fixed=None,
               t_mode: str = "uniform") -> torch.Tensor:
    b = z1.shape[0]
    if fixed is None:
        eps = torch.randn(z1.shape, generator=gen)
        t = _sample_t(b, gen, t_mode)
    else:
        eps, t = fixed
    xt = (1 - t)[:, None, None] * eps + t[:, None, None] * z1
    v = model(xt, t, {"main": cond})
    return ((v - (z1 - eps)) ** 2).mean()


def stage_b(a: argparse.Namespace) -> None:
    work = Path(a.work)
    data = torch.load(work / "data.pt", weights_only=False)
    sa = torch.load(work / "stage_a.pt", weights_only=False)
    arch = _arch(a)
    if sa["arch_vae"] != _vae_arch(arch):
        raise SystemExit(f"stage b: stage_a.pt was trained with {sa['arch_vae']}, the flags say "
                         f"{_vae_arch(arch)}; re-run stage a or pass the same sizes")
    cfg = tiny_generator_config(arch)
    tr, va = sa["train_idx"], sa["val_idx"]
    z_tr, z_va = sa["z_train"], sa["z_val"]
    images = load_images(work, data["names"], arch["image_size"])
    imgs_tr = [images[int(i)] for i in tr]
    imgs_va = [images[int(i)] for i in va]
    n_views = a.views_used or max(len(z) for z in z_tr)
    pairs = np.array([(k, v) for k in range(len(tr)) for v in range(min(n_views, len(z_tr[k])))])
    ckpt_path = work / "stage_b_ckpt.pt"
    model = _instantiate(cfg["model"], a.seed + 2)
    cond_enc = _instantiate(cfg["conditioner"], a.seed + 3)
    n_lat, ch = arch["latents"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed + 4)
        aux_head = torch.nn.Sequential(torch.nn.LayerNorm(arch["cond_hidden"]),
                                       torch.nn.Linear(arch["cond_hidden"], n_lat * ch))
    params = list(model.parameters()) + list(cond_enc.parameters())
    train_params = params + (list(aux_head.parameters()) if a.aux > 0 else [])
    opt = torch.optim.AdamW(train_params, lr=a.lr_b, weight_decay=0.01, betas=(0.9, 0.99))
    ema_model, ema_cond = copy.deepcopy(model), copy.deepcopy(cond_enc)
    for m in (ema_model, ema_cond):
        m.requires_grad_(False)
    gen = torch.Generator().manual_seed(a.seed + 20)
    rng = np.random.default_rng([a.seed, 20])
    start, curve, val_curve, elapsed = 0, [], [], 0.0
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck.get("arch") != arch or ck.get("aux", 0.0) != a.aux or \
                ck.get("views_used", 0) != a.views_used:
            raise SystemExit(f"stage b: {ckpt_path} was made with arch {ck.get('arch')} aux "
                             f"{ck.get('aux')}; delete it or pass the same flags")
        model.load_state_dict(ck["model"])
        cond_enc.load_state_dict(ck["cond"])
        ema_model.load_state_dict(ck["ema_model"])
        ema_cond.load_state_dict(ck["ema_cond"])
        aux_head.load_state_dict(ck["aux_head"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        rng.bit_generator.state = ck["rng"]
        start, curve, val_curve, elapsed = ck["step"], ck["curve"], ck["val_curve"], ck["t"]
        log.info("B: resumed at step %d", start)
    total = a.steps_b
    warm = 300
    # the cosine schedule runs to --lr-horizon (default: --steps-b), so a run continued to
    # more steps keeps the same learning rates for the steps it already did
    horizon = a.lr_horizon or total

    def lr_at(s: int) -> float:
        if s < warm:
            return a.lr_b * (s + 1) / warm
        p = (s - warm) / max(1, horizon - warm)
        return a.lr_b * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    # fixed validation batch (one clean and one occluded view per validation shape)
    vg = torch.Generator().manual_seed(a.seed + 30)
    v_img = torch.stack([imgs_va[k][v] for k in range(len(va)) for v in (0, 1)])
    v_z = torch.stack([z_va[k][v] for k in range(len(va)) for v in (0, 1)])
    v_fixed = (torch.randn(v_z.shape, generator=vg), torch.rand(len(v_z), generator=vg))
    v_img_t = _images_to_tensor(v_img)
    # the same for a training subset (how well it fits its own data)
    tsub = np.random.default_rng([a.seed, 31]).choice(len(pairs), size=len(v_z), replace=False)
    t_img_t = _images_to_tensor(torch.stack([imgs_tr[k][v] for k, v in pairs[tsub]]))
    t_z = torch.stack([z_tr[k][v] for k, v in pairs[tsub]])

    @torch.no_grad()
    def val_loss(mdl, enc, img_t, z) -> dict[str, float]:
        mdl.eval(), enc.eval()
        c = torch.cat([enc(image=img_t[s:s + 64])["main"] for s in range(0, len(img_t), 64)])
        u = torch.zeros_like(c)
        out = {"cond": float(_flow_loss(mdl, c, z, None, v_fixed)),
               "uncond": float(_flow_loss(mdl, u, z, None, v_fixed)),
               "shuffled": float(_flow_loss(mdl, c.roll(2, 0), z, None, v_fixed))}
        mdl.train(), enc.train()
        return out

    B = a.batch_b
    t0 = time.time() - elapsed
    run = None
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        pk = pairs[rng.integers(0, len(pairs), size=B)]
        img = torch.stack([imgs_tr[k][v] for k, v in pk])
        z1 = torch.stack([z_tr[k][v] for k, v in pk])
        c = cond_enc(image=_images_to_tensor(img))["main"]
        loss_aux = None
        if a.aux > 0:
            loss_aux = ((aux_head(c.mean(1)) - z1.flatten(1)) ** 2).mean()
        drop = torch.from_numpy(rng.uniform(size=B) < 0.1)
        # classifier-free guidance dropout: exactly the unconditional embedding (zeros)
        c = torch.where(drop[:, None, None], torch.zeros_like(c), c)
        loss_flow = _flow_loss(model, c, z1, gen, t_mode=a.t_sampling)
        loss = loss_flow + (a.aux * loss_aux if loss_aux is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        d = min(a.ema, (step + 1) / (step + 10))
        with torch.no_grad():
            for src, dst in ((model, ema_model), (cond_enc, ema_cond)):
                for p, q in zip(src.parameters(), dst.parameters()):
                    q.mul_(d).add_(p.detach(), alpha=1 - d)
        lf = float(loss_flow.detach())
        run = lf if run is None else 0.98 * run + 0.02 * lf
        if step % 50 == 0:
            curve.append({"step": step, "loss": lf, "ema_loss": run,
                          "aux": None if loss_aux is None else float(loss_aux.detach()),
                          "lr": lr_at(step), "t": round(time.time() - t0, 1)})
        last = step == total - 1
        if step % 500 == 0 or last:
            vl = val_loss(ema_model, ema_cond, v_img_t, v_z)
            tl = val_loss(ema_model, ema_cond, t_img_t, t_z)
            val_curve.append({"step": step, "val": vl, "train_subset": tl,
                              "t": round(time.time() - t0, 1)})
            log.info("B step %d/%d  loss %.4f (avg %.4f)%s  val[EMA] cond %.4f uncond %.4f "
                     "shuffled %.4f | train-subset cond %.4f  %.0f s", step, total, lf, run,
                     "" if loss_aux is None else f" aux {float(loss_aux.detach()):.4f}",
                     vl["cond"], vl["uncond"], vl["shuffled"], tl["cond"], time.time() - t0)
        if (step + 1) % 1000 == 0 or last:
            torch.save({"model": model.state_dict(), "cond": cond_enc.state_dict(),
                        "ema_model": ema_model.state_dict(), "ema_cond": ema_cond.state_dict(),
                        "aux_head": aux_head.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "rng": rng.bit_generator.state,
                        "step": step + 1, "curve": curve, "val_curve": val_curve,
                        "t": time.time() - t0, "arch": arch, "aux": a.aux,
                        "views_used": a.views_used},
                       str(ckpt_path) + ".tmp")
            os.replace(str(ckpt_path) + ".tmp", ckpt_path)
    ck = torch.load(ckpt_path, weights_only=False)
    final = {"model": ck["ema_model"], "conditioner": ck["ema_cond"], "vae": sa["vae"],
             "arch": arch, "step": ck["step"], "seconds": ck["t"]}
    torch.save(final, work / "stage_b.pt")
    torch.save(final, work / f"stage_b_{ck['step']}.pt")        # for curves over steps
    _update_json(work / "curves.json", {"b": ck["curve"], "b_val": ck["val_curve"]})
    _update_json(work / "timings.json", {"b": {
        "seconds": round(ck["t"], 1), "steps": ck["step"], "batch": B, "aux": a.aux,
        "views_used": a.views_used,
        "arch": arch, "dit_params": _count(model), "conditioner_params": _count(cond_enc),
        "final_loss_avg": ck["curve"][-1]["ema_loss"], "final_val": ck["val_curve"][-1]}})


# --------------------------------------------------------------------------------------
# export + eval
# --------------------------------------------------------------------------------------


def build_backbone(work: Path, path: str | Path | None = None):
    """The backbone of ``work/stage_b.pt`` (or of the given stage-B file)."""
    from hoiguide.backbones import HunyuanBackbone

    sd = torch.load(path or work / "stage_b.pt", weights_only=False)
    bb = HunyuanBackbone.from_config(tiny_generator_config(sd["arch"]), seed=0)
    bb.model.load_state_dict(sd["model"])
    bb.conditioner.load_state_dict(sd["conditioner"])
    bb.vae.load_state_dict(sd["vae"])
    return bb


def compact_specs(specs: list[str]) -> list[str]:
    """Object specs as the few range patterns a benchmark's training-object guard matches:
    ``pybullet:A-B`` (runs of indices; a broken index inside a run does not split it) and
    ``procedural:KIND@A-B`` (runs of instance seeds per family)."""
    from hoiguide.synth.objects import BROKEN_INDICES

    pyb: list[int] = []
    seeds: dict[str, list[int]] = {}
    other: list[str] = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        name, _, seed = rest.partition("@")
        if kind == "pybullet" and name.isdigit():
            pyb.append(int(name))
        elif kind == "procedural" and seed.isdigit():
            seeds.setdefault(name, []).append(int(seed))
        else:
            other.append(spec)

    def runs(vals: list[int], bridge: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        out: list[list[int]] = []
        for v in sorted(set(vals)):
            if out and (v == out[-1][1] + 1 or (v == out[-1][1] + 2 and out[-1][1] + 1 in bridge)):
                out[-1][1] = v
            else:
                out.append([v, v])
        return [(x, y) for x, y in out]

    res = [f"pybullet:{x}-{y}" for x, y in runs(pyb, frozenset(BROKEN_INDICES))]
    for name, vals in seeds.items():
        res += [f"procedural:{name}@{x}-{y}" for x, y in runs(vals)]
    return res + other


def training_objects(data: dict[str, Any], a: argparse.Namespace, arch: dict[str, Any]
                     ) -> dict[str, Any]:
    """What ``training_objects.json`` records (the format ``hoiguide.backbones`` reads:
    ``objects`` = the training objects as range patterns); also the validation objects, the
    procedural seed split and the generator frame."""
    from hoiguide.synth.objects import EVAL_SEEDS, TRAIN_SEEDS, VAL_SEEDS

    def rng_of(r: range) -> list[int]:
        return [r.start, r.stop - 1]

    train = [s for s, p in zip(data["specs"], data["split"]) if p == "train"]
    val = [s for s, p in zip(data["specs"], data["split"]) if p == "val"]
    return {
        "format": "hoiguide-training-objects",
        "version": 1,
        "objects": compact_specs(train),
        "validation_objects": compact_specs(val),
        "note": "What the tiny_v2 generator was trained on (scripts/train_tiny_generator.py): "
                "pybullet_data random_urdfs 000-599 and the listed training seeds of every "
                "procedural family. validation_objects chose the configuration (development "
                "objects); random_urdfs 700-999, the named meshes and procedural evaluation "
                "seeds were never used.",
        "counts": {"train": len(train), "validation": len(val)},
        "procedural_seeds": {"train": rng_of(TRAIN_SEEDS), "val": rng_of(VAL_SEEDS),
                             "eval": rng_of(EVAL_SEEDS)},
        "generator_frame": "view-aligned: the sample is the object in the input camera's "
                           "orientation (OpenCV axes: +x right, +y down, +z forward), "
                           "bounding-box centre at the origin, longest side 1.8",
        "arch": arch, "seed": a.seed,
    }


def stage_export(a: argparse.Namespace) -> None:
    work = Path(a.work)
    bb = build_backbone(work)
    sd = torch.load(work / "stage_b.pt", weights_only=False)
    data = torch.load(work / "data.pt", weights_only=False)
    tmp = work / "export"
    if tmp.exists():
        shutil.rmtree(tmp)
    folder = bb.save_pretrained(tmp, subfolder=None, variant=None)
    with open(folder / "training_objects.json", "w") as f:
        json.dump(training_objects(data, a, sd["arch"]), f, indent=1)
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    names = ("config.yaml", "model.safetensors", "training_objects.json")
    for name in names:
        shutil.copyfile(folder / name, dest / name)
    sizes = {n: (dest / n).stat().st_size for n in names}
    _update_json(work / "timings.json", {"export": {"bytes": sizes, "dest": str(dest),
                                                    "step": sd.get("step")}})
    log.info("export: wrote %s (%s)", dest, sizes)


def chamfer(a_pts: np.ndarray, b_pts: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean of the two mean nearest-neighbour (L2) distances."""
    from scipy.spatial import cKDTree

    d1 = cKDTree(b_pts).query(a_pts)[0]
    d2 = cKDTree(a_pts).query(b_pts)[0]
    return float(0.5 * (d1.mean() + d2.mean()))


def stage_eval(a: argparse.Namespace) -> None:
    from hoiguide.backbones import HunyuanBackbone
    from hoiguide.geometry import sample_surface
    from hoiguide.guidance.sampler import latent_to_mesh, sample

    work = Path(a.work)
    data = torch.load(work / "data.pt", weights_only=False)
    sa = torch.load(work / "stage_a.pt", weights_only=False)
    if a.eval_exported:
        bb = HunyuanBackbone.from_pretrained(a.out, subfolder=None, variant=None, device="cpu",
                                             local_files_only=True)
    else:
        bb = build_backbone(work, a.eval_ckpt or None)
    size = int(bb.conditioner.main_image_encoder.model.config.image_size)
    images = load_images(work, data["names"], size)
    tr, va = sa["train_idx"].numpy(), sa["val_idx"].numpy()
    z_val = sa["z_val"]
    if a.eval_per_family:        # a quick evaluation on the first N shapes of each family
        keep, count = [], {}
        for k, i in enumerate(va):
            f = data["families"][int(i)]
            count[f] = count.get(f, 0) + 1
            if count[f] <= a.eval_per_family:
                keep.append(k)
        va, z_val = va[keep], [z_val[k] for k in keep]
    rng = np.random.default_rng([a.seed, 40])
    n = len(va)
    res = a.eval_res

    def mesh_pts(latent: torch.Tensor, seed: int) -> np.ndarray | None:
        m = latent_to_mesh(bb, latent[None], res)
        if m.is_empty:
            return None
        return sample_surface(m.to(dtype=torch.float64), 4096, seed=seed)

    def boxed(p: np.ndarray | None) -> np.ndarray | None:
        """A sample moved and scaled to the generator-frame convention (bounding-box centre
        at the origin, longest side 1.8): its shape error without its size error."""
        if p is None:
            return None
        lo, hi = p.min(0), p.max(0)
        return (p - 0.5 * (lo + hi)) * (GEN_BOX_SIDE / max(float((hi - lo).max()), 1e-9))

    t0 = time.time()
    rows = []
    perm = (np.arange(n) + 1 + rng.integers(0, n - 1, size=n)) % n   # a different shape
    perm = np.where(perm == np.arange(n), (perm + 1) % n, perm)
    rand_tr = rng.choice(tr, size=n)
    rand_tr_pts = [view_points(data, int(i), 0) if a.eval_frame == "view" else
                   data["surface"][int(i)].numpy().astype(np.float64) for i in rand_tr]
    for view in (0, 1):
        if a.eval_frame == "object":     # a generator trained in the object's own frame
            truth = [data["surface"][int(i)].numpy().astype(np.float64) for i in va]
        else:
            truth = [view_points(data, int(i), view) for i in va]
        imgs = [images[int(i)][view].numpy() for i in va]
        pts = {}
        for w in a.cfg:
            lat = []
            for s in range(0, n, 16):
                chunk = imgs[s:s + 16]
                cond = bb.encode_condition([np.ascontiguousarray(x) for x in chunk])
                lat.append(sample(bb, None, num_steps=a.eval_steps, guidance_scale=w,
                                  condition=cond,
                                  latents=torch.randn((len(chunk), *bb.latent_shape),
                                                      generator=torch.Generator().manual_seed(
                                                          a.seed + s))))
            lat = torch.cat(lat)
            pts[w] = [mesh_pts(lat[k], k) for k in range(n)]
        for k in range(n):
            i = int(va[k])
            row = {"name": data["names"][i], "family": data["families"][i], "view": view,
                   "occluded": bool(data["occluded"][i][view])}
            for w in a.cfg:
                p, q = pts[w][k], pts[w][perm[k]]
                row[f"cd_w{w:g}"] = chamfer(p, truth[k]) if p is not None else float("nan")
                # the sample made from ANOTHER validation shape's image, vs this shape
                row[f"cd_shuffled_w{w:g}"] = (chamfer(q, truth[k]) if q is not None
                                              else float("nan"))
                # the same after putting each sample into the normalised box
                row[f"cdbox_w{w:g}"] = (chamfer(boxed(p), truth[k]) if p is not None
                                        else float("nan"))
                row[f"cdbox_shuffled_w{w:g}"] = (chamfer(boxed(q), truth[k]) if q is not None
                                                 else float("nan"))
            row["cd_random_train"] = chamfer(rand_tr_pts[k], truth[k])
            row["cd_stage_a_latent"] = float("nan") if a.eval_frame == "object" else (
                lambda p: chamfer(p, truth[k]) if p is not None else float("nan"))(
                mesh_pts(z_val[k][view], k))
            rows.append(row)
        log.info("eval view %d done (%.0f s)", view, time.time() - t0)
    summary = _summarise(rows, a.cfg)
    out = {"rows": rows, "summary": summary, "steps": a.eval_steps, "resolution": res,
           "seconds": round(time.time() - t0, 1)}
    name = f"eval_s{a.eval_steps}" + (f"_pf{a.eval_per_family}" if a.eval_per_family else "") \
        + (f"_{Path(a.eval_ckpt).stem}" if a.eval_ckpt else "") \
        + ("_objectframe" if a.eval_frame == "object" else "") + ".json"
    with open(work / name, "w") as f:
        json.dump(out, f, indent=1)
    log.info("eval summary (%s): %s", name, json.dumps(_headline(summary, a.cfg), indent=1))
    _update_json(work / "timings.json", {name[:-5]: {"seconds": out["seconds"],
                                                     "headline": _headline(summary, a.cfg)}})
    if a.figures:
        make_figures(a, bb, data, sa, images)


def _group_summary(rs: list[dict[str, Any]], cfgs: list[float]) -> dict[str, Any]:
    d: dict[str, Any] = {"n": len(rs)}
    keys = sorted({k for r in rs for k in r if k.startswith(("cd_", "cdbox_"))})
    for k in keys:
        v = np.array([r[k] for r in rs if k in r], float)
        d[k] = {"mean": float(np.nanmean(v)) if (~np.isnan(v)).any() else float("nan"),
                "median": float(np.nanmedian(v)) if (~np.isnan(v)).any() else float("nan"),
                "empty": int(np.isnan(v).sum())}
    for w in cfgs:
        x = np.array([r[f"cd_w{w:g}"] for r in rs], float)
        y = np.array([r[f"cd_shuffled_w{w:g}"] for r in rs], float)
        c = np.array([r["cd_random_train"] for r in rs], float)
        # an empty sample loses; a sample that beats an empty other sample wins
        own = np.where(np.isnan(x), np.inf, x)
        other = np.where(np.isnan(y), np.inf, y)
        both = ~(np.isinf(own) & np.isinf(other))
        d[f"w{w:g}_beats_shuffled_frac"] = float((own[both] < other[both]).mean())
        d[f"w{w:g}_beats_random_train_frac"] = float((own < c).mean())
        d[f"w{w:g}_empty_frac"] = float(np.isnan(x).mean())
        if f"cdbox_w{w:g}" in rs[0]:
            xb = np.array([r[f"cdbox_w{w:g}"] for r in rs], float)
            yb = np.array([r[f"cdbox_shuffled_w{w:g}"] for r in rs], float)
            own = np.where(np.isnan(xb), np.inf, xb)
            other = np.where(np.isnan(yb), np.inf, yb)
            both = ~(np.isinf(own) & np.isinf(other))
            d[f"w{w:g}_box_beats_shuffled_frac"] = float((own[both] < other[both]).mean())
    return d


def _summarise(rows: list[dict[str, Any]], cfgs: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups = {"clean": [r for r in rows if r["view"] == 0],
              "occluded_inpainted": [r for r in rows if r["view"] == 1 and r["occluded"]],
              "all": rows}
    for g, rs in groups.items():
        if rs:
            out[g] = _group_summary(rs, cfgs)
    fams = sorted({r["family"] for r in rows})
    out["families"] = {f: _group_summary([r for r in rows if r["family"] == f], cfgs)
                       for f in fams}
    return out


def _headline(summary: dict[str, Any], cfgs: list[float]) -> dict[str, Any]:
    """The acceptance numbers: own-vs-other, median Chamfer, empty fraction, overall and the
    worst family."""
    out = {}
    for w in cfgs:
        al = summary["all"]
        fam = summary["families"]
        out[f"cfg {w:g}"] = {
            "own_beats_other": round(al[f"w{w:g}_beats_shuffled_frac"], 3),
            "median_cd": round(al[f"cd_w{w:g}"]["median"], 4),
            "median_cd_boxed": round(al.get(f"cdbox_w{w:g}", {}).get("median", float("nan")), 4),
            "own_beats_other_boxed": round(al.get(f"w{w:g}_box_beats_shuffled_frac",
                                                  float("nan")), 3),
            "empty": round(al[f"w{w:g}_empty_frac"], 4),
            "upper_bound_median_cd": round(al["cd_stage_a_latent"]["median"], 4),
            "random_train_median_cd": round(al["cd_random_train"]["median"], 4),
            "worst_family_own_beats_other": min(
                (round(f[f"w{w:g}_beats_shuffled_frac"], 3), k) for k, f in fam.items()),
            "worst_family_median_cd": max(
                (round(f[f"cd_w{w:g}"]["median"], 4), k) for k, f in fam.items()),
        }
    return out


def make_figures(a: argparse.Namespace, bb, data, sa, images) -> None:
    """Training curves and a contact sheet (input | truth | sample, clean and inpainted),
    meshes in the view-aligned generator frame seen from above the camera's right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hoiguide.guidance.sampler import latent_to_mesh, sample
    from hoiguide.synth.objects import load_object
    from hoiguide.types import Mesh

    work = Path(a.work)
    docs = REPO / "docs" / "images"
    docs.mkdir(parents=True, exist_ok=True)
    with open(work / "curves.json") as f:
        curves = json.load(f)
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ca = curves["a"]
    ax[0].plot([c["step"] for c in ca], [c["ema_loss"] for c in ca], label="train shapes")
    ax[0].set_title("stage A (encoder, random rotations), L1 on truncated SDF")
    ax[0].set_xlabel("step")
    ax[0].set_yscale("log")
    ax[0].legend()
    cb, vb = curves["b"], curves["b_val"]
    ax[1].plot([c["step"] for c in cb], [c["ema_loss"] for c in cb], label="train (running)",
               alpha=0.7)
    ax[1].plot([c["step"] for c in vb], [c["val"]["cond"] for c in vb], "o-", ms=3,
               label="val, own image (EMA)")
    ax[1].plot([c["step"] for c in vb], [c["val"]["shuffled"] for c in vb], "s--", ms=3,
               label="val, another shape's image")
    ax[1].plot([c["step"] for c in vb], [c["val"]["uncond"] for c in vb], ":", label="val, "
               "unconditional")
    ax[1].set_title("stage B: flow matching loss")
    ax[1].set_xlabel("step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(docs / f"{a.fig_prefix}_training_curves.png", dpi=90)
    plt.close(fig)

    # contact sheet: one validation shape per family, then a few pybullet ones
    va = sa["val_idx"].numpy()
    fams = [data["families"][int(i)] for i in va]
    rng = np.random.default_rng([a.seed, 50])
    pick, seen = [], set()
    for k, f in enumerate(fams):
        if f != "pybullet" and f not in seen:
            seen.add(f)
            pick.append(k)
    pyb = [k for k, f in enumerate(fams) if f == "pybullet"]
    if pyb:
        pick += list(rng.choice(pyb, size=min(4, len(pyb)), replace=False))
    w = 5.0 if 5.0 in a.cfg else a.cfg[0]
    cols = ["input (clean)", "truth", "sample", "input (inpainted)", "truth", "sample"]
    fig, axes = plt.subplots(len(pick), 6, figsize=(9, 1.55 * len(pick)))
    axes = np.atleast_2d(axes)
    for r, k in enumerate(pick):
        i = int(va[k])
        spec = data["specs"][i]
        obj = load_object(spec, rng=np.random.default_rng([a.seed, 2, 0]))
        V = obj.vertices.double()
        lo, hi = V.min(0).values, V.max(0).values
        Vc = ((V - 0.5 * (lo + hi)) * (GEN_BOX_SIDE / float((hi - lo).max()))).numpy()
        for v in (0, 1):
            R = data["rots"][i][v]
            c, s = view_frame(data["hull"][i], R)
            truth = Mesh(torch.from_numpy(s * (Vc @ R.T - c)), obj.faces)
            img = images[i][v].numpy()
            lat = sample(bb, np.ascontiguousarray(img), num_steps=a.eval_steps,
                         guidance_scale=w, seed=k)
            m = latent_to_mesh(bb, lat, a.eval_res)
            axes[r, 3 * v].imshow(img)
            axes[r, 3 * v + 1].imshow(_mesh_image(truth, (0.75, 0.75, 0.75)))
            axes[r, 3 * v + 2].imshow(_mesh_image(m))
        axes[r, 0].set_ylabel(spec.replace("procedural:", ""), fontsize=6)
        for cc in range(6):
            axes[r, cc].set_xticks([])
            axes[r, cc].set_yticks([])
            if r == 0:
                axes[r, cc].set_title(cols[cc], fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / f"{a.fig_prefix}_contact_sheet.png", dpi=80)
    plt.close(fig)


_VIEW_DIR = np.array([0.45, -0.5, -0.74])   # from the camera's side, above and to the right


def _mesh_image(mesh, col=(0.55, 0.7, 0.9), size: int = 128, view=_VIEW_DIR,
                up=(0, -1, 0)) -> np.ndarray:
    """A shaded picture of a generator-frame mesh (longest side about 1.8) seen from the
    direction ``view``."""
    from hoiguide.render import render
    from hoiguide.synth.cameras import look_at
    from hoiguide.types import Camera

    img = np.full((size, size, 3), 255, np.uint8)
    if mesh.is_empty:
        return img
    d = np.asarray(view, np.float64) / np.linalg.norm(view)
    w2c = look_at(d * 4.0, np.zeros(3), up=up)
    f = 0.5 * size / math.tan(math.radians(17))
    cam = Camera(f, f, size / 2, size / 2, size, size)
    r = render([mesh.to(dtype=torch.float64).transformed(w2c)], cam)
    n = r.normals.numpy()
    hit = r.mesh_id.numpy() >= 0
    light = np.array([0.4, -0.5, -0.75])    # camera frame: from the upper left, front
    light /= np.linalg.norm(light)
    s = np.abs(n @ light) * 0.75 + 0.25
    img[hit] = (255 * s[hit, None] * np.asarray(col)).astype(np.uint8)
    return img


def stage_sheet(a: argparse.Namespace) -> None:
    """Contact sheet of the procedural families: ``--sheet-seeds`` validation instances per
    family (rows), each in its object frame (metres, +z its axis) seen from above the front;
    written to ``docs/images/procedural_families.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hoiguide.synth.objects import FAMILIES, VAL_SEEDS, load_object

    n = a.sheet_seeds
    fig, axes = plt.subplots(len(FAMILIES), n, figsize=(1.25 * n, 1.25 * len(FAMILIES)))
    for r, (name, fam) in enumerate(FAMILIES.items()):
        for c in range(n):
            seed = VAL_SEEDS[c]
            m = load_object(f"procedural:{name}@{seed}", rng=np.random.default_rng(0))
            V = m.vertices.double()
            L = float(m.metadata["size"])
            gen = type(m)(V * (GEN_BOX_SIDE / L), m.faces)
            axes[r, c].imshow(_mesh_image(gen, (0.85, 0.6, 0.35), size=112,
                                          view=(0.55, -0.75, 0.45), up=(0, 0, 1)))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            axes[r, c].set_xlabel(f"@{seed}  {100 * L:.1f} cm", fontsize=5, labelpad=1)
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout(pad=0.3)
    out = REPO / "docs" / "images" / "procedural_families.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    log.info("sheet: wrote %s", out)


# --------------------------------------------------------------------------------------


def _update_json(path: Path, entries: dict[str, Any]) -> None:
    d = {}
    if path.is_file():
        with open(path) as f:
            d = json.load(f)
    d.update(entries)
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(d, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all",
                   choices=["data", "a", "b", "eval", "export", "all", "sheet"])
    p.add_argument("--work", default="/tmp/tiny_work")
    p.add_argument("--out", default=str(REPO / "hoiguide" / "backbones" / "weights" / "tiny_v2"),
                   help="exported weights folder (a new folder: the bundled weights/tiny is "
                        "replaced only on purpose)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads were 7x slower "
                        "from oversubscription)")
    p.add_argument("--workers", type=int, default=2, help="processes for the data stage")
    p.add_argument("--limit", type=int, default=0, help="use only this many shapes (debug)")
    p.add_argument("--families", default="all",
                   help="procedural families: 'all', 'none' or a comma list")
    p.add_argument("--no-pybullet", action="store_true", help="no random_urdfs shapes (debug)")
    p.add_argument("--fam-train", type=int, default=30,
                   help="training instances per family (the first training seeds)")
    p.add_argument("--fam-val", type=int, default=5,
                   help="validation instances per family (the first validation seeds)")
    p.add_argument("--views", type=int, default=8, help="views per training shape")
    p.add_argument("--occluded", type=float, default=40.0, help="%% of views with a hand")
    for k, v in ARCH_DEFAULT.items():
        if k == "latents":
            p.add_argument("--latents", type=int, nargs=2, default=v,
                           metavar=("NUM", "CHANNELS"))
        else:
            p.add_argument("--" + k.replace("_", "-"), dest=k, type=int, default=v)
    p.add_argument("--enc-width", type=int, default=64, help="stage-A point encoder width")
    p.add_argument("--steps-a", type=int, default=4000)
    p.add_argument("--noise-a", type=float, default=0.15,
                   help="latent noise std during stage A")
    p.add_argument("--t-sampling", choices=["mix", "uniform"], default="mix")
    p.add_argument("--lr-a", type=float, default=1e-3)
    p.add_argument("--steps-b", type=int, default=8000)
    p.add_argument("--lr-horizon", type=int, default=0,
                   help="steps of the cosine learning-rate schedule (default --steps-b)")
    p.add_argument("--batch-b", type=int, default=32)
    p.add_argument("--lr-b", type=float, default=1e-3)
    p.add_argument("--aux", type=float, default=0.0,
                   help="weight of the auxiliary latent regression from the conditioner")
    p.add_argument("--views-used", type=int, default=0,
                   help="stage b: use only the first N views of each training shape (0: all)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-res", type=int, default=64)
    p.add_argument("--cfg", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--eval-per-family", type=int, default=0,
                   help="quick evaluation: only the first N validation shapes of each family "
                        "(random_urdfs 600-699 count as one family)")
    p.add_argument("--eval-ckpt", default="",
                   help="evaluate this stage-B file (e.g. WORK/stage_b_4000.pt) instead")
    p.add_argument("--eval-frame", choices=["view", "object"], default="view",
                   help="frame of the truth: view-aligned (this script's generators) or the "
                        "object's own frame (the first bundled generator, weights/tiny)")
    p.add_argument("--eval-exported", action="store_true",
                   help="evaluate the exported package weights (through from_pretrained)")
    p.add_argument("--no-figures", dest="figures", action="store_false")
    p.add_argument("--sheet-seeds", type=int, default=6,
                   help="stage sheet: validation instances per family")
    p.add_argument("--fig-prefix", default="tiny_v2",
                   help="figure file names in docs/images: PREFIX_training_curves.png, ...")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    stages = ["data", "a", "b", "export", "eval"] if a.stage == "all" else [a.stage]
    for s in stages:
        t0 = time.time()
        log.info("=== stage %s", s)
        {"data": stage_data, "a": stage_a, "b": stage_b, "eval": stage_eval,
         "export": stage_export, "sheet": stage_sheet}[s](a)
        log.info("=== stage %s done in %.0f s", s, time.time() - t0)


if __name__ == "__main__":
    main()
