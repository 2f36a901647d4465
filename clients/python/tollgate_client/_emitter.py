"""The sync client's background senders: ``in_flight`` daemon threads (two by default: one encodes and reads
while the other's batch is at the server) take batches from the store (when a batch is full, when its oldest
event has waited ``flush_interval``, or on flush/close), POST them to the batch endpoint and retry what failed
with the same event_ids until the server has answered for every event."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import httpx

from ._core import (
    EVENTS_BATCH_PATH,
    ErrorCallback,
    Settings,
    backoff_delay,
    encode_batch,
    finalize,
    is_retryable_status,
    json_or_none,
    read_batch_results,
    request_error,
    retry_after_seconds,
)
from ._store import MemoryStore, SpoolStore, open_store
from .errors import EventError

log = logging.getLogger("tollgate_client")


class Stats:
    """Counters since the client started: what was sent, refused, dropped, retried."""

    __slots__ = ("delivered", "dropped", "failed", "lost", "retries")

    def __init__(self) -> None:
        self.delivered = 0  # accepted or duplicate
        self.failed = 0  # refused for good (given to on_error)
        self.dropped = 0  # never queued: the queue was full (overflow "drop", or "block" past block_timeout)
        self.lost = 0  # queued in memory but not delivered when close() gave up
        self.retries = 0  # requests sent again

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def report(on_error: ErrorCallback | None, errors: list[EventError]) -> None:
    """Each refusal to on_error; without one, a warning per answer (not per event: a bad key refuses them all)."""
    if not errors:
        return
    if on_error is None:
        first = errors[0]
        log.warning("tollgate: %d event(s) refused, e.g. %s: %s %s", len(errors), first.event_id, first.code, first.message)
        return
    for error in errors:
        try:
            on_error(error)
        except Exception:
            log.exception("tollgate: on_error raised")


def give_up(store: MemoryStore | SpoolStore, batch: list[tuple[int, dict[str, Any]]], stats: Stats,
            on_error: ErrorCallback | None) -> None:
    """close() gave up on a memory queue: the batch in hand and every event still waiting are lost; each goes
    to on_error (code ``not_delivered``), or one warning says how many when there is no on_error."""
    rest = batch + store.take(store.waiting())
    store.ack([seq for seq, _ in rest])
    stats.lost += len(rest)
    if on_error is None:
        log.warning("tollgate: close() gave up: %d events not delivered", len(rest))
        return
    report(on_error, [EventError(finalize(event), "not_delivered", "close() gave up before the server answered")
                      for _, event in rest])


_LIVE: weakref.WeakSet[Emitter] = weakref.WeakSet()


def _forked() -> None:
    """A forked child has none of its parent's threads: its emitters start their own on the next event."""
    for emitter in list(_LIVE):
        emitter.started = False
        emitter.threads = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Emitter:
    def __init__(self, settings: Settings, http: httpx.Client, on_error: ErrorCallback | None) -> None:
        self.settings = settings
        self.http = http
        self.on_error = on_error
        self.stats = Stats()
        self.store = open_store(settings.spool_path, settings.max_queue, settings.max_spool)
        self.lock = threading.RLock()  # taken directly on the hot path (the Condition's wrapper costs a call)
        self.cond = threading.Condition(self.lock)
        self.abort = threading.Event()
        self.closing = False
        self.flushing = 0  # flush() calls waiting: everything waiting goes out at once
        self.started = False
        self.threads: list[threading.Thread] = []
        _LIVE.add(self)
        if self.store.pending():
            self.ensure_started()  # a spool left by an earlier process: drain it now

    def ensure_started(self) -> None:
        with self.lock:
            if self.closing:
                return
            self.threads = [t for t in self.threads if t.is_alive()]
            while len(self.threads) < self.settings.in_flight:
                thread = threading.Thread(target=self.run, name="tollgate-emitter", daemon=True)
                thread.start()
                self.threads.append(thread)
            self.started = True

    # --- the caller's side ------------------------------------------------------------------------------
    def put(self, event: dict[str, Any]) -> bool:
        with self.lock:
            if self.closing:
                raise RuntimeError("this Tollgate client is closed")
            seq = self.store.put(event)
            if seq is None and self.settings.overflow == "block":
                deadline = None if self.settings.block_timeout is None else time.monotonic() + self.settings.block_timeout
                while seq is None and not self.closing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self.cond.wait(left)
                    seq = self.store.put(event)
            if seq is None:
                self.stats.dropped += 1
                return False
            waiting = self.store.waiting()
            if waiting == 1 or waiting >= self.settings.batch_size:
                self.cond.notify_all()  # a first event starts the senders' flush_interval clock; a full batch goes now
        if not self.started:
            self.ensure_started()  # the first event, or a process forked since (its threads do not follow)
        return True

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything put so far has been answered for; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            target = self.store.last_seq()
            self.flushing += 1
            try:
                self.cond.notify_all()
                if self.store.pending():
                    self.ensure_started()
                while (oldest := self.store.oldest_pending()) is not None and oldest <= target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self.cond.wait(left if left is None else min(left, 1.0))
            finally:
                self.flushing -= 1
        return True

    def close(self, timeout: float) -> None:
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.cond.notify_all()
            threads = list(self.threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            self.abort.set()  # stop retrying: memory events are lost (reported), spooled ones stay on disk
            for thread in threads:
                thread.join(self.settings.timeout + 1)
        with self.cond:
            self.store.close()

    # --- the thread ---------------------------------------------------------------------------------------
    def next_batch(self) -> list[tuple[int, dict[str, Any]]] | None:
        """Block until a batch is due; None when closing with nothing left."""
        s = self.settings
        with self.cond:
            while True:
                waiting = self.store.waiting()
                urgent = self.closing or self.flushing > 0
                if waiting >= s.batch_size or (waiting and (urgent or self.store.oldest_age() >= s.flush_interval)):
                    return self.store.take(s.batch_size)
                if self.closing and not waiting:
                    return None
                wait = s.flush_interval - self.store.oldest_age() if waiting else None
                self.cond.wait(wait if wait is None else max(wait, 0.001))

    def run(self) -> None:
        while True:
            batch: list[tuple[int, dict[str, Any]]] = []
            try:
                found = self.next_batch()
                if found is None:
                    return
                batch = found
                if not self.finish(batch, self.deliver([event for _, event in batch])):
                    return
            except Exception:  # a spool that cannot be read or written: keep trying, slowly
                log.exception("tollgate: the sender failed; retrying in 1 s")
                with self.cond:
                    self.store.untake([seq for seq, _ in batch])
                if self.abort.wait(1.0):
                    return

    def finish(self, batch: list[tuple[int, dict[str, Any]]], finished: bool) -> bool:
        """Forget an answered batch; else (aborted by close()) keep it in the spool, or give it up. False when
        this sender is done."""
        with self.cond:
            if finished:
                self.store.ack([seq for seq, _ in batch])
            elif self.settings.spool_path:
                self.store.untake([seq for seq, _ in batch])  # stays in the spool for the next process
            else:
                give_up(self.store, batch, self.stats, self.on_error)
            self.cond.notify_all()
        return finished

    def count(self, name: str, n: int) -> None:
        with self.lock:  # two senders: += is not atomic
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def deliver(self, events: list[dict[str, Any]]) -> bool:
        """Send until the server has answered for each event; False if aborted by close()."""
        positions = list(range(len(events)))
        attempt = 0
        while True:
            positions, body, invalid = encode_batch(positions, events)
            if invalid:
                self.count("failed", len(invalid))
                report(self.on_error, invalid)
                if not positions:
                    return True
            sending = [events[i] for i in positions]
            retry_after = None
            try:
                response = self.http.post(EVENTS_BATCH_PATH, content=body)
            except Exception as exc:
                log.info("tollgate: batch of %d not sent (%s: %s); retrying", len(sending), type(exc).__name__, exc)
            else:
                status = response.status_code
                if status == 200:
                    outcome = read_batch_results(positions, sending, json_or_none(response))
                    self.count("delivered", len(outcome.done))
                    self.count("failed", len(outcome.errors))
                    report(self.on_error, [error for _, error in outcome.errors])
                    positions = outcome.retry
                    if not positions:
                        return True
                elif is_retryable_status(status):
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                else:  # refused for good (401, 403, 400, 422...): never retried
                    errors = request_error(status, json_or_none(response), sending)
                    self.count("failed", len(errors))
                    report(self.on_error, errors)
                    return True
            self.count("retries", 1)
            if self.abort.wait(backoff_delay(attempt, self.settings, retry_after)):
                return False
            attempt += 1
