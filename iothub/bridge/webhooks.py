"""Webhook delivery: takes due rows from the outbox and POSTs them, signed, to their endpoints.

``async with WebhookSender(hub) as sender``: one task claims due deliveries (at most
``webhooks.max_in_flight`` at once per endpoint) and starts an attempt task for each; the store
nudges it (``Hub.outbox_nudge``) when a write queued deliveries, so telemetry costs it nothing, and
it looks anyway every ``webhooks.poll_s``. Nothing here runs on ingest's path: the outbox rows are already on disk.

Each attempt: the address guard (:mod:`iothub.bridge.targets`) resolves and checks the host, then
one POST over the endpoint's own pooled ``httpx.AsyncClient`` (redirects not followed), bounded by
``webhooks.timeout_s`` in total; the first attempt is made as soon as the row is queued. A 2xx
delivers; 410 disables the endpoint; anything else (another status, a timeout, a refused
connection, a refused address) is retried after the next delay of ``webhooks.retry_schedule_s``
(the delays before the first, second ... retry; with jitter), or after ``Retry-After`` on 429 and 503, until the
schedule runs out: then the delivery is dead (``redeliver`` revives it). ``breaker_failures``
failures in a row pause an endpoint for ``breaker_pause_s``; the others go on as before.

The same task deletes what is past retention (``webhooks.retention_days``, ``alerts.retention_days``)
at start and hourly, at most ``PRUNE_LIMIT`` rows per table and pass (passes follow each other
sooner while there is more).

Leaving cancels attempts in flight (their rows are pending again and are sent after a restart),
releases what a claim still in progress returns without attempting it, and records the outcomes
of attempts that ended meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from iothub import __version__
from iothub.bridge.targets import TargetRefused, resolve
from iothub.hub.core import Hub
from iothub.hub.deliveries import Claimed, Deliveries, Outcome, State
from iothub.hub.ingest import now_ms
from iothub.hub.signing import signature_headers

log = logging.getLogger(__name__)
T = TypeVar("T")
CLAIM_LIMIT = 512
SNIPPET_BYTES = 512
DB_BACKOFF_FIRST_S = 0.1
DB_BACKOFF_MAX_S = 5.0
PRUNE_EVERY_S = 3600.0  # how often rows past retention are deleted; sooner while there are many
PRUNE_LIMIT = 1000  # rows per table and pass: a pass holds the database's write lock briefly
DAY_MS = 86_400_000


@dataclass(slots=True)
class Breaker:
    """Failures in a row of one endpoint; past the threshold it is paused until ``paused_until``."""

    failures: int = 0
    paused_until: int = 0

    def record(self, ok: bool, now: int, threshold: int, pause_ms: int) -> bool:
        """Count an attempt; True when this failure tripped the breaker."""
        if ok:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures >= threshold:
            self.paused_until = now + pause_ms
            return True
        return False


class WebhookSender:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings.webhooks
        self._db = Deliveries(hub.settings.data_dir / "iothub.db")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="iothub-webhooks-db")
        self._clients: dict[str, tuple[str, httpx.AsyncClient]] = {}
        self._breakers: dict[str, Breaker] = {}
        self._wakeup = hub.outbox_nudge
        self._stopping = asyncio.Event()
        self._tasks = asyncio.TaskGroup()
        self._attempts: set[asyncio.Task[None]] = set()
        self._attempted = hub.metrics.webhook_attempts
        self._done: list[tuple[Claimed, Outcome, int]] = []  # attempts made, waiting to be recorded
        self._done_added = asyncio.Event()
        self._unexpected_seen: set[str] = set()
        self._prune_at = 0  # epoch ms of the next pruning pass; the first at start
        self._db_backoff_s = 0.0

    async def _in_db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def __aenter__(self) -> WebhookSender:
        await self._in_db(self._db.open)
        await self._tasks.__aenter__()
        self._tasks.create_task(self._run(), name="iothub-webhooks")
        self._tasks.create_task(self._record(), name="iothub-webhooks-log")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        self._wakeup.set()
        self._done_added.set()
        for task in list(self._attempts):
            task.cancel()
        try:
            await self._tasks.__aexit__(None, None, None)
        finally:
            for _, client in self._clients.values():
                await client.aclose()
            if self._done:  # attempts that ended after the last write of their outcomes
                done, self._done = self._done, []
                try:
                    await self._in_db(self._db.finish, done)
                except sqlite3.OperationalError as exc:
                    log.error("could not record %d webhook attempts at shutdown (sent again later): %s", len(done), exc)
            await self._in_db(self._db.close)  # attempts cancelled in flight: their rows are pending again
            self._pool.shutdown(wait=True)

    async def _record(self) -> None:
        """Write the outcomes of finished attempts, as many as there are, in one transaction each time."""
        while not (self._stopping.is_set() and not self._done):
            if not self._done:
                self._done_added.clear()
                await self._done_added.wait()
                continue
            done, self._done = self._done, []
            try:
                await self._in_db(self._db.finish, done)
            except sqlite3.OperationalError as exc:
                if self._stopping.is_set():
                    log.error("could not record %d webhook attempts at shutdown (sent again later): %s", len(done), exc)
                    return
                self._done[:0] = done
                await self._db_failed("record attempts", exc)
                continue
            self._db_backoff_s = 0.0
            self._wakeup.set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            now = now_ms()
            if now >= self._prune_at:
                await self._prune(now)
            paused = frozenset(e for e, b in self._breakers.items() if b.paused_until > now)
            try:
                claimed: list[Claimed] = await self._in_db(
                    self._db.claim, now, self.settings.max_in_flight, CLAIM_LIMIT, paused
                )
            except sqlite3.OperationalError as exc:
                await self._db_failed("claim deliveries", exc)
                continue
            if self._stopping.is_set():  # claimed while the sender was told to stop: not attempted
                await self._release(claimed)
                return
            for delivery in claimed:
                task = self._tasks.create_task(self._attempt(delivery), name=f"iothub-webhook-{delivery.id}")
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            if len(claimed) == CLAIM_LIMIT:
                continue
            try:
                due: int | None = await self._in_db(self._db.next_due)
            except sqlite3.OperationalError as exc:
                await self._db_failed("look for due deliveries", exc)
                continue
            self._db_backoff_s = 0.0
            wait_s = self.settings.poll_s
            if due is not None and due > now:
                wait_s = min(wait_s, (due - now) / 1000)
            if paused:
                wait_s = min(wait_s, max(0.0, (min(self._breakers[e].paused_until for e in paused) - now) / 1000))
            try:
                async with asyncio.timeout(wait_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _prune(self, now: int) -> None:
        """Delete a bounded number of rows past retention (``webhooks.retention_days``,
        ``alerts.retention_days``); again soon when there were more, else in ``PRUNE_EVERY_S``."""
        webhooks_before = now - round(self.settings.retention_days * DAY_MS)
        alerts_before = now - round(self.hub.settings.alerts.retention_days * DAY_MS)
        try:
            most = await self._in_db(self._db.prune, webhooks_before, alerts_before, PRUNE_LIMIT)
        except sqlite3.OperationalError as exc:
            log.warning("webhooks: could not prune old deliveries and alert history: %s", exc)
            most = 0
        again_s = self.settings.poll_s if most >= PRUNE_LIMIT else PRUNE_EVERY_S
        self._prune_at = now + round(again_s * 1000)

    async def _release(self, claimed: list[Claimed]) -> None:
        if not claimed:
            return
        try:
            await self._in_db(self._db.release, claimed)
        except sqlite3.OperationalError as exc:  # closing puts every row still sending back anyway
            log.warning("webhooks: could not release %d claimed deliveries: %s", len(claimed), exc)

    async def _db_failed(self, what: str, exc: sqlite3.OperationalError) -> None:
        """A database call failed (the file locked too long, the disk full): wait longer each time in a
        row, up to ``DB_BACKOFF_MAX_S``, then let the caller try again; stopping ends the wait."""
        self._db_backoff_s = min(max(self._db_backoff_s * 2, DB_BACKOFF_FIRST_S), DB_BACKOFF_MAX_S)
        log.warning("webhooks: could not %s, trying again in %.1f s: %s", what, self._db_backoff_s, exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._db_backoff_s):
                await self._stopping.wait()

    def _client(self, delivery: Claimed) -> httpx.AsyncClient:
        """The endpoint's own client (its connections are reused by its deliveries only)."""
        known = self._clients.get(delivery.endpoint_id)
        if known is not None and known[0] == delivery.url:
            return known[1]
        if known is not None:
            self._tasks.create_task(known[1].aclose())
        limits = httpx.Limits(max_connections=self.settings.max_in_flight, max_keepalive_connections=4)
        client = httpx.AsyncClient(
            timeout=self.settings.timeout_s, follow_redirects=False, trust_env=False, limits=limits
        )
        self._clients[delivery.endpoint_id] = (delivery.url, client)
        return client

    async def _post(self, delivery: Claimed) -> tuple[int, httpx.Headers, str]:
        url = httpx.URL(delivery.url)
        address = await resolve(url, self.settings.allow_private_targets)
        body = delivery.body.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": f"iothub-webhooks/{__version__}",
            "host": url.netloc.decode("ascii"),
            **signature_headers(delivery.msg_id, int(time.time()), body, delivery.secrets),
        }
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request_url = url.copy_with(host=address)
        async with self._client(delivery).stream(
            "POST", request_url, content=body, headers=headers, extensions=extensions
        ) as response:
            snippet = b""
            async for chunk in response.aiter_raw():
                snippet += chunk
                if len(snippet) >= SNIPPET_BYTES:
                    break
            return response.status_code, response.headers, snippet[:SNIPPET_BYTES].decode(errors="replace")

    async def _attempt(self, delivery: Claimed) -> None:
        started = time.perf_counter()
        status: int | None = None
        headers = httpx.Headers()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                status, headers, text = await self._post(delivery)
            outcome = "delivered" if 200 <= status < 300 else "failed"
        except TargetRefused as exc:
            outcome, text = "refused", str(exc)
        except (TimeoutError, httpx.TimeoutException):
            outcome, text = "timeout", f"no answer within {self.settings.timeout_s:g} s"
        except (httpx.HTTPError, OSError) as exc:
            outcome, text = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a fault of ours or of a library must not stop the deliveries
            self._unexpected(delivery, exc)
            outcome, text = "error", f"{type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - started) * 1000
        now = now_ms()
        try:
            result = self._judge(delivery, status, headers, outcome, text, latency_ms, now)
        except Exception as exc:  # judged again without the answer's headers, as an error
            self._unexpected(delivery, exc)
            outcome, text = "error", f"{type(exc).__name__}: {exc}"
            result = self._judge(delivery, None, httpx.Headers(), outcome, text, latency_ms, now)
        self._attempted.labels(outcome).inc()
        self._done.append((delivery, result, now))
        self._done_added.set()
        breaker = self._breakers.setdefault(delivery.endpoint_id, Breaker())
        pause_ms = round(self.settings.breaker_pause_s * 1000)
        if breaker.record(outcome == "delivered", now, self.settings.breaker_failures, pause_ms):
            log.warning(
                "webhook endpoint %s: %d failures in a row, paused for %g s",
                delivery.endpoint_id, breaker.failures, self.settings.breaker_pause_s,
            )  # fmt: skip
        if result.disable is not None:
            log.warning("webhook endpoint %s disabled: %s", delivery.endpoint_id, result.disable)

    def _unexpected(self, delivery: Claimed, exc: Exception) -> None:
        """Log an unexpected failure of an attempt: with its traceback the first time of each kind.
        Logs name the endpoint by its id only: its URL may hold a secret."""
        kind = type(exc).__name__
        if kind in self._unexpected_seen:
            log.debug("webhook endpoint %s: attempt failed unexpectedly: %s", delivery.endpoint_id, kind)
            return
        self._unexpected_seen.add(kind)
        log.error(
            "webhook endpoint %s: attempt failed unexpectedly (counted as an error, retried)",
            delivery.endpoint_id, exc_info=exc,
        )  # fmt: skip

    def _judge(
        self, delivery: Claimed, status: int | None, headers: httpx.Headers, outcome: str, text: str,
        latency_ms: float, now: int,
    ) -> Outcome:  # fmt: skip
        if outcome == "delivered":
            return Outcome(status, latency_ms, outcome, text, State.DELIVERED, now)
        if status == 410:
            reason = "410 Gone: the receiver wants no more deliveries"  # no URL: it may hold a secret
            return Outcome(status, latency_ms, outcome, text, State.PENDING, now, disable=reason)
        retries = delivery.retries  # made before this failed attempt in this schedule: the first is not a retry
        schedule = self.settings.retry_schedule_s
        if retries >= len(schedule):
            return Outcome(status, latency_ms, outcome, text, State.DEAD, now)
        jitter = self.settings.jitter
        delay_s = schedule[retries] * random.uniform(1 - jitter, 1 + jitter)
        if status in (429, 503):
            asked = retry_after_s(headers.get("retry-after"), time.time())
            if asked is not None:
                delay_s = min(asked, self.settings.max_retry_after_s)
        return Outcome(status, latency_ms, outcome, text, State.PENDING, now + round(delay_s * 1000))


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value, re.ASCII):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now_s)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
