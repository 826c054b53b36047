"""Issue table of the batched engine: whisperd beside the peer at each maximum batch size,
from the JSON that bench/batch_bench.py and bench/peer_transformers.py wrote in the same
bench/gpu.sh call, with the goal (whisperd >= 1.5x the peer's best mode) checked.

Usage: python bench/batch_table.py batch.json peer-batch.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

GOAL = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours", type=Path)
    ap.add_argument("peer", type=Path)
    args = ap.parse_args()
    ours = {r["batch"]: r for r in json.loads(args.ours.read_text())}
    peer: dict[int, dict[str, float]] = {}
    for r in json.loads(args.peer.read_text()).get("rows", []):
        peer.setdefault(r["batch_size"], {})[r["mode"]] = r["x_real_time"]
    print(f"| max batch | whisperd x real time | x floor | peer generate / loop | whisperd / best peer | goal {GOAL}x |")
    print("|---|---|---|---|---|---|")
    for b in sorted(ours):
        r = ours[b]
        modes = peer.get(b, {})
        best = max(modes.values(), default=0.0)
        ratio = r["x_real_time"] / best if best else float("nan")
        shown = " / ".join(f"{modes[m]:.1f}" if m in modes else "-" for m in ("generate", "loop"))
        met = "-" if not best else ("yes" if ratio >= GOAL else "no")
        print(f"| {b} | {r['x_real_time']:.1f} | {r['over_floor']:.2f} | {shown} | {ratio:.2f}x | {met} |")


if __name__ == "__main__":
    main()
