"""Paired comparison of the presets of one `hoiguide bench` run, on the scenes every preset
reconstructed: median CD, the error budget, and for each pair how often the row beats the
column (lower CD) and the ratio of their median CDs.

    .venv/bin/python benchmarks/paired.py OUT [--metric cd_cm2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BUDGET = ("shape_cd_cm2", "placement_scale_pct", "placement_rotation_deg",
          "placement_translation_cm")


def load(out: Path) -> dict[str, dict[str, dict]]:
    """{preset: {scene_id: metrics}} of the successful results in a bench folder."""
    res: dict[str, dict[str, dict]] = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.json")):
            r = json.loads(f.read_text())
            if r.get("status") == "ok" and r.get("metrics"):
                res.setdefault(d.name, {})[r["scene_id"]] = r["metrics"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--metric", default="cd_cm2")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = load(a.out)
    if not res:
        print(f"no successful results in {a.out}", file=sys.stderr)
        return 1
    names = list(res)
    common = sorted(set.intersection(*(set(v) for v in res.values())))
    print(f"{len(common)} scenes reconstructed by every preset ({', '.join(names)})\n")
    med = {n: statistics.median(res[n][s][a.metric] for s in common) for n in names}
    print(f"| preset | median {a.metric} | " + " | ".join(f"median {k}" for k in BUDGET) + " |")
    print("|---|" + "---:|" * (1 + len(BUDGET)))
    for n in names:
        b = [statistics.median(res[n][s][k] for s in common) for k in BUDGET]
        print(f"| {n} | {med[n]:.3f} | " + " | ".join(f"{x:.2f}" for x in b) + " |")
    print(f"\nrow beats column (lower {a.metric}) on this many of the {len(common)} scenes; "
          "in brackets the column's median / the row's median")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    table = {}
    for r in names:
        cells = []
        for c in names:
            if r == c:
                cells.append("–")
                continue
            wins = sum(res[r][s][a.metric] < res[c][s][a.metric] for s in common)
            ratio = med[c] / med[r] if med[r] > 0 else float("inf")
            table[f"{r} vs {c}"] = {"wins": wins, "n": len(common), "median_ratio": ratio}
            cells.append(f"{wins} ({ratio:.2f}x)")
        print(f"| {r} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"scenes": common, "median": med, "pairs": table},
                                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
