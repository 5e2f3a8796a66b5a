"""Benchmark of hoiguide.render: forward + backward of normal, depth and silhouette losses.

A ~20k-face icosphere (20480 faces) filling about half of the image is rendered at 256x256
and 512x512 against targets rendered from a slightly shifted copy; the losses are those
of the guidance loop (1 - cos normal, L1 depth, BCE silhouette) and the backward pass goes
to a translation. Reported: median milliseconds over repeated runs, for the same faces
tensor every call (BVH refit, the hand case) and for a new faces tensor every call (BVH
rebuilt, the iso-surface case). "cpu ms" is the process CPU time per iteration (all threads
together): on a shared, busy machine it is a steadier measure of the work than wall time.

    python benchmarks/render.py [--sizes 256 512] [--repeats 20] [--threads N] [--json PATH]
"""

import argparse
import json
import platform
import statistics
import time

import torch


def icosphere(subdivisions: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return (torch.tensor(s.vertices, dtype=torch.float32),
            torch.tensor(s.faces, dtype=torch.long))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--subdivisions", type=int, default=5, help="icosphere level (5: 20480 faces)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: "
                    "torch's own choice)")
    ap.add_argument("--json", type=str, default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hoiguide.render import render
    from hoiguide.types import Camera, Mesh

    v0, faces = icosphere(args.subdivisions, 0.1)
    v0 = v0 + torch.tensor([0.0, 0.0, 0.5])
    rows = []
    for size in args.sizes:
        cam = Camera.from_fov(30.0, size, size)
        tgt = render(Mesh(v0 + torch.tensor([0.004, -0.002, 0.0]), faces), cam)
        tmask = tgt.mask.float()

        def step(new_topology: bool) -> tuple[float, float]:
            t = torch.zeros(3, requires_grad=True)
            f = faces.clone() if new_topology else faces
            t0 = time.perf_counter()
            out = render(Mesh(v0 + t, f), cam)
            m = out.mask & tgt.mask
            l_normal = (1 - (out.normals * tgt.normals).sum(-1))[m].mean()
            l_depth = (out.depth - tgt.depth).abs()[m].mean()
            sil = out.silhouette[0].clamp(1e-4, 1 - 1e-4)
            l_sil = torch.nn.functional.binary_cross_entropy(sil, tmask)
            loss = l_normal + l_depth + l_sil
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            assert torch.isfinite(t.grad).all()
            return t1 - t0, t2 - t1

        for new_topology in (False, True):
            for _ in range(args.warmup):
                step(new_topology)
            fw, bw, tot, cpu = [], [], [], []
            for _ in range(args.repeats):
                c0 = time.process_time()
                a, b = step(new_topology)
                cpu.append((time.process_time() - c0) * 1e3)
                fw.append(a * 1e3)
                bw.append(b * 1e3)
                tot.append((a + b) * 1e3)
            out = render(Mesh(v0, faces), cam)
            rows.append({"size": size, "faces": int(faces.shape[0]),
                         "bvh": "rebuilt" if new_topology else "refit",
                         "visible_px": int(out.mask.sum()),
                         "forward_ms": statistics.median(fw),
                         "backward_ms": statistics.median(bw),
                         "total_ms": statistics.median(tot),
                         "total_min_ms": min(tot),
                         "cpu_ms": statistics.median(cpu)})

    print(f"hoiguide.render benchmark: torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'size':>6} {'faces':>6} {'bvh':>8} {'vis px':>7} {'fwd ms':>8} {'bwd ms':>8} "
          f"{'total ms':>9} {'min ms':>8} {'cpu ms':>8}")
    for r in rows:
        print(f"{r['size']:>6} {r['faces']:>6} {r['bvh']:>8} {r['visible_px']:>7} "
              f"{r['forward_ms']:>8.1f} {r['backward_ms']:>8.1f} {r['total_ms']:>9.1f} "
              f"{r['total_min_ms']:>8.1f} {r['cpu_ms']:>8.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "repeats": args.repeats, "results": rows}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
