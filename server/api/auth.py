"""Bearer-token authentication for every RPC but the health check.

With AUTH_TOKEN set, a call must carry `authorization: Bearer <token>`; anything else is
UNAUTHENTICATED before a handler runs. Health stays open so that orchestrators can probe
a server they hold no token for. The token is never logged.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_MESSAGE = "missing or wrong bearer token: send 'authorization: Bearer <token>' (AUTH_TOKEN on the server)"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(_OPEN_PREFIXES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                # The scheme is case-insensitive (RFC 9110 11.1): "bearer" is fine too.
                scheme, _, credentials = text.strip().partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    credentials.strip().encode(), self._expected
                )
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or self._allowed(details):
            return handler
        log.warning("refused %s: no valid bearer token", details.method)
        return _denying(handler)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
    yield  # pragma: no cover - abort raises


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""
    args = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_deny, **args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny, **args)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, **args)
