"""The real REST gateway (bin/whisperd-gateway, built by `make gateway`) in a subprocess on
a free port, for the gateway tests.

It is started with `--listen 127.0.0.1:0` and the port is read from its one startup line,
`whisperd-gateway listening on ADDR -> WHISPERD`. Every line it prints is kept (`log()`,
for assertion messages) and echoed to this process's stderr as `[gateway] ...`, so pytest
shows the lines a failing test provoked under "Captured stderr".
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "bin" / "whisperd-gateway"

# Settings the gateway reads from the environment; the tests pass flags instead, so a value
# in the developer's shell must not leak in.
_GATEWAY_ENV = ("GATEWAY_LISTEN", "WHISPERD_ADDR", "AUTH_TOKEN", "WHISPERD_CA", "GATEWAY_OPENAI_TIMEOUT_SECS")
_READY = re.compile(r"whisperd-gateway listening on (\S+) -> (\S+)")


def gateway_binary() -> Path:
    if not BINARY.is_file() or not os.access(BINARY, os.X_OK):
        raise AssertionError(f"{BINARY} is missing: `make gateway` builds it (`make test` does it first)")
    return BINARY


@dataclass
class GatewayProcess:
    whisperd: str  # HOST:PORT of the gRPC server
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    log_lines: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if k not in _GATEWAY_ENV}
        env.update(self.env)
        cmd = [str(gateway_binary()), "--listen", "127.0.0.1:0", "--whisperd", self.whisperd, *self.args]
        self.log_lines = []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.rstrip()
                self.log_lines.append(line)
                print(f"[gateway :{self.port}] {line}", file=sys.stderr, flush=True)
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.port = int(m.group(1).rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start ({' '.join(cmd)}):\n{self.log()}")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return "\n".join(self.log_lines[-60:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self, peak: bool = False) -> int:
        key = "VmHWM" if peak else "VmRSS"
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} for pid {self.pid}")
