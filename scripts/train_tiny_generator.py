#!/usr/bin/env python
"""Train the tiny Hunyuan3D-2-architecture generator bundled as ``hoiguide.backbones.tiny()``.

Reproduces ``hoiguide/backbones/weights/tiny/`` (``config.yaml`` + ``model.safetensors``) from a
seed, on a CPU. The model is made of hy3dgen 2.0.2's own classes at a tiny size (Hunyuan3DDiT,
ShapeVAE decoder, DINOv2 ``SingleImageEncoder``), so it loads through the same
``HunyuanBackbone.from_pretrained`` code path as the real Hunyuan3D-2.

Stages (each resumable, intermediate files in ``--work``, default ``/tmp/tiny_work``):

``data``
    Training and validation shapes: every procedural kind (``--proc-train`` / ``--proc-val``
    random instances each) and ``pybullet_data`` ``random_urdfs`` 000-599 (train) and 600-699
    (validation), broken indices skipped. Evaluation objects (``random_urdfs`` 700-999 and the
    named objects) are never touched. Each shape is put in the **generator frame** (its own
    object frame, bounding-box centre at the origin, longest side 1.8 =
    ``hoiguide.synth.generate.GEN_BOX_SIDE``), then gets: 8192 SDF samples (half near the
    surface, half uniform in the decode box; sign by winding number) with the target
    ``clamp(-sdf / 0.1, -1, 1)`` (positive inside, like hy3dgen's occupancy logits), 4096
    surface points (Chamfer) and ``--views`` conditioning images. An image is rendered from a
    random viewpoint (image "up" = the object's -y, as ``hoiguide.synth.cameras.place_camera``
    does: half of the views egocentric-like from above, half from any direction) with a random
    material and lighting (``hoiguide.synth.appearance``); for ``--occluded`` of them a
    rendered ``ProceduralHand`` silhouette is laid over the object first. Then the inference-time
    inpainting observer ``hoiguide.synth.observers.inpaint_object`` (OpenCV Telea on the hand
    region, cut out with the amodal mask, white background, square crop) and hy3dgen's
    ``ImageProcessorV2`` make the exact kind of image the generator sees at inference.

``a``
    Auto-decoding: one learned latent (num_latents x channels) per training shape, initialised
    with std 0.01 and normalised to unit std in the forward pass (noise of std 0.1 added
    during training so the decoder tolerates imperfect samples), jointly with the ShapeVAE
    decoder (post-KL linear, transformer, geometry cross-attention decoder); L1 loss on the
    truncated SDF target. Then the latents of the validation shapes are fitted with the decoder
    frozen (only used for validation curves and as a reconstruction upper bound).

``b``
    Flow matching on the normalised latents with hy3dgen's convention (sigma 0 = noise, 1 =
    data; x_sigma = (1 - sigma) eps + sigma x1; velocity target x1 - eps; the DiT receives
    ``t = sigma``), conditioned on the images through the DINOv2 conditioner trained jointly
    from scratch; 10 % of the conditions are replaced by ``conditioner.unconditional_embedding``
    (all zeros) for classifier-free guidance. EMA of the weights is exported.

``eval``
    Unguided samples (``hoiguide.guidance.sampler.sample`` + ``latent_to_mesh``) for every
    validation shape, Chamfer distance to the true shape in the normalised box, against (a) a
    random training shape and (b) the sample from another shape's image; a contact sheet and
    training curves in ``docs/images/``.

``export``
    ``HunyuanBackbone.save_pretrained`` -> ``hoiguide/backbones/weights/tiny/``.

Usage::

    .venv/bin/python scripts/train_tiny_generator.py --stage all            # everything
    .venv/bin/python scripts/train_tiny_generator.py --stage b --steps-b 7000

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
TRUNC = 0.1                 # SDF truncation (generator units) of the logit target
IMAGE_SIZE = 84             # DINOv2 input and ImageProcessorV2 size (6 x 6 patches of 14 px)
RENDER_SIZE = 128           # rendered view (object fills ~55-85 % of it)
N_SDF = 8192
N_SURF = 4096
LATENTS = (64, 16)          # num_latents x channels


# --------------------------------------------------------------------------------------
# configuration of the model
# --------------------------------------------------------------------------------------


def tiny_generator_config() -> dict[str, Any]:
    """hy3dgen hub-style config of the bundled tiny generator."""
    n_lat, ch = LATENTS
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {"in_channels": ch, "context_in_dim": 96, "hidden_size": 128,
                       "mlp_ratio": 4.0, "num_heads": 4, "depth": 1, "depth_single_blocks": 1,
                       "axes_dim": [32], "theta": 10000, "qkv_bias": True,
                       "guidance_embed": False},
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {"num_latents": n_lat, "embed_dim": ch, "num_freqs": 8,
                       "include_pi": False, "heads": 4, "width": 64, "num_decoder_layers": 1,
                       "qkv_bias": False, "qk_norm": True, "scale_factor": 1.0},
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {"config": {
                    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
                    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 96,
                    "image_size": IMAGE_SIZE, "initializer_range": 0.02,
                    "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 3,
                    "model_type": "dinov2", "num_attention_heads": 3, "num_channels": 3,
                    "num_hidden_layers": 2, "patch_size": 14, "qkv_bias": True,
                    "use_swiglu_ffn": False},
                    "image_size": IMAGE_SIZE},
            }},
        },
        "scheduler": {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": IMAGE_SIZE, "border_ratio": 0.15},
        },
    }


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


def shape_list(seed: int, proc_train: int, proc_val: int) -> list[dict[str, Any]]:
    """All shapes with split and a per-shape seed. Never lists random_urdfs 700-999 or the
    named objects (the evaluation set)."""
    from hoiguide.synth.objects import BROKEN_INDICES, PROCEDURAL_KINDS

    out = []
    for i in range(0, 700):
        if i in BROKEN_INDICES:
            continue
        assert i < 700
        out.append({"name": f"pybullet_{i:03d}", "spec": f"pybullet:{i:03d}",
                    "split": "train" if i < 600 else "val", "seed": [seed, 1, i]})
    for k, kind in enumerate(PROCEDURAL_KINDS):
        for j in range(proc_train + proc_val):
            out.append({"name": f"proc_{kind}_{j:02d}", "spec": f"procedural:{kind}",
                        "split": "train" if j < proc_train else "val",
                        "seed": [seed, 2, k, j]})
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


def _view(obj_metric, tex, rng: np.random.Generator, occlude: bool, bank, proc
          ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Render one conditioning view. Returns (processed 84x84x3 uint8, RGBA crop 128, occluded)."""
    from PIL import Image

    from hoiguide.render import render
    from hoiguide.synth.appearance import random_lighting, shade
    from hoiguide.synth.cameras import look_at
    from hoiguide.synth.observers import inpaint_object
    from hoiguide.types import Camera

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
    from hoiguide.types import Similarity

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
    if hand is None:
        hand = np.zeros_like(mask)
        occluded = False
    else:
        occluded = True
    rgba = inpaint_object(img, hand, mask, dilate_px=2, size=RENDER_SIZE, margin=0.1)
    processed = proc(Image.fromarray(rgba, "RGBA"), to_tensor=False)["image"]
    return np.ascontiguousarray(processed, dtype=np.uint8), rgba, occluded


def _prepare_shape(args: tuple[dict[str, Any], str, int, int, int]) -> str:
    entry, work, n_views, occl_pct, seed = args
    out = Path(work) / "shapes" / f"{entry['name']}.npz"
    if out.is_file():
        return entry["name"]
    torch.set_num_threads(1)
    from hoiguide.geometry import sample_surface, signed_distance
    from hoiguide.synth.appearance import Texture, random_material
    from hoiguide.synth.objects import load_object
    from hoiguide.backbones.hunyuan import import_hy3dgen
    from hoiguide.types import Mesh

    import_hy3dgen()   # hy3dgen imports torchvision: hoiguide supplies the stand-in
    from hy3dgen.shapegen.preprocessors import ImageProcessorV2

    rng = np.random.default_rng(entry["seed"])
    obj = load_object(entry["spec"], rng=rng).to(dtype=torch.float64)
    V = obj.vertices
    lo, hi = V.min(0).values, V.max(0).values
    c = 0.5 * (lo + hi)
    L = float((hi - lo).max())
    obj = Mesh(V - c, obj.faces, None, dict(obj.metadata))      # bbox centre at the origin
    gen = Mesh((V - c) * (GEN_BOX_SIDE / L), obj.faces)          # generator frame
    # SDF samples in the generator frame
    surf = sample_surface(gen, N_SDF // 2 + N_SURF, seed=int(rng.integers(2**31)))
    near = surf[:N_SDF // 2]
    sig = np.where(rng.uniform(size=(len(near), 1)) < 0.5, 0.01, 0.05)
    near = near + rng.normal(size=near.shape) * sig
    uni = rng.uniform(-BOX_V, BOX_V, size=(N_SDF - len(near), 3))
    pts = np.concatenate([near, uni]).astype(np.float64)
    sdf = signed_distance(torch.from_numpy(pts), gen).numpy()
    target = np.clip(-sdf / TRUNC, -1.0, 1.0)
    # conditioning views
    proc = ImageProcessorV2(size=IMAGE_SIZE, border_ratio=0.15)
    bank = hand_bank(seed)
    tex = Texture.of(obj, random_material(rng))
    images, crops, occ = [], [], []
    for v in range(n_views):
        # view 0 of a validation shape is always clean, view 1 always occluded
        if entry["split"] == "val":
            want = v % 2 == 1
        else:
            want = rng.uniform() * 100 < occl_pct
        if v > 0 and entry["split"] == "train" and v % 2 == 0:
            tex = Texture.of(obj, random_material(rng))              # another material
        im, crop, o = _view(obj, tex, rng, want, bank, proc)
        images.append(im)
        crops.append(crop)
        occ.append(o)
    np.savez_compressed(out, points=pts.astype(np.float32), target=target.astype(np.float32),
                        surface=surf[N_SDF // 2:].astype(np.float32),
                        images=np.stack(images), crops=np.stack(crops),
                        occluded=np.array(occ), size_m=np.array(L),
                        watertight=np.array(bool(obj.metadata.get("watertight", True))))
    return entry["name"]


def stage_data(a: argparse.Namespace) -> None:
    from hoiguide.synth.generate import GEN_BOX_SIDE as gbs

    assert gbs == GEN_BOX_SIDE, "generator box side changed in hoiguide.synth.generate"
    work = Path(a.work)
    (work / "shapes").mkdir(parents=True, exist_ok=True)
    shapes = shape_list(a.seed, a.proc_train, a.proc_val)
    if a.limit:
        shapes = shapes[::max(1, len(shapes) // a.limit)][:a.limit]
    jobs = [(s, str(work), a.views if s["split"] == "train" else 2, a.occluded, a.seed)
            for s in shapes]
    t0 = time.time()
    done = 0
    if a.workers > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(a.workers) as pool:
            for _ in pool.imap_unordered(_prepare_shape, jobs, chunksize=4):
                done += 1
                if done % 50 == 0:
                    log.info("data: %d / %d shapes (%.0f s)", done, len(jobs), time.time() - t0)
    else:
        for j in jobs:
            _prepare_shape(j)
            done += 1
            if done % 50 == 0:
                log.info("data: %d / %d shapes (%.0f s)", done, len(jobs), time.time() - t0)
    # pack
    packed: dict[str, Any] = {"names": [], "split": [], "points": [], "target": [],
                              "surface": [], "images": [], "occluded": [], "crops": []}
    for s in shapes:
        z = np.load(work / "shapes" / f"{s['name']}.npz")
        packed["names"].append(s["name"])
        packed["split"].append(s["split"])
        for k in ("points", "target", "surface"):
            packed[k].append(torch.from_numpy(z[k]))
        packed["images"].append(torch.from_numpy(z["images"]))
        packed["occluded"].append(torch.from_numpy(z["occluded"]))
        packed["crops"].append(torch.from_numpy(z["crops"][:1]) if s["split"] == "val"
                               else None)
    for k in ("points", "target", "surface"):
        packed[k] = torch.stack(packed[k])
    torch.save(packed, work / "data.pt")
    n_tr = sum(1 for s in packed["split"] if s == "train")
    occ = torch.cat([o for o, s in zip(packed["occluded"], packed["split"]) if s == "train"])
    info = {"shapes_train": n_tr, "shapes_val": len(shapes) - n_tr,
            "views_train": int(sum(len(i) for i, s in zip(packed["images"], packed["split"])
                                   if s == "train")),
            "occluded_fraction_train": float(occ.float().mean()),
            "seconds": round(time.time() - t0, 1)}
    _update_json(work / "timings.json", {"data": info})
    log.info("data: %s", info)


# --------------------------------------------------------------------------------------
# stage a: auto-decoding
# --------------------------------------------------------------------------------------


def _normalise(lat: torch.Tensor) -> torch.Tensor:
    return lat / lat.flatten(1).std(1).clamp_min(1e-8)[:, None, None]


def _decode(vae: torch.nn.Module, z: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Occupancy logits (positive inside) of latents z (diffusion space) at pts (B, P, 3)."""
    h = vae(z / vae.scale_factor)
    return vae.geo_decoder(queries=pts, latents=h)[..., 0]


def _fit(vae, lat, data_pts, data_tgt, idx_all, steps, lr, batch, pts_per, noise, rng,
         train_decoder: bool, curve: list, tag: str, t_budget: float | None = None) -> None:
    params = [lat] + (list(vae.parameters()) if train_decoder else [])
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=max(0.05, 3.0 / steps),
                                                final_div_factor=20)
    n = len(idx_all)
    t0 = time.time()
    run = 0.0
    P = data_pts.shape[1]
    for step in range(steps):
        b = torch.from_numpy(rng.choice(n, size=min(batch, n), replace=False))
        ii = idx_all[b]
        sel = torch.from_numpy(rng.integers(0, P, size=(len(b), pts_per)))
        pts = torch.gather(data_pts[ii], 1, sel[..., None].expand(-1, -1, 3))
        tgt = torch.gather(data_tgt[ii], 1, sel)
        z = _normalise(lat[b])
        if noise > 0:
            z = z + noise * torch.randn_like(z)
        pred = _decode(vae, z, pts)
        loss = (pred - tgt).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * float(loss) if step else float(loss)
        if step % 50 == 0 or step == steps - 1:
            curve.append({"step": step, "loss": float(loss), "ema_loss": run,
                          "t": round(time.time() - t0, 1)})
            if step % 250 == 0 or step == steps - 1:
                log.info("%s step %d/%d  L1 %.4f (avg %.4f)  %.1f s", tag, step, steps,
                         float(loss), run, time.time() - t0)


@torch.no_grad()
def _recon_metrics(vae, z, pts, tgt) -> dict[str, float]:
    """IoU (sign agreement on the uniform half of the samples) and L1 of reconstructions."""
    ious, l1s = [], []
    for s in range(0, len(z), 32):
        pred = _decode(vae, z[s:s + 32], pts[s:s + 32])
        t = tgt[s:s + 32]
        l1s.append((pred - t).abs().mean(1))
        u = slice(N_SDF // 2, None)
        pi, ti = pred[:, u] > 0, t[:, u] > 0
        inter = (pi & ti).sum(1).float()
        union = (pi | ti).sum(1).float().clamp_min(1)
        ious.append(inter / union)
    return {"iou": float(torch.cat(ious).mean()), "l1": float(torch.cat(l1s).mean())}


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


def _fit_encoder(vae, enc, data_pts, data_tgt, surf, idx_all, steps, lr, batch, pts_per,
                 enc_pts, noise, rng, curve: list) -> None:
    params = list(enc.parameters()) + list(vae.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=max(0.05, 3.0 / steps),
                                                final_div_factor=20)
    n = len(idx_all)
    P, S = data_pts.shape[1], surf.shape[1]
    t0, run = time.time(), 0.0
    for step in range(steps):
        b = torch.from_numpy(rng.choice(n, size=min(batch, n), replace=False))
        ii = idx_all[b]
        sel = torch.from_numpy(rng.integers(0, P, size=(len(b), pts_per)))
        pts = torch.gather(data_pts[ii], 1, sel[..., None].expand(-1, -1, 3))
        tgt = torch.gather(data_tgt[ii], 1, sel)
        es = torch.from_numpy(rng.integers(0, S, size=(len(b), enc_pts)))
        sp = torch.gather(surf[ii], 1, es[..., None].expand(-1, -1, 3))
        z = _normalise(enc(sp))
        if noise > 0:
            z = z + noise * torch.randn_like(z)
        loss = (_decode(vae, z, pts) - tgt).abs().mean()
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


@torch.no_grad()
def _encode_all(enc, surf: torch.Tensor, idx: torch.Tensor, n_pts: int = 2048) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    out = []
    for s in range(0, len(idx), 32):
        ii = idx[s:s + 32]
        sel = torch.stack([torch.randperm(surf.shape[1], generator=g)[:n_pts] for _ in ii])
        sp = torch.gather(surf[ii], 1, sel[..., None].expand(-1, -1, 3))
        out.append(_normalise(enc(sp)))
    return torch.cat(out)


def stage_a_encoder(a: argparse.Namespace) -> None:
    """Stage A with an encoder: latents are a continuous function of the shape (similar shapes,
    similar latents), which the image-conditioned flow can learn; auto-decoded latents were
    not (see docs/tiny-generator.md)."""
    work = Path(a.work)
    data = torch.load(work / "data.pt", weights_only=False)
    cfg = tiny_generator_config()
    split = np.array(data["split"])
    tr = torch.from_numpy(np.nonzero(split == "train")[0])
    va = torch.from_numpy(np.nonzero(split == "val")[0])
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 11])
    vae = _instantiate(cfg["vae"], a.seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed + 5)
        enc = PointEncoder(*LATENTS)
    enc.train()
    curve: list = []
    t0 = time.time()
    pts, tgt, surf = data["points"], data["target"], data["surface"]
    _fit_encoder(vae, enc, pts, tgt, surf, tr, a.steps_a, a.lr_a, 32, 512, 512, a.noise_a,
                 rng, curve)
    t_a = time.time() - t0
    vae.eval(), enc.eval()
    vae.requires_grad_(False)
    enc.requires_grad_(False)
    z_tr = _encode_all(enc, surf, tr)
    z_va = _encode_all(enc, surf, va)
    m_tr = _recon_metrics(vae, z_tr, pts[tr], tgt[tr])
    m_va = _recon_metrics(vae, z_va, pts[va], tgt[va])
    log.info("A: reconstruction train %s, validation (unseen shapes) %s (%.0f s)", m_tr, m_va,
             t_a)
    torch.save({"vae": vae.state_dict(), "encoder": enc.state_dict(), "z_train": z_tr,
                "z_val": z_va, "train_idx": tr, "val_idx": va}, work / "stage_a.pt")
    _update_json(work / "curves.json", {"a": curve, "a_val": []})
    _update_json(work / "timings.json", {"a": {
        "mode": "encoder", "seconds": round(t_a, 1), "steps": a.steps_a,
        "decoder_params": _count(vae), "encoder_params": _count(enc),
        "latent_shape": list(LATENTS), "noise": a.noise_a, "train_recon": m_tr,
        "val_recon": m_va, "final_l1_avg": curve[-1]["ema_loss"]}})


def stage_a(a: argparse.Namespace) -> None:
    work = Path(a.work)
    data = torch.load(work / "data.pt", weights_only=False)
    cfg = tiny_generator_config()
    split = np.array(data["split"])
    tr = torch.from_numpy(np.nonzero(split == "train")[0])
    va = torch.from_numpy(np.nonzero(split == "val")[0])
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 10])
    vae = _instantiate(cfg["vae"], a.seed + 1)
    lat = torch.nn.Parameter(0.01 * torch.randn(len(tr), *LATENTS))
    curve_a: list = []
    t0 = time.time()
    pts, tgt = data["points"], data["target"]
    _fit(vae, lat, pts, tgt, tr, a.steps_a, a.lr_a, 32, 512, 0.1, rng, True, curve_a, "A")
    t_a = time.time() - t0
    vae.eval()
    vae.requires_grad_(False)
    z_tr = _normalise(lat.detach())
    m_tr = _recon_metrics(vae, z_tr, pts[tr], tgt[tr])
    log.info("A: train reconstruction %s (%.0f s)", m_tr, t_a)
    # validation latents, decoder frozen
    t1 = time.time()
    lat_v = torch.nn.Parameter(0.01 * torch.randn(len(va), *LATENTS))
    curve_v: list = []
    _fit(vae, lat_v, pts, tgt, va, a.steps_a_val, a.lr_a, 32, 512, 0.0, rng, False, curve_v,
         "A-val")
    z_va = _normalise(lat_v.detach())
    m_va = _recon_metrics(vae, z_va, pts[va], tgt[va])
    log.info("A: validation reconstruction (frozen decoder) %s", m_va)
    torch.save({"vae": vae.state_dict(), "z_train": z_tr, "z_val": z_va,
                "train_idx": tr, "val_idx": va}, work / "stage_a.pt")
    _update_json(work / "curves.json", {"a": curve_a, "a_val": curve_v})
    _update_json(work / "timings.json", {"a": {
        "seconds": round(t_a, 1), "seconds_val_fit": round(time.time() - t1, 1),
        "steps": a.steps_a, "decoder_params": _count(vae), "latent_shape": list(LATENTS),
        "train_recon": m_tr, "val_recon_frozen_decoder": m_va,
        "final_l1_avg": curve_a[-1]["ema_loss"],
        "latent_std_raw": float(lat.detach().std())}})


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
    cfg = tiny_generator_config()
    tr, va = sa["train_idx"], sa["val_idx"]
    z_tr, z_va = sa["z_train"], sa["z_val"]
    imgs_tr = [data["images"][int(i)] for i in tr]
    imgs_va = [data["images"][int(i)] for i in va]
    ckpt_path = work / "stage_b_ckpt.pt"
    model = _instantiate(cfg["model"], a.seed + 2)
    cond_enc = _instantiate(cfg["conditioner"], a.seed + 3)
    params = list(model.parameters()) + list(cond_enc.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr_b, weight_decay=0.01, betas=(0.9, 0.99))
    ema_model, ema_cond = copy.deepcopy(model), copy.deepcopy(cond_enc)
    for m in (ema_model, ema_cond):
        m.requires_grad_(False)
    gen = torch.Generator().manual_seed(a.seed + 20)
    rng = np.random.default_rng([a.seed, 20])
    start, curve, val_curve, elapsed = 0, [], [], 0.0
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        cond_enc.load_state_dict(ck["cond"])
        ema_model.load_state_dict(ck["ema_model"])
        ema_cond.load_state_dict(ck["ema_cond"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        rng.bit_generator.state = ck["rng"]
        start, curve, val_curve, elapsed = ck["step"], ck["curve"], ck["val_curve"], ck["t"]
        log.info("B: resumed at step %d", start)
    total = a.steps_b
    warm = 300

    def lr_at(s: int) -> float:
        if s < warm:
            return a.lr_b * (s + 1) / warm
        p = (s - warm) / max(1, total - warm)
        return a.lr_b * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    # fixed validation batch (one clean and one occluded view per validation shape)
    vg = torch.Generator().manual_seed(a.seed + 30)
    v_img = torch.stack([imgs_va[i][v] for i in range(len(va)) for v in (0, 1)])
    v_z = torch.stack([z_va[i] for i in range(len(va)) for _ in (0, 1)])
    v_fixed = (torch.randn(v_z.shape, generator=vg), torch.rand(len(v_z), generator=vg))
    v_img_t = _images_to_tensor(v_img)
    # the same for a training subset (how well it fits its own data)
    tsub = np.random.default_rng([a.seed, 31]).choice(len(tr), size=len(v_z), replace=False)
    t_img_t = _images_to_tensor(torch.stack([imgs_tr[i][0] for i in tsub]))
    t_z = z_tr[torch.from_numpy(tsub)]

    @torch.no_grad()
    def val_loss(mdl, enc, img_t, z) -> dict[str, float]:
        mdl.eval(), enc.eval()
        c = enc(image=img_t)["main"]
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
        si = rng.integers(0, len(tr), size=B)
        img = torch.stack([imgs_tr[i][int(rng.integers(len(imgs_tr[i])))] for i in si])
        z1 = z_tr[torch.from_numpy(si)]
        c = cond_enc(image=_images_to_tensor(img))["main"]
        drop = torch.from_numpy(rng.uniform(size=B) < 0.1)
        # classifier-free guidance dropout: exactly the unconditional embedding (zeros)
        c = torch.where(drop[:, None, None], torch.zeros_like(c), c)
        loss = _flow_loss(model, c, z1, gen, t_mode=a.t_sampling)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema, (step + 1) / (step + 10))
        with torch.no_grad():
            for src, dst in ((model, ema_model), (cond_enc, ema_cond)):
                for p, q in zip(src.parameters(), dst.parameters()):
                    q.mul_(d).add_(p.detach(), alpha=1 - d)
        run = float(loss) if run is None else 0.98 * run + 0.02 * float(loss)
        if step % 50 == 0:
            curve.append({"step": step, "loss": float(loss), "ema_loss": run,
                          "lr": lr_at(step), "t": round(time.time() - t0, 1)})
        last = step == total - 1
        if step % 500 == 0 or last:
            vl = val_loss(ema_model, ema_cond, v_img_t, v_z)
            tl = val_loss(ema_model, ema_cond, t_img_t, t_z)
            val_curve.append({"step": step, "val": vl, "train_subset": tl,
                              "t": round(time.time() - t0, 1)})
            log.info("B step %d/%d  loss %.4f (avg %.4f)  val[EMA] cond %.4f uncond %.4f "
                     "shuffled %.4f | train-subset cond %.4f  %.0f s", step, total,
                     float(loss), run, vl["cond"], vl["uncond"], vl["shuffled"], tl["cond"],
                     time.time() - t0)
        if (step + 1) % 1000 == 0 or last:
            torch.save({"model": model.state_dict(), "cond": cond_enc.state_dict(),
                        "ema_model": ema_model.state_dict(), "ema_cond": ema_cond.state_dict(),
                        "opt": opt.state_dict(), "gen": gen.get_state(),
                        "rng": rng.bit_generator.state, "step": step + 1, "curve": curve,
                        "val_curve": val_curve, "t": time.time() - t0},
                       str(ckpt_path) + ".tmp")
            os.replace(str(ckpt_path) + ".tmp", ckpt_path)
    ck = torch.load(ckpt_path, weights_only=False)
    torch.save({"model": ck["ema_model"], "conditioner": ck["ema_cond"], "vae": sa["vae"]},
               work / "stage_b.pt")
    _update_json(work / "curves.json", {"b": ck["curve"], "b_val": ck["val_curve"]})
    _update_json(work / "timings.json", {"b": {
        "seconds": round(ck["t"], 1), "steps": total, "batch": B,
        "dit_params": _count(model), "conditioner_params": _count(cond_enc),
        "final_loss_avg": ck["curve"][-1]["ema_loss"], "final_val": ck["val_curve"][-1]}})


# --------------------------------------------------------------------------------------
# export + eval
# --------------------------------------------------------------------------------------


def build_backbone(work: Path):
    from hoiguide.backbones import HunyuanBackbone

    sd = torch.load(work / "stage_b.pt", weights_only=False)
    bb = HunyuanBackbone.from_config(tiny_generator_config(), seed=0)
    bb.model.load_state_dict(sd["model"])
    bb.conditioner.load_state_dict(sd["conditioner"])
    bb.vae.load_state_dict(sd["vae"])
    return bb


def stage_export(a: argparse.Namespace) -> None:
    work = Path(a.work)
    bb = build_backbone(work)
    tmp = work / "export"
    if tmp.exists():
        shutil.rmtree(tmp)
    folder = bb.save_pretrained(tmp, subfolder=None, variant=None)
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "model.safetensors"):
        shutil.copyfile(folder / name, dest / name)
    sizes = {n: (dest / n).stat().st_size for n in ("config.yaml", "model.safetensors")}
    _update_json(work / "timings.json", {"export": {"bytes": sizes, "dest": str(dest)}})
    log.info("export: wrote %s (%s)", dest, sizes)


def chamfer(a_pts: np.ndarray, b_pts: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean of the two mean nearest-neighbour (L2) distances."""
    from scipy.spatial import cKDTree

    d1 = cKDTree(b_pts).query(a_pts)[0]
    d2 = cKDTree(a_pts).query(b_pts)[0]
    return float(0.5 * (d1.mean() + d2.mean()))


def _cube_rotations() -> np.ndarray:
    """The 24 proper rotations that map the coordinate axes onto each other."""
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            R = np.zeros((3, 3))
            for i, (j, sgn) in enumerate(zip(perm, signs)):
                R[i, j] = sgn
            if np.linalg.det(R) > 0:
                out.append(R)
    return np.stack(out)


_ROTS = _cube_rotations()


def chamfer_axes(a_pts: np.ndarray | None, b_pts: np.ndarray, n: int = 1024) -> float:
    """Chamfer after the best of the 24 axis-permuting rotations of ``a_pts`` (the shape
    right up to which of the object's axes is which: the orientation an image from an
    unknown viewpoint cannot always tell; hoiguide's alignment chain searches rotations)."""
    if a_pts is None:
        return float("nan")
    a_s, b_s = a_pts[:n], b_pts[:n]
    return min(chamfer(a_s @ R.T, b_s) for R in _ROTS)


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
        bb = build_backbone(work)
    tr, va = sa["train_idx"].numpy(), sa["val_idx"].numpy()
    rng = np.random.default_rng([a.seed, 40])
    n = len(va)
    res = a.eval_res
    surf = data["surface"].numpy()

    def mesh_pts(latent: torch.Tensor, seed: int) -> np.ndarray | None:
        m = latent_to_mesh(bb, latent[None], res)
        if m.is_empty:
            return None
        return sample_surface(m.to(dtype=torch.float64), 4096, seed=seed)

    def cd(p: np.ndarray | None, k: int) -> float:
        return chamfer(p, surf[va[k]]) if p is not None else float("nan")

    t0 = time.time()
    rows = []
    perm = (np.arange(n) + 1 + rng.integers(0, n - 1, size=n)) % n   # a different shape
    perm = np.where(perm == np.arange(n), (perm + 1) % n, perm)
    rand_tr = rng.choice(tr, size=n)
    for view in (0, 1):
        imgs = [data["images"][int(i)][view].numpy() for i in va]
        latents = {}
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
            latents[w] = torch.cat(lat)
        pts = {w: [mesh_pts(latents[w][k], k) for k in range(n)] for w in a.cfg}
        for k in range(n):
            row = {"name": data["names"][int(va[k])], "view": view,
                   "occluded": bool(data["occluded"][int(va[k])][view])}
            for w in a.cfg:
                row[f"cd_w{w:g}"] = cd(pts[w][k], k)
                # (b) the sample made from ANOTHER validation shape's image, vs this shape
                row[f"cd_shuffled_w{w:g}"] = cd(pts[w][perm[k]], k)
                row[f"cdaxes_w{w:g}"] = chamfer_axes(pts[w][k], surf[va[k]])
                row[f"cdaxes_shuffled_w{w:g}"] = chamfer_axes(pts[w][perm[k]], surf[va[k]])
            row["cd_random_train"] = chamfer(surf[rand_tr[k]], surf[va[k]])
            row["cdaxes_random_train"] = chamfer_axes(surf[rand_tr[k]], surf[va[k]])
            if view == 0:
                row["cd_stage_a_latent"] = cd(mesh_pts(sa["z_val"][k], k), k)
            rows.append(row)
        log.info("eval view %d done (%.0f s)", view, time.time() - t0)
    summary = _summarise(rows, a.cfg)
    out = {"rows": rows, "summary": summary, "steps": a.eval_steps, "resolution": res,
           "seconds": round(time.time() - t0, 1)}
    with open(work / "eval.json", "w") as f:
        json.dump(out, f, indent=1)
    log.info("eval summary: %s", json.dumps(summary, indent=1))
    _update_json(work / "timings.json", {"eval": {"seconds": out["seconds"]}})
    if a.figures:
        make_figures(a, bb, data, sa)


def _summarise(rows: list[dict[str, Any]], cfgs: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups = {"clean": [r for r in rows if r["view"] == 0],
              "occluded_inpainted": [r for r in rows if r["view"] == 1 and r["occluded"]],
              "all": rows}
    for g, rs in groups.items():
        if not rs:
            continue
        d: dict[str, Any] = {"n": len(rs)}
        keys = sorted({k for r in rs for k in r if k.startswith(("cd_", "cdaxes_"))})
        for k in keys:
            v = np.array([r[k] for r in rs if k in r], float)
            d[k] = {"mean": float(np.nanmean(v)), "median": float(np.nanmedian(v)),
                    "empty": int(np.isnan(v).sum())}
        for w in cfgs:
            a = np.array([r[f"cd_w{w:g}"] for r in rs], float)
            b = np.array([r[f"cd_shuffled_w{w:g}"] for r in rs], float)
            c = np.array([r["cd_random_train"] for r in rs], float)
            ok = ~np.isnan(a) & ~np.isnan(b)
            d[f"w{w:g}_beats_shuffled_frac"] = float((a[ok] < b[ok]).mean())
            ok = ~np.isnan(a)
            d[f"w{w:g}_beats_random_train_frac"] = float((a[ok] < c[ok]).mean())
            ax = np.array([r[f"cdaxes_w{w:g}"] for r in rs], float)
            bx = np.array([r[f"cdaxes_shuffled_w{w:g}"] for r in rs], float)
            ok = ~np.isnan(ax) & ~np.isnan(bx)
            d[f"w{w:g}_axes_beats_shuffled_frac"] = float((ax[ok] < bx[ok]).mean())
        out[g] = d
    return out


def make_figures(a: argparse.Namespace, bb, data, sa) -> None:
    """Training curves and a contact sheet (input image | generated mesh | true shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hoiguide.guidance.sampler import latent_to_mesh, sample

    work = Path(a.work)
    docs = REPO / "docs" / "images"
    docs.mkdir(parents=True, exist_ok=True)
    with open(work / "curves.json") as f:
        curves = json.load(f)
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ca = curves["a"]
    ax[0].plot([c["step"] for c in ca], [c["ema_loss"] for c in ca], label="train shapes")
    cv = curves.get("a_val", [])
    ax[0].plot([c["step"] for c in cv], [c["ema_loss"] for c in cv],
               label="val shapes (decoder frozen)")
    ax[0].set_title(f"stage A ({getattr(a, 'a_mode', 'encoder')}), L1 on truncated SDF")
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
    fig.savefig(docs / "tiny_training_curves.png", dpi=90)
    plt.close(fig)

    # contact sheet: validation shapes, procedural first then pybullet
    va = sa["val_idx"].numpy()
    names = [data["names"][int(i)] for i in va]
    rng = np.random.default_rng([a.seed, 50])
    proc = [k for k, nm in enumerate(names) if nm.startswith("proc_")]
    pyb = [k for k, nm in enumerate(names) if nm.startswith("pybullet_")]
    kinds_seen, pick = set(), []
    for k in proc:
        kind = names[k].split("_")[1]
        if kind not in kinds_seen:
            kinds_seen.add(kind)
            pick.append(k)
    pick = pick[:8] + list(rng.choice(pyb, size=4, replace=False))
    w = a.cfg[0]
    fig, axes = plt.subplots(len(pick), 4, figsize=(8, 2.0 * len(pick)),
                             subplot_kw={})
    for r, k in enumerate(pick):
        i = int(va[k])
        crop = data["crops"][i][0].numpy()
        img = data["images"][i][0].numpy()
        lat = sample(bb, np.ascontiguousarray(img), num_steps=a.eval_steps, guidance_scale=w,
                     seed=k)
        m = latent_to_mesh(bb, lat, a.eval_res)
        occ_img = data["images"][i][1].numpy()
        lat2 = sample(bb, np.ascontiguousarray(occ_img), num_steps=a.eval_steps,
                      guidance_scale=w, seed=k)
        m2 = latent_to_mesh(bb, lat2, a.eval_res)
        axes[r, 0].imshow(crop)
        axes[r, 0].set_title(names[k], fontsize=7)
        axes[r, 1].imshow(_mesh_image(m))
        axes[r, 1].set_title("sample (clean view)", fontsize=7)
        axes[r, 2].imshow(occ_img)
        axes[r, 2].set_title("inpainted view", fontsize=7)
        axes[r, 3].imshow(_mesh_image(m2))
        axes[r, 3].set_title("sample (inpainted)", fontsize=7)
        for c in range(4):
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(docs / "tiny_contact_sheet.png", dpi=80)
    plt.close(fig)
    # truth next to the generated shape for the same rows (object frame, fixed view)
    fig, axes = plt.subplots(2, len(pick), figsize=(1.6 * len(pick), 3.4))
    from hoiguide.types import Mesh

    for c, k in enumerate(pick):
        i = int(va[k])
        z = np.load(Path(a.work) / "shapes" / f"{names[k]}.npz")
        pts = z["surface"]
        img = data["images"][i][0].numpy()
        lat = sample(bb, np.ascontiguousarray(img), num_steps=a.eval_steps, guidance_scale=w,
                     seed=k)
        m = latent_to_mesh(bb, lat, a.eval_res)
        axes[0, c].imshow(_points_image(pts))
        axes[0, c].set_title(names[k].replace("pybullet_", "pb "), fontsize=6)
        axes[1, c].imshow(_mesh_image(m))
        for r in range(2):
            axes[r, c].axis("off")
    axes[0, 0].text(-0.1, 0.5, "true", transform=axes[0, 0].transAxes, rotation=90,
                    va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "sample", transform=axes[1, 0].transAxes, rotation=90,
                    va="center", ha="right")
    fig.tight_layout()
    fig.savefig(docs / "tiny_truth_vs_sample.png", dpi=80)
    plt.close(fig)
    del Mesh


_VIEW_DIR = np.array([0.55, -0.6, -0.58])


def _mesh_image(mesh, size: int = 160) -> np.ndarray:
    """A shaded picture of a generator-frame mesh from a fixed viewpoint (object frame)."""
    from hoiguide.render import render
    from hoiguide.synth.cameras import look_at
    from hoiguide.types import Camera

    img = np.full((size, size, 3), 255, np.uint8)
    if mesh.is_empty:
        return img
    d = _VIEW_DIR / np.linalg.norm(_VIEW_DIR)
    w2c = look_at(d * 4.0, np.zeros(3), up=(0, -1, 0))
    f = 0.5 * size / math.tan(math.radians(17))
    cam = Camera(f, f, size / 2, size / 2, size, size)
    r = render([mesh.to(dtype=torch.float64).transformed(w2c)], cam)
    n = r.normals.numpy()
    hit = r.mesh_id.numpy() >= 0
    light = np.array([0.4, -0.5, -0.75])
    light /= np.linalg.norm(light)
    s = np.clip(n @ light, 0, 1) * 0.75 + 0.25
    col = np.array([0.55, 0.7, 0.9])
    img[hit] = (255 * s[hit, None] * col).astype(np.uint8)
    return img


def _points_image(pts: np.ndarray, size: int = 160) -> np.ndarray:
    """The true shape (surface points splatted with a z-buffer) from the same viewpoint."""
    from hoiguide.synth.cameras import look_at

    d = _VIEW_DIR / np.linalg.norm(_VIEW_DIR)
    w2c = look_at(d * 4.0, np.zeros(3), up=(0, -1, 0))
    q = w2c.apply(torch.from_numpy(pts.astype(np.float64))).numpy()
    f = 0.5 * size / math.tan(math.radians(17))
    u = (f * q[:, 0] / q[:, 2] + size / 2).astype(int)
    v = (f * q[:, 1] / q[:, 2] + size / 2).astype(int)
    img = np.full((size, size, 3), 255, np.uint8)
    order = np.argsort(-q[:, 2])
    zmin, zmax = q[:, 2].min(), q[:, 2].max()
    for j in order:
        if 0 <= u[j] < size - 1 and 0 <= v[j] < size - 1:
            g = int(60 + 150 * (q[j, 2] - zmin) / max(zmax - zmin, 1e-6))
            img[v[j]:v[j] + 2, u[j]:u[j] + 2] = (g, g, min(255, g + 40))
    return img


# --------------------------------------------------------------------------------------


def _update_json(path: Path, entries: dict[str, Any]) -> None:
    d = {}
    if path.is_file():
        with open(path) as f:
            d = json.load(f)
    d.update(entries)
    with open(path, "w") as f:
        json.dump(d, f, indent=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all",
                   choices=["data", "a", "b", "eval", "export", "all"])
    p.add_argument("--work", default="/tmp/tiny_work")
    p.add_argument("--out", default=str(REPO / "hoiguide" / "backbones" / "weights" / "tiny"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads were 7x slower "
                        "from oversubscription)")
    p.add_argument("--workers", type=int, default=2, help="processes for the data stage")
    p.add_argument("--limit", type=int, default=0, help="use only this many shapes (debug)")
    p.add_argument("--proc-train", type=int, default=20)
    p.add_argument("--proc-val", type=int, default=3)
    p.add_argument("--views", type=int, default=4, help="views per training shape")
    p.add_argument("--occluded", type=float, default=40.0, help="%% of views with a hand")
    p.add_argument("--steps-a", type=int, default=3000)
    p.add_argument("--steps-a-val", type=int, default=600,
                   help="autodecode mode: steps fitting the validation latents")
    p.add_argument("--a-mode", choices=["encoder", "autodecode"], default="encoder",
                   help="latents from a point encoder (default) or by auto-decoding")
    p.add_argument("--noise-a", type=float, default=0.15,
                   help="encoder mode: latent noise std during stage A")
    p.add_argument("--t-sampling", choices=["mix", "uniform"], default="mix")
    p.add_argument("--lr-a", type=float, default=1e-3)
    p.add_argument("--steps-b", type=int, default=7000)
    p.add_argument("--batch-b", type=int, default=32)
    p.add_argument("--lr-b", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-steps", type=int, default=30)
    p.add_argument("--eval-res", type=int, default=64)
    p.add_argument("--cfg", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--eval-exported", action="store_true",
                   help="evaluate the exported package weights (through from_pretrained)")
    p.add_argument("--no-figures", dest="figures", action="store_false")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    stages = ["data", "a", "b", "export", "eval"] if a.stage == "all" else [a.stage]
    for s in stages:
        t0 = time.time()
        log.info("=== stage %s", s)
        fa = stage_a_encoder if a.a_mode == "encoder" else stage_a
        {"data": stage_data, "a": fa, "b": stage_b, "eval": stage_eval,
         "export": stage_export}[s](a)
        log.info("=== stage %s done in %.0f s", s, time.time() - t0)


if __name__ == "__main__":
    main()
