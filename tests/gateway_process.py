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
from dataclasses import dataclass, field
from pathlib import Path

from server_process import rss_bytes, spawn, wait_until_ready

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
        self.proc = spawn(cmd, env)
        ready = wait_until_ready(
            self.proc, _READY, timeout, self.log_lines, what="gateway",
            echo=lambda line: print(f"[gateway :{self.port}] {line}", file=sys.stderr, flush=True),
        )
        self.port = int(ready.group(1).rsplit(":", 1)[1])
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
        return rss_bytes(self.pid, peak)
