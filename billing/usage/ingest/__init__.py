"""Ingest: the one place usage events are written, as a pipeline read top to bottom in ``events_ingest``:

1. parse (``billing.usage.contract``): decode and validate each event on its own;
2. resolve (``resolve``): customer, meter, project, correction target, for the batch at once;
3. limits (``debit``): the ledger debited for limited events, before they are accepted;
4. store (``store``): one insert; what was not inserted is compared with what is stored.

Exactly once: the database's unique key on (customer, event_id) decides (the key table's primary key,
unique across the event table's monthly partitions), through ``INSERT ... ON CONFLICT DO NOTHING``; every
event that was not inserted is compared with the stored row by fingerprint: same body -> ``duplicate``
(nothing counted twice), another body -> ``conflict`` (409). Concurrent retries of one event therefore
store one row whatever the interleaving. The insert is committed before the caller answers (durable
before any 2xx).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from django.conf import settings
from django.utils import timezone

from billing.common import locks
from billing.common.auth import Principal
from billing.common.errors import CommonCode, DomainError
from billing.guardrails.errors import GuardrailsCode
from billing.guardrails.guards import guard_states, refusal_of
from billing.guardrails.runs import runs_trip
from billing.usage.contract import CleanEvent, clean_event, decode_event, may_hold_nul
from billing.usage.ingest import debit, store
from billing.usage.ingest.resolve import load_lookups, meters_cached, resolve_event
from billing.usage.ingest.rows import ACCEPTED, DUPLICATE, REJECTED, IngestResult, Row, compare, refused_or


def events_ingest(
    *, principal: Principal, raw_events: Sequence[bytes | msgspec.Raw], now: datetime | None = None,
    reservation: Any = None,
) -> list[IngestResult]:
    """Validate and store a batch; one result per input, in order. One bad event never sinks the rest."""
    now = now or timezone.now()
    results: list[IngestResult | None] = [None] * len(raw_events)
    cleaned = _parse(raw_events, now, results)
    # Negative corrections are bounded by what their original has left: those of one original are read,
    # checked and stored one request at a time (they are rare; other batches never wait).
    with locks.one_at_a_time(f"tollgate-corrections:{e.customer}:{e.corrects}" for _, e in cleaned
                             if e.corrects and e.quantity is not None and e.quantity < 0):
        lookups = load_lookups(cleaned)
        batch = _resolve_all(cleaned, principal, lookups, results)
        if batch.late:
            _answer_late(batch.late, results)
        _guard(batch, lookups)
        subscribed = {c.pk for c in lookups.customers.values() if c.subscribed}
        limited = [r for r in batch.rows if r.customer_pk in subscribed and r.refusal is None]
        if batch.rows or reservation is not None:
            inserted, known, retried_refusals = debit.debit_and_store(batch.rows, limited, reservation, now,
                                                                      lookups.subscribed)
            _answer(batch, inserted, known, retried_refusals, results)
    if batch.rows:
        _trip_runs(batch.rows)
    if subscribed and batch.rows:  # soft-limit alerts: a check per customer, after commit (guardrails.alerts)
        from billing.guardrails.alerts import alerts_check_soon

        alerts_check_soon(customer_pks={r.customer_pk for r in batch.rows if r.customer_pk in subscribed})
    return [r for r in results if r is not None]


def _parse(raw_events: Sequence[bytes | msgspec.Raw], now: datetime,
           results: list[IngestResult | None]) -> list[tuple[int, CleanEvent]]:
    """Step 1: each event decoded and validated on its own (a bad one is answered here)."""
    max_future = timedelta(seconds=settings.TOLLGATE_MAX_FUTURE_SECONDS)
    cleaned: list[tuple[int, CleanEvent]] = []
    for index, raw in enumerate(raw_events):
        try:
            event = clean_event(decode_event(raw), now=now, max_future=max_future, nul_possible=may_hold_nul(raw))
        except DomainError as error:
            results[index] = IngestResult(event_id_of(raw), REJECTED, error)
            continue
        cleaned.append((index, event))
    return cleaned


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)  # first sight of each (customer, event_id) in the batch
    repeats: list[Row] = field(default_factory=list)  # the same id again later in the batch: judged with the first
    in_batch: dict[tuple[int, str], Row] = field(default_factory=dict)
    late: list[Row] = field(default_factory=list)  # for a closed period: only a retry of a stored event is answered


def _resolve_all(cleaned: list[tuple[int, CleanEvent]], principal: Principal, lookups: Any,
                 results: list[IngestResult | None]) -> _Batch:
    """Step 2: each event's customer, meter, project and original (an unknown one is answered here)."""
    batch = _Batch()
    for index, event in cleaned:
        try:
            row = resolve_event(event, index, principal, lookups, batch.in_batch)
        except DomainError as error:
            results[index] = IngestResult(event.event_id, REJECTED, error)
            continue
        key = (row.customer_pk, event.event_id)
        if row.late:
            batch.late.append(row)
        elif key in batch.in_batch:
            batch.repeats.append(row)
        else:
            batch.in_batch[key] = row
            batch.rows.append(row)
    return batch


def _guard(batch: _Batch, lookups: Any) -> None:
    """Pauses and stopped runs (the customers' guard states): a covered event is refused before any limit
    is asked (stored as not billable, answered 402); the customers' overrides go to the limits."""
    states = guard_states({c.pk: c.guard_revision for c in lookups.customers.values() if c.guard_revision})
    if not states:
        return
    if lookups.subscribed is not None:
        lookups.subscribed.use_states(states)
    for row in batch.rows:
        state = states.get(row.customer_pk)
        error = refusal_of(state, row.project_pk, row.run_id) if state is not None else None
        if error is not None:
            row.billable, row.reason, row.refusal = False, f"rejected_{error.code}", error


def _trip_runs(rows: list[Row]) -> None:
    """A run whose breaker refused one of its events is tripped (billing.guardrails.runs): from now on the
    guard state refuses its events before the limits are asked."""
    trips = [(r.customer_pk, r.run_id, r.refusal.extra["breaker"]) for r in rows
             if r.refusal is not None and r.refusal.code == GuardrailsCode.CIRCUIT_OPEN and r.refusal.extra
             and "breaker" in r.refusal.extra and "state" not in r.refusal.extra]
    if trips:
        runs_trip(trips)


def _answer_late(late: list[Row], results: list[IngestResult | None]) -> None:
    stored = store.stored_rows(late)
    for row in late:
        key = (row.customer_pk, row.event.event_id)
        results[row.index] = compare(row.event.event_id, stored[key][0], row.fingerprint) if key in stored else (
            IngestResult(row.event.event_id, REJECTED, DomainError(
                CommonCode.PERIOD_CLOSED, f"The billing period holding {row.usage_at.isoformat()} is closed and invoiced; "
                "send a correction dated in the open period instead.", {"timestamp": ["Period closed."]})))


def _answer(batch: _Batch, inserted: set[tuple[int, str]], known: dict[tuple[int, str], tuple[str, bool, str]],
            retried_refusals: bool, results: list[IngestResult | None]) -> None:
    """Step 5: each event's answer from what the database holds for its id now: ours where we inserted,
    the earlier row otherwise (read before the insert for the ids the debit left out, after it for the
    rest); a refused event keeps its 402 unless its id holds another body (409)."""
    known.update(store.stored_rows([r for r in batch.rows if (r.customer_pk, r.event.event_id) not in inserted
                                    and (r.customer_pk, r.event.event_id) not in known]))
    winner: dict[tuple[int, str], str] = {}
    for key, (fp, billable, reason) in known.items():
        winner[key] = fp
        if retried_refusals and not billable and reason.startswith("rejected_") and key in batch.in_batch:
            first = batch.in_batch[key]  # a retry of a refused event stays refused
            first.refusal = debit.refused_before(reason) or first.refusal
    for row in batch.rows:
        key = (row.customer_pk, row.event.event_id)
        if key in inserted:
            winner[key] = row.fingerprint
            results[row.index] = refused_or(row, IngestResult(row.event.event_id, ACCEPTED))
        else:
            results[row.index] = refused_or(row, compare(row.event.event_id, winner.get(key, ""), row.fingerprint))
    for row in batch.repeats:
        key = (row.customer_pk, row.event.event_id)
        row.refusal = batch.in_batch[key].refusal  # the same event again shares the first one's fate
        results[row.index] = refused_or(row, compare(row.event.event_id, winner.get(key, ""), row.fingerprint))


def event_id_of(raw: bytes | msgspec.Raw) -> str | None:
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None


__all__ = ["ACCEPTED", "DUPLICATE", "REJECTED", "IngestResult", "events_ingest", "meters_cached"]
