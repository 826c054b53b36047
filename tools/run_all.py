#!/usr/bin/env python3
"""Run whisperd and the REST gateway together (`make run-all`).

    python tools/run_all.py [--port 50051] [--listen :8080] [-- extra whisperd serve args]

Starts `whisperd serve` and bin/whisperd-gateway pointed at it, passes SIGINT/SIGTERM on
to both, and when either exits stops the other and exits with the first one's status, so
a supervisor (systemd, a container runtime) sees one unit. The gateway connects lazily:
it answers 503 until whisperd is up. Settings otherwise come from the environment as
usual (DATA_DIR, WHISPER_MODEL, AUTH_TOKEN, ... for both).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "bin" / "whisperd-gateway"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "50051")),
                        help="whisperd's gRPC port (PORT, default 50051)")
    parser.add_argument("--listen", default=os.environ.get("GATEWAY_LISTEN", ":8080"),
                        help="the gateway's HTTP address (GATEWAY_LISTEN, default :8080)")
    parser.add_argument("serve_args", nargs="*", help="more `whisperd serve` arguments (after --)")
    args = parser.parse_args(argv)
    if not GATEWAY.exists():
        sys.exit(f"run_all: {GATEWAY.relative_to(ROOT)} is missing: run `make gateway`")

    whisperd = [sys.executable, "-m", "whisperd.cli", "serve", "--port", str(args.port), *args.serve_args]
    gateway = [str(GATEWAY), "--listen", args.listen, "--whisperd", f"localhost:{args.port}"]
    procs = [subprocess.Popen(whisperd, cwd=ROOT), subprocess.Popen(gateway, cwd=ROOT)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    # Wait for the first to exit, then stop the other (SIGTERM: both shut down gracefully).
    while all(p.poll() is None for p in procs):
        time.sleep(0.2)
    first = next(p for p in procs if p.poll() is not None)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    code = first.returncode
    # A child ended by our forwarded signal reports -SIG; a clean stop is 0.
    return 0 if code is not None and code < 0 else (code or 0)


if __name__ == "__main__":
    sys.exit(main())
