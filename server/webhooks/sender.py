"""One delivery attempt: resolve and check the target, sign, POST, judge the answer.

The connection goes to an address that was just checked, with the original host name in
the Host header and as the TLS server name, so the certificate is still verified against
the name. Resolving once for the check and letting the HTTP client resolve again would
let a DNS answer that changes in between (DNS rebinding) reach an internal address.
Redirects are not followed for the same reason: a 3xx is a failed attempt.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from .outbox import Delivery
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from .urls import ResolvedUrl, WebhookUrlRefused, resolve_url

EVENT_HEADER = "X-Whisperd-Event"
DELIVERY_HEADER = "X-Whisperd-Delivery"
ATTEMPT_HEADER = "X-Whisperd-Attempt"
USER_AGENT = "whisperd-webhooks/1"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    error: str | None = None  # what went wrong, for logs and the outbox's last_error
    permanent: bool = False  # retrying cannot help (the target is refused)


def _pinned(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The request URL aimed at `address`, plus the Host header and TLS server name that
    keep it addressed to the original host."""
    original = httpx.URL(url)
    target = original.copy_with(host=address)
    headers = {"Host": original.netloc.decode("ascii")}
    extensions = {}
    if original.scheme == "https":
        extensions["sni_hostname"] = original.raw_host.decode("ascii")
    return target, headers, extensions


class Sender:
    def __init__(self, *, secret: str | None, allow_private: bool, timeout: float) -> None:
        self._secret = secret or None
        self._allow_private = allow_private
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                # Proxy variables would send deliveries around the address check.
                trust_env=False,
                # No pooled connections: a TLS connection opened for one host name must
                # not carry a request for another name that resolves to the same address.
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"User-Agent": USER_AGENT},
            )

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def headers(self, delivery: Delivery, attempt: int, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.id,
            ATTEMPT_HEADER: str(attempt),
        }
        if self._secret is not None:
            # Signed per attempt: a retry hours later still passes the receiver's window.
            timestamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return headers

    async def send(self, delivery: Delivery, attempt: int) -> AttemptResult:
        """One attempt, bounded by the timeout as a whole (resolving included)."""
        if self._client is None:
            raise RuntimeError("Sender.open() must be awaited before send()")
        try:
            async with asyncio.timeout(self._timeout):
                resolved = await resolve_url(
                    delivery.url, allow_private=self._allow_private, timeout=self._timeout
                )
                return await self._post(self._client, resolved, delivery, attempt)
        except WebhookUrlRefused as exc:
            return AttemptResult(False, str(exc), permanent=not exc.retryable)
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult(False, f"no answer within {self._timeout:g} s")

    async def _post(
        self, client: httpx.AsyncClient, resolved: ResolvedUrl, delivery: Delivery, attempt: int
    ) -> AttemptResult:
        body = delivery.body.encode("utf-8")
        common = self.headers(delivery, attempt, body)
        error = "no address to connect to"
        # Every checked address in turn, as a browser would: "localhost" may come back as
        # ::1 first while the receiver listens on 127.0.0.1 only.
        for address in resolved.addresses:
            target, host_header, extensions = _pinned(resolved.url, address)
            try:
                async with client.stream(
                    "POST", target, content=body, headers={**common, **host_header},
                    extensions=extensions,
                ) as response:
                    # The body is not read: a receiver's answer is its status, and a huge
                    # answer must not cost memory.
                    status = response.status_code
            except httpx.ConnectError as exc:
                error = f"cannot connect to {address}: {exc or type(exc).__name__}"
                continue
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as exc:
                return AttemptResult(False, f"{type(exc).__name__}: {exc}")
            if 200 <= status < 300:
                return AttemptResult(True)
            return AttemptResult(False, f"HTTP {status}")
        return AttemptResult(False, error)
