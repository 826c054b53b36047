"""A real whisperd server in a subprocess on a free port, for the service tests."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from whisperd.v1 import model_control_pb2_grpc, transcription_pb2 as pb, transcription_pb2_grpc

CHUNK = 64 * 1024
_READY = re.compile(r"whisperd serving on [\d.]+:(\d+)")


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`cmd` with stdout and stderr as one text pipe, line-buffered, for wait_until_ready."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)


def wait_until_ready(
    proc: subprocess.Popen[str],
    ready: re.Pattern[str],
    timeout: float,
    lines: list[str],
    *,
    what: str,
    echo: Callable[[str], None] | None = None,
) -> re.Match[str]:
    """A reader thread keeps every output line of `proc` in `lines` (and hands it to
    `echo`). Returns the first line's match of `ready`; if the process exits or `timeout`
    passes first, it is killed and RuntimeError shows its command and last lines."""
    found: list[re.Match[str]] = []
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            lines.append(line)
            if echo is not None:
                echo(line)
            m = ready.search(line)
            if m and not seen.is_set():
                found.append(m)
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not seen.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            tail = "\n".join(lines[-80:])
            raise RuntimeError(f"{what} did not start ({' '.join(map(str, proc.args))}):\n{tail}")
    return found[0]


def rss_bytes(pid: int, peak: bool = False) -> int:
    """Resident (or, with peak, the highest resident) memory of a process, from /proc."""
    key = "VmHWM" if peak else "VmRSS"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for pid {pid}")


@dataclass
class ServerProcess:
    data_dir: Path
    model_path: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    use_gpu: bool = False
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    log_lines: list[str] = field(default_factory=list)
    _channel: grpc.Channel | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = dict(os.environ)
        # No metrics port unless a test asks: servers of parallel runs would fight over 9464.
        env.update({"IDLE_TIMEOUT_SECS": "0", "LOG_LEVEL": "INFO", "METRICS_PORT": "0"})
        env.update(self.env)
        cmd = [
            sys.executable, "-m", "whisperd.cli", "serve", "--port", "0", "--host", "127.0.0.1",
            "--data-dir", str(self.data_dir), "--model-path", str(self.model_path),
            *([] if self.use_gpu else ["--cpu"]), *self.args,
        ]
        self.log_lines = []
        self.proc = spawn(cmd, env)
        ready = wait_until_ready(self.proc, _READY, timeout, self.log_lines, what="server")
        self.port = int(ready.group(1))
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    def log(self) -> str:
        return "\n".join(self.log_lines[-80:])

    @property
    def channel(self) -> grpc.Channel:
        assert self._channel is not None
        return self._channel

    @property
    def jobs(self) -> transcription_pb2_grpc.TranscriptionStub:
        return transcription_pb2_grpc.TranscriptionStub(self.channel)

    @property
    def model(self) -> model_control_pb2_grpc.ModelControlStub:
        return model_control_pb2_grpc.ModelControlStub(self.channel)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.wait(10)
        elif self._channel is not None:
            self._channel.close()
            self._channel = None

    def rss_bytes(self, peak: bool = False) -> int:
        return rss_bytes(self.pid, peak)


def submit_requests(
    data: bytes | Iterator[bytes], options: pb.JobOptions | None = None
) -> Iterator[pb.SubmitRequest]:
    yield pb.SubmitRequest(options=options or pb.JobOptions())
    if isinstance(data, bytes):
        for i in range(0, len(data), CHUNK):
            yield pb.SubmitRequest(chunk=data[i : i + CHUNK])
    else:
        for chunk in data:
            yield pb.SubmitRequest(chunk=chunk)


def wait_for_status(server: ServerProcess, job_id: str, statuses: set[int], timeout: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = server.jobs.Get(pb.GetJobRequest(id=job_id))
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {pb.JobStatus.Name(job.status)}:\n{server.log()}")
        time.sleep(0.1)
