"""Sum an `ncu --csv --metrics gpu__time_duration.sum` log by kernel: the table of where
GPU time went, largest first.

Usage: python bench/ncu_summary.py ncu.csv [--top 25]
"""
from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path


def short(name: str) -> str:
    """A kernel's name without its template arguments and parameter list."""
    name = re.sub(r"\(.*$", "", name)
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace("void ", "").strip()[:70]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    lines = Path(args.csv).read_text(errors="replace").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        print("no kernel rows in", args.csv)
        print("\n".join(lines[-15:]))
        return
    total: dict[tuple[str, str], float] = defaultdict(float)
    count: dict[tuple[str, str], int] = defaultdict(int)
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "nsecond")
        value = float(row["Metric Value"].replace(",", ""))
        us = value / 1e3 if unit.startswith("n") else value * 1e3 if unit.startswith("m") else value
        key = (short(row["Kernel Name"]), row.get("Grid Size", ""))
        total[key] += us
        count[key] += 1
    grand = sum(total.values())
    print(f"{sum(count.values())} kernels, {grand / 1e3:.2f} ms of GPU time")
    print(f"{'us':>10} {'%':>5} {'n':>5}  kernel [grid]")
    for key, us in sorted(total.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{us:>10.0f} {100 * us / grand:>5.1f} {count[key]:>5}  {key[0]} [{key[1]}]")


if __name__ == "__main__":
    main()
