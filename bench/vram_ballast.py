"""Hold all but --leave-gib of GPU 0's memory until killed: a smaller card for benchmarks."""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leave-gib", type=float, required=True)
    args = ap.parse_args()
    free, total = torch.cuda.mem_get_info()
    hold = free - int(args.leave_gib * 2**30)
    ballast = torch.empty(max(0, hold), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    print(f"holding {ballast.numel() / 2**30:.1f} GiB of {total / 2**30:.1f}; "
          f"{free_after / 2**30:.2f} GiB left free", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
