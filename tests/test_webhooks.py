"""Webhooks against a real HTTP receiver on 127.0.0.1, real sockets and a real SQLite file.

Timings are real: the retry test waits through the default 1-2-4 s backoff.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from webhook_receiver import WebhookReceiver
from whisperd.server.webhooks import Outbox, WebhookDispatcher, WebhookUrlRefused, redact, sign, verify
from whisperd.server.webhooks.sender import _pinned
from whisperd.server.webhooks.urls import address_problem

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
SECRET = "test-secret-\u00e9"  # non-ASCII on purpose: signed as UTF-8
JOB_BODY = json.dumps({"id": "job-1", "status": "JOB_STATUS_DONE", "segments": [{"text": "h\u00e9llo"}]})
LOGGER = "whisperd.server.webhooks"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 50))  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def arrivals(receiver: WebhookReceiver, count: int, timeout: float):
    # wait_for blocks, so it runs off the loop the dispatcher needs.
    return await asyncio.to_thread(receiver.wait_for, count, timeout)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "webhooks.db"


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


# ---------------------------------------------------------------------- delivery


def test_delivery_carries_headers_body_and_a_verifiable_signature(db: Path, receiver: WebhookReceiver) -> None:
    url = receiver.url("/hook?token=abc")

    async def main():
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            await dispatcher.start()
            try:
                delivery = await dispatcher.job_finished("job-1", url, JOB_BODY, "done")
                [got] = await arrivals(receiver, 1, 5)
                await eventually(lambda: not outbox.pending(), 5, "delivered one leaves the outbox")
                return delivery, got, outbox.urls()
            finally:
                await dispatcher.stop()

    delivery, got, registered = run(main())
    assert got.path == "/hook?token=abc"
    assert got.body == JOB_BODY.encode("utf-8")
    h = got.headers
    assert h["content-type"] == "application/json"
    assert h["x-whisperd-event"] == "job.done"
    assert h["x-whisperd-delivery"] == delivery.id
    assert h["x-whisperd-attempt"] == "1"
    assert abs(int(h["x-whisperd-timestamp"]) - time.time()) < 10

    # The helper users copy...
    assert verify(SECRET, h, got.body)
    assert not verify("another secret", h, got.body)
    assert not verify(SECRET, h, got.body + b" ")
    assert not verify(SECRET, h, got.body, now=int(h["x-whisperd-timestamp"]) + 301)
    # ...and an independent computation from the documented recipe.
    message = h["x-whisperd-timestamp"].encode() + b"." + got.body
    expected = "sha256=" + hmac.new(SECRET.encode("utf-8"), message, hashlib.sha256).hexdigest()
    assert h["x-whisperd-signature"] == expected
    assert registered == [url]


def test_without_a_secret_nothing_is_signed(db: Path, receiver: WebhookReceiver) -> None:
    async def main():
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=None, allow_private=True)
            await dispatcher.start()
            try:
                await dispatcher.job_finished("job-2", receiver.url(), JOB_BODY, "failed")
                return await arrivals(receiver, 1, 5)
            finally:
                await dispatcher.stop()

    [got] = run(main())
    assert got.headers["x-whisperd-event"] == "job.failed"
    assert "x-whisperd-signature" not in got.headers
    assert "x-whisperd-timestamp" not in got.headers


def test_failures_then_success_follow_the_default_backoff(db: Path) -> None:
    async def main(receiver: WebhookReceiver):
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            await dispatcher.start()
            try:
                delivery = await dispatcher.job_finished("job-3", receiver.url(), JOB_BODY, "done")
                got = await arrivals(receiver, 4, 1 + 2 + 4 + 5)
                await eventually(lambda: not outbox.pending(), 5, "delivered one leaves the outbox")
                await asyncio.sleep(0.3)
                return delivery, got, receiver.received()
            finally:
                await dispatcher.stop()

    with WebhookReceiver(fail_first=3, failure="status") as receiver:
        delivery, got, later = run(main(receiver))
    assert len(later) == 4, "no attempt after the successful one"
    gaps = [b.at - a.at for a, b in zip(got, got[1:])]
    for gap, want in zip(gaps, (1.0, 2.0, 4.0)):
        assert abs(gap - want) <= 0.5, f"gaps between attempts {gaps}, want about 1, 2, 4 s"
    assert [r.headers["x-whisperd-attempt"] for r in got] == ["1", "2", "3", "4"]
    assert {r.headers["x-whisperd-delivery"] for r in got} == {delivery.id}
    assert all(verify(SECRET, r.headers, r.body) for r in got), "every retry is signed afresh"


def test_always_failing_is_dropped_after_six_attempts_and_logged(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main(receiver: WebhookReceiver, url: str):
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(
                outbox, secret=None, allow_private=True, backoff=(0.1, 0.2, 0.4, 0.8, 1.6)
            )
            await dispatcher.start()
            try:
                delivery = await dispatcher.job_finished("job-4", url, JOB_BODY, "cancelled")
                await arrivals(receiver, 6, 10)
                await eventually(lambda: not outbox.pending(), 5, "given-up delivery leaves the outbox")
                await asyncio.sleep(0.5)  # time enough for a 7th attempt, were there one
                return delivery, receiver.received(), dispatcher.in_flight
            finally:
                await dispatcher.stop()

    # Dropped connections (no answer at all) rather than 500s: the other failure kind.
    with WebhookReceiver(fail_first=1000, failure="drop") as receiver:
        url = f"http://hookuser:hookpass@127.0.0.1:{receiver.port}/hook?token=topsecret"
        delivery, got, in_flight = run(main(receiver, url))
    assert len(got) == 6
    assert got[0].headers["authorization"].startswith("Basic "), "URL credentials are used"
    assert in_flight == 0
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    line = dropped[0].getMessage()
    assert dropped[0].levelno == logging.WARNING
    assert "job.cancelled" in line and "job-4" in line and delivery.id in line
    assert f"127.0.0.1:{receiver.port}/hook" in line
    assert "failed 6 attempts" in line and "last error" in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "topsecret" not in everything and "hookpass" not in everything, "logs leak URL secrets"


def test_a_pending_delivery_survives_a_restart(db: Path) -> None:
    async def first_run(receiver: WebhookReceiver) -> str:
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            await dispatcher.start()
            delivery = await dispatcher.job_finished("job-5", receiver.url(), JOB_BODY, "done")
            await arrivals(receiver, 1, 5)
            await eventually(
                lambda: (outbox.get(delivery.id) or delivery).last_error is not None, 5,
                "the failed attempt is recorded",
            )
            await dispatcher.stop()
            [stored] = outbox.pending()
            assert stored.attempt == 1 and stored.last_error == "HTTP 500"
            return delivery.id

    async def second_run(receiver: WebhookReceiver):
        with Outbox(db) as outbox:  # a new process would open the file like this
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            await dispatcher.start()
            try:
                got = await arrivals(receiver, 2, 5)
                await eventually(lambda: not outbox.pending(), 5, "delivered one leaves the outbox")
                return got
            finally:
                await dispatcher.stop()

    with WebhookReceiver(fail_first=1) as receiver:
        delivery_id = run(first_run(receiver))
        assert len(receiver.received()) == 1, "stop() sends nothing more"
        got = run(second_run(receiver))
    assert [r.headers["x-whisperd-attempt"] for r in got] == ["1", "2"]
    assert [r.headers["x-whisperd-delivery"] for r in got] == [delivery_id, delivery_id]
    assert got[1].body == JOB_BODY.encode()
    assert 0.5 <= got[1].at - got[0].at < 4, "resumed at its scheduled time, about 1 s later"


def test_model_events_reach_every_registered_url_and_the_registry_persists(db: Path) -> None:
    async def register(urls: list[str]) -> None:
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            for url in urls:
                await dispatcher.register_url(url)

    async def announce(a: WebhookReceiver, b: WebhookReceiver):
        with Outbox(db) as outbox:
            registered = outbox.registered()
            dispatcher = WebhookDispatcher(outbox, secret=SECRET, allow_private=True)
            await dispatcher.start()
            try:
                await dispatcher.model_event("model_ready", json.dumps({"state": "ready"}))
                # ModelHost listeners run on other threads.
                thread = threading.Thread(
                    target=dispatcher.model_event_threadsafe,
                    args=("model_unloaded", json.dumps({"state": "unloaded"})),
                )
                thread.start()
                await asyncio.to_thread(thread.join)
                got_a = await arrivals(a, 2, 5)
                got_b = await arrivals(b, 2, 5)
                with pytest.raises(ValueError, match="model_ready"):
                    await dispatcher.model_event("model_exploded", "{}")
                return registered, got_a, got_b
            finally:
                await dispatcher.stop()

    with WebhookReceiver() as a, WebhookReceiver() as b:
        # "localhost" may resolve to ::1 first while the receiver listens on 127.0.0.1.
        url_b = f"http://localhost:{b.port}/b"
        run(register([a.url("/a"), url_b, a.url("/a")]))
        registered, got_a, got_b = run(announce(a, b))
    assert [r.url for r in registered] == [a.url("/a"), url_b]
    assert all(r.first_seen <= r.last_used for r in registered)
    for got in (got_a, got_b):
        events = sorted(r.headers["x-whisperd-event"] for r in got)
        assert events == ["model_ready", "model_unloaded"]
        assert all(verify(SECRET, r.headers, r.body) for r in got)
    assert json.loads(next(r.body for r in got_a if r.headers["x-whisperd-event"] == "model_ready")) == {
        "state": "ready"
    }


def test_job_finished_threadsafe_from_a_worker_thread(db: Path, receiver: WebhookReceiver) -> None:
    async def main():
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=None, allow_private=True)
            await dispatcher.start()
            try:
                thread = threading.Thread(
                    target=dispatcher.job_finished_threadsafe,
                    args=("job-6", receiver.url(), JOB_BODY, "done"),
                )
                thread.start()
                await asyncio.to_thread(thread.join)
                got = await arrivals(receiver, 1, 5)
                with pytest.raises(ValueError, match="done, failed, cancelled"):
                    dispatcher.job_finished_threadsafe("job-7", receiver.url(), JOB_BODY, "running")
                return got, outbox.urls()
            finally:
                await dispatcher.stop()

    [got], urls = run(main())
    assert got.headers["x-whisperd-event"] == "job.done"
    assert urls == [receiver.url()], "a job's URL joins the registry"


def test_a_receiver_that_never_answers_does_not_hold_up_others(db: Path) -> None:
    timeout = 3.0

    async def main(slow: WebhookReceiver, fast: WebhookReceiver):
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=None, allow_private=True, timeout=timeout)
            await dispatcher.start()
            try:
                t0 = time.monotonic()
                stuck = await dispatcher.job_finished("job-slow", slow.url(), JOB_BODY, "done")
                await arrivals(slow, 1, 5)  # the slow one is connected and waiting
                await dispatcher.job_finished("job-fast", fast.url(), JOB_BODY, "done")
                [quick] = await arrivals(fast, 1, 5)
                fast_after = quick.at - t0
                await eventually(
                    lambda: (outbox.get(stuck.id) or stuck).last_error is not None, timeout + 3,
                    "the hung attempt times out",
                )
                error = outbox.get(stuck.id).last_error  # type: ignore[union-attr]
                # The slow receiver answers its second attempt.
                await arrivals(slow, 2, 5)
                await eventually(lambda: not outbox.pending(), 5, "both delivered")
                return fast_after, error
            finally:
                await dispatcher.stop()

    with WebhookReceiver(fail_first=1, failure="hang") as slow, WebhookReceiver() as fast:
        fast_after, error = run(main(slow, fast))
    assert fast_after < 1.0, f"the fast delivery took {fast_after:.2f} s behind a hung one"
    assert error == f"no answer within {timeout:g} s"


def test_private_targets_are_refused_at_delivery_too(
    db: Path, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The address is checked again before each attempt (DNS may change after Submit)."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        with Outbox(db) as outbox:
            dispatcher = WebhookDispatcher(outbox, secret=None, allow_private=False)
            await dispatcher.start()
            try:
                await dispatcher.job_finished("job-8", receiver.url(), JOB_BODY, "done")
                await eventually(lambda: not outbox.pending(), 5, "refused delivery dropped")
            finally:
                await dispatcher.stop()

    run(main())
    assert receiver.received() == []
    assert any("dropped, refused" in r.getMessage() and "loopback" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- URL checks

PRIVATE_URLS = [
    "http://127.0.0.1/hook",
    "http://localhost:8080/hook",
    "http://10.1.2.3/hook",
    "http://192.168.1.20/hook",
    "http://172.16.0.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:9000/hook",
    "http://0.0.0.0/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0x7f000001/hook",  # 127.0.0.1 spelled as one hex number
    "https://100.64.0.1/hook",  # carrier-grade NAT: not private, not public either
]


def check(url: str, *, allow_private: bool, db: Path) -> None:
    async def main() -> None:
        with Outbox(db) as outbox:
            await WebhookDispatcher(outbox, secret=None, allow_private=allow_private).check_url(url)

    run(main())


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_check_url_refuses_private_addresses(url: str, db: Path) -> None:
    with pytest.raises(WebhookUrlRefused, match="set WEBHOOK_ALLOW_PRIVATE=1 to allow it") as caught:
        check(url, allow_private=False, db=db)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_check_url_accepts_private_addresses_when_allowed(url: str, db: Path) -> None:
    check(url, allow_private=True, db=db)


def test_check_url_accepts_public_addresses(db: Path) -> None:
    # IP literals: resolving them sends nothing over the network.
    check("https://93.184.215.14/hook?x=1", allow_private=False, db=db)
    check("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8080/", allow_private=False, db=db)


@pytest.mark.parametrize("url", ["ftp://93.184.215.14/hook", "file:///etc/passwd", "gopher://x/", "93.184.215.14/hook"])
def test_check_url_refuses_other_schemes(url: str, db: Path) -> None:
    for allow_private in (False, True):
        with pytest.raises(WebhookUrlRefused, match="must use http:// or https://"):
            check(url, allow_private=allow_private, db=db)


def test_check_url_refuses_an_unresolvable_host(db: Path) -> None:
    # .invalid is reserved (RFC 6761): it never resolves.
    with pytest.raises(WebhookUrlRefused, match="does not resolve") as caught:
        check("https://no-such-host.invalid/hook?token=topsecret", allow_private=True, db=db)
    assert "no-such-host.invalid" in str(caught.value)
    assert "topsecret" not in str(caught.value)
    assert caught.value.retryable


def test_check_url_message_hides_credentials_and_query(db: Path) -> None:
    with pytest.raises(WebhookUrlRefused) as caught:
        check("http://me:hunter2@10.0.0.5:81/hook?key=sk-123", allow_private=False, db=db)
    message = str(caught.value)
    assert "http://10.0.0.5:81/hook" in message and "private" in message
    assert "hunter2" not in message and "sk-123" not in message


# ---------------------------------------------------------------------- small parts


def test_redact() -> None:
    assert redact("https://u:p@Example.com:8443/a/b?token=x#frag") == "https://example.com:8443/a/b"
    assert redact("http://[::1]:9000/h?x") == "http://[::1]:9000/h"
    assert redact("http://host:notaport/") == "<unparseable URL>"


def test_address_problem_names_the_kind() -> None:
    cases = {
        "127.0.0.1": "loopback", "::1": "loopback", "10.0.0.1": "private", "fd00::1": "private",
        "169.254.169.254": "link-local", "fe80::1": "link-local", "224.0.0.1": "multicast",
        "0.0.0.0": "unspecified", "240.0.0.1": "reserved", "100.64.0.1": "non-public",
        "::ffff:10.0.0.1": "private", "8.8.8.8": None, "2001:4860:4860::8888": None,
    }
    for text, want in cases.items():
        assert address_problem(ipaddress.ip_address(text)) == want, text


def test_pinned_request_keeps_the_host_name_for_host_header_and_tls() -> None:
    target, headers, extensions = _pinned("https://u:p@hooks.example.com:8443/a?x=1", "2001:db8::1")
    assert str(target) == "https://u:p@[2001:db8::1]:8443/a?x=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    target, headers, extensions = _pinned("http://b\u00fccher.example/h", "203.0.113.7")
    assert str(target) == "http://203.0.113.7/h"
    assert headers == {"Host": "xn--bcher-kva.example"}
    assert extensions == {}


def test_sign_and_verify() -> None:
    body = b'{"a": 1}'
    signature = sign("k", 1700000000, body)
    assert signature == "sha256=" + hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    headers = {"x-whisperd-timestamp": "1700000000", "X-WHISPERD-SIGNATURE": signature}
    assert verify("k", headers, body, now=1700000100)
    assert verify("k", headers, body.decode(), now=1700000100), "str bodies are UTF-8"
    assert not verify("k", headers, body, now=1700000301), "outside the 300 s window"
    assert not verify("k", headers, body, tolerance_secs=10, now=1700000100)
    assert not verify("k", {"X-Whisperd-Signature": signature}, body, now=1700000000)
    assert not verify("k", {**headers, "x-whisperd-timestamp": "soon"}, body, now=1700000000)
    assert not verify("k", {**headers, "X-WHISPERD-SIGNATURE": "sha256=\u00e9"}, body, now=1700000000)


def test_outbox_schema_and_persistence(db: Path) -> None:
    with Outbox(db) as outbox:
        d = outbox.add("http://h/x", "job.done", JOB_BODY, job_id="j")
        assert outbox.record_attempt(d.id, 1, d.next_attempt_at + 5)
        assert outbox.reschedule(d.id, d.next_attempt_at + 2, "HTTP 502")
    with Outbox(db) as outbox:
        import sqlite3

        assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1
        assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        [again] = outbox.pending()
        assert (again.id, again.attempt, again.last_error, again.body) == (d.id, 1, "HTTP 502", JOB_BODY)
        assert again.next_attempt_at == pytest.approx(d.next_attempt_at + 2)
        assert outbox.remove(d.id) and not outbox.remove(d.id)
        assert outbox.pending() == []


def test_outbox_refuses_a_newer_schema(db: Path) -> None:
    import sqlite3

    Outbox(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer than this whisperd knows"):
        Outbox(db)


def test_a_delivery_stored_before_start_is_sent_at_start(db: Path, receiver: WebhookReceiver) -> None:
    """A worker may finish a job while the loop is not running yet (or any more)."""
    with Outbox(db) as outbox:
        early = WebhookDispatcher(outbox, secret=None, allow_private=True)
        early.job_finished_threadsafe("job-9", receiver.url(), JOB_BODY, "done")
        assert len(outbox.pending()) == 1

        async def main():
            await early.start()
            try:
                return await arrivals(receiver, 1, 5)
            finally:
                await early.stop()

        [got] = run(main())
    assert got.headers["x-whisperd-event"] == "job.done"
