"""Which webhook URLs may be called: http(s) only, and by default only public addresses.

A job's webhook_url is chosen by whoever submits the job, so without a check the server
would POST wherever it is told: to its own admin ports, the cloud metadata service
(169.254.169.254), or hosts on the private network (server-side request forgery). The
check looks at every address the host name resolves to, not at the name's spelling, so
"localhost", "0x7f000001" and names whose DNS points inward are all caught. The sender
runs the same check again before each attempt and connects to the address it checked
(see sender.py), so a DNS answer that changes after Submit cannot get around it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

ALLOW_PRIVATE_HINT = "set WEBHOOK_ALLOW_PRIVATE=1 to allow it"
_SCHEMES = {"http": 80, "https": 443}
_RESOLVE_TIMEOUT_SECS = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlRefused(ValueError):
    """The URL may not be used as a webhook target; the message says why and what to do.

    `retryable` is True when the cause may go away by itself (the name did not resolve
    now); a bad scheme or a private address stays refused.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ResolvedUrl:
    url: str
    host: str
    port: int
    addresses: tuple[str, ...]  # in getaddrinfo's order, without repeats


def redact(url: str) -> str:
    """The URL for logs and messages: scheme, host, port and path only. Query strings and
    user:password@ often carry tokens, and logs are read by more people than secrets are."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def address_problem(address: IPAddress) -> str | None:
    """Why this address is not a public one (a phrase for the message), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1; Python 3.11 does not call it loopback.
        address = address.ipv4_mapped
    # Order matters: 127.0.0.1 and 240.0.0.1 are also "private" to Python, and the
    # narrower word helps more.
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Shared (100.64/10), documentation, benchmarking and other special ranges.
        ("non-public", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return name
    return None


def _parse(url: str) -> tuple[str, int]:
    shown = redact(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"webhook URL {shown!r} cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise WebhookUrlRefused(
            f"webhook URL {shown!r} must use http:// or https://, not {scheme or 'no scheme'}"
        )
    if not host:
        raise WebhookUrlRefused(f"webhook URL {shown!r} has no host name")
    return host, port if port is not None else _SCHEMES[scheme]


async def resolve_url(
    url: str, *, allow_private: bool, timeout: float = _RESOLVE_TIMEOUT_SECS
) -> ResolvedUrl:
    """Check `url` and resolve its host without blocking the loop (the loop's getaddrinfo
    runs in its executor). Raises WebhookUrlRefused with a message for the user."""
    host, port = _parse(url)
    shown = redact(url)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise WebhookUrlRefused(
            f"webhook URL {shown!r}: the host name {host!r} does not resolve ({reason}); "
            "check the spelling, or that this server's DNS can see it",
            retryable=True,
        ) from None
    except TimeoutError:
        raise WebhookUrlRefused(
            f"webhook URL {shown!r}: resolving {host!r} took longer than {timeout:g} s; "
            "check this server's DNS",
            retryable=True,
        ) from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone ("fe80::1%eth0")
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise WebhookUrlRefused(
            f"webhook URL {shown!r}: the host name {host!r} resolved to no address",
            retryable=True,
        )
    if not allow_private:
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem is not None:
                raise WebhookUrlRefused(
                    f"webhook URL {shown!r} resolves to {text}, a {problem} address; webhooks "
                    "to loopback, private, link-local and other non-public addresses are "
                    f"refused so that jobs cannot reach internal services: {ALLOW_PRIVATE_HINT}"
                )
    return ResolvedUrl(url=url, host=host, port=port, addresses=tuple(addresses))
