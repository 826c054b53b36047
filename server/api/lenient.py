"""Requests that do not parse become INVALID_ARGUMENT, not INTERNAL or UNKNOWN.

grpcio deserializes a request before any handler runs; when that fails (a corrupt
protobuf, a string field holding bytes that are not UTF-8) it ends the call with
INTERNAL, or UNKNOWN, and logs a traceback, for what is the client's mistake. Here each
method's deserializer is wrapped so that a message that does not parse arrives at the
handler as a `Malformed` value, which the error table maps to INVALID_ARGUMENT with
the parser's reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that did not parse."""

    message_type: str
    reason: str

    def describe(self) -> str:
        return f"the request is not a valid {self.message_type} message: {self.reason}"


class MalformedRequest(ValueError):
    """Raised by handlers that meet a Malformed request; INVALID_ARGUMENT."""


def check(request: Any) -> None:
    """Raise MalformedRequest if `request` is a Malformed stand-in."""
    if isinstance(request, Malformed):
        raise MalformedRequest(request.describe())


def _lenient(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None
    # The generated code passes `SomeMessage.FromString`: its class names the type.
    owner = getattr(parse, "__self__", None)
    name = getattr(owner, "DESCRIPTOR", None)
    type_name = name.full_name if name is not None else "request"

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return Malformed(type_name, str(exc) or type(exc).__name__)

    return parse_or_mark


class _Capture:
    """Stands in for the server while a generated add_*_to_server registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(
    add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
) -> None:
    """Like `add_to_server(servicer, server)` (a generated add_*Servicer_to_server), with
    deserializers that hand malformed requests to the handler instead of failing."""
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {
        name: h._replace(request_deserializer=_lenient(h.request_deserializer))
        for name, h in capture.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)
