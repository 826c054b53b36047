"""Webhooks: finished jobs and model events POSTed to users' URLs, stored until delivered.

    outbox      pending deliveries and the URL registry (SQLite, DATA_DIR/webhooks.db)
    dispatcher  one task per delivery on the event loop; retries with backoff
    sender      one attempt: resolve, check, sign, POST
    urls        which URLs are allowed (http/https, public addresses unless allowed)
    signing     HMAC-SHA256 signatures; verify() is the receiver's side
"""
from .dispatcher import DEFAULT_BACKOFF, JOB_EVENTS, MODEL_EVENTS, WebhookDispatcher
from .outbox import Delivery, Outbox, RegisteredUrl
from .signing import sign, verify
from .urls import WebhookUrlRefused, redact

__all__ = [
    "DEFAULT_BACKOFF",
    "JOB_EVENTS",
    "MODEL_EVENTS",
    "Delivery",
    "Outbox",
    "RegisteredUrl",
    "WebhookDispatcher",
    "WebhookUrlRefused",
    "redact",
    "sign",
    "verify",
]
