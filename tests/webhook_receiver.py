"""A real HTTP webhook receiver for tests: stdlib http.server in a thread on 127.0.0.1.

Records each request's arrival (time.monotonic), path, headers and body. It can be told
to fail the next N requests, by HTTP 500 or by dropping the connection without an
answer, or to hang (read the request, never answer) until it is stopped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Failure = Literal["status", "drop", "hang"]


@dataclass(frozen=True, slots=True)
class Received:
    at: float  # time.monotonic() when the body had been read
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class WebhookReceiver:
    def __init__(self, *, fail_first: int = 0, failure: Failure = "status", status: int = 500) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._failures_left = fail_first
        self._failure: Failure = failure
        self._status = status
        self._stopping = threading.Event()
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: stop() waits up to one interval for serve_forever to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, count: int, failure: Failure = "status") -> None:
        with self._lock:
            self._failures_left, self._failure = count, failure

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The first `count` requests, waiting up to `timeout` seconds for them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver got {len(self.requests)} requests within {timeout} s, wanted {count}"
                    )
                self._arrived.wait(left)
            return list(self.requests)

    def _record(self, request: Received) -> Failure | None:
        """Store the request; return how to fail it, or None to answer 200."""
        with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()
            if self._failures_left > 0:
                self._failures_left -= 1
                return self._failure
            return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                failure = receiver._record(
                    Received(
                        at=time.monotonic(),
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
                if failure == "hang":
                    receiver._stopping.wait()
                    return
                if failure == "drop":
                    self.close_connection = True  # closed with no answer at all
                    return
                status = receiver._status if failure == "status" else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        return Handler
