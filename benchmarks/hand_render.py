"""Render the procedural hand in a few poses and views to a PNG (for looking at it).

Each row is a pose (open, pinch, fist), each column a view (palm, back, three quarter;
also "thumb side", "pinky side"), shaded from the renderer's normals. Also prints the mesh
size and the build time.

    python benchmarks/hand_render.py [--out docs/images/procedural_hand.png] [--size 240]
        [--side right] [--detail 1] [--projection 0] [--views ...] [--poses ...]
"""

import argparse
import math
import time

import numpy as np
import torch


def poses(hand) -> dict[str, torch.Tensor]:
    """hand_pose (1, 45) for a few named poses."""
    out = {"open": torch.zeros(1, 45)}
    a = torch.zeros(1, 5, 3)
    a[0, 0] = torch.tensor([0.55, 0.45, 0.35])   # thumb
    a[0, 1] = torch.tensor([0.55, 0.55, 0.35])   # index
    a[0, 2:] = torch.tensor([0.25, 0.3, 0.2])
    out["pinch"] = hand.flexion_pose(a)
    out["fist"] = hand.flexion_pose(torch.ones(1, 5, 3))
    return out


def views() -> dict[str, torch.Tensor]:
    """global_orient (1, 3) for a few views (canonical: palm toward the camera)."""
    return {"palm": torch.zeros(1, 3), "back": torch.tensor([[0.0, math.pi, 0.0]]),
            "thumb side": torch.tensor([[0.0, -math.pi / 2, 0.0]]),
            "pinky side": torch.tensor([[0.0, math.pi / 2, 0.0]]),
            "three quarter": torch.tensor([[0.35, -0.85, 0.0]])}


def shade(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Lambert (key light from the upper left of the camera) + a soft fill, skin colour on
    white."""
    n = normals.detach().double().numpy()
    key = np.array([-0.35, -0.55, -0.76])   # toward the light (camera frame, +y down)
    key /= np.linalg.norm(key)
    lam = np.clip(n @ key, 0, 1)
    fill = np.clip(-n[..., 2], 0, 1)
    skin = np.array([0.96, 0.78, 0.66])
    c = skin * (0.18 + 0.62 * lam[..., None] + 0.25 * fill[..., None])
    img = np.where(mask.numpy()[..., None], np.clip(c, 0, 1), 1.0)
    return (img * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/procedural_hand.png")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--side", default="right")
    ap.add_argument("--detail", type=int, default=1)
    ap.add_argument("--projection", type=int, default=0, help="surface_projection steps")
    ap.add_argument("--views", nargs="+", default=["palm", "back", "three quarter"])
    ap.add_argument("--poses", nargs="+", default=["open", "pinch", "fist"])
    args = ap.parse_args()

    from PIL import Image, ImageDraw

    from hoiguide.hands import ProceduralHand
    from hoiguide.render import render
    from hoiguide.types import Camera

    t0 = time.perf_counter()
    hand = ProceduralHand(side=args.side, detail=args.detail,
                          surface_projection=args.projection)
    print(f"built {hand} in {time.perf_counter() - t0:.2f} s")
    cam = Camera.from_fov(30.0, args.size, args.size)
    P, V = poses(hand), views()
    tiles = []
    for pname in args.poses:
        row = []
        for vname in args.views:
            out = hand(global_orient=V[vname], hand_pose=P[pname])
            v = out.vertices[0]
            centre = 0.5 * (v.min(0).values + v.max(0).values)
            transl = torch.tensor([0.0, 0.0, 0.55]) - centre
            out = hand(global_orient=V[vname], hand_pose=P[pname], transl=transl[None])
            r = render(out.mesh(0), cam)
            img = Image.fromarray(shade(r.normals, r.mask))
            ImageDraw.Draw(img).text((6, 6), f"{pname} / {vname}", fill=(60, 60, 60))
            row.append(img)
        tiles.append(row)
    s = args.size
    sheet = Image.new("RGB", (s * len(args.views), s * len(args.poses)), "white")
    for i, row in enumerate(tiles):
        for j, img in enumerate(row):
            sheet.paste(img, (j * s, i * s))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
