"""Spend-velocity anomalies (contract: "Anomalies"; docs/anomalies.md): the sampler on a controlled clock over
the real ingest path and the ledger's spend-watch counter."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.guardrails.models import Anomaly, Pause
from tests.billing.guardrails.anomaly_sim import UTC, Sim, steady, watch
from tests.conftest import post_json

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
BASE = "0.1"  # steady spend per minute


def day_cycle(at: datetime) -> Decimal:
    """A working day: quiet at night (0.01/min), busy by day (0.2/min), ramps morning and evening."""
    h = at.hour + at.minute / 60
    night, day = Decimal("0.01"), Decimal("0.2")
    if 9 <= h < 18:
        return day
    if 6 <= h < 9:
        return night + (day - night) * Decimal(str((h - 6) / 3))
    if 18 <= h < 22:
        return day - (day - night) * Decimal(str((h - 18) / 4))
    return night


def burst(sim: Sim, start: datetime, per_minute: Decimal, minutes: int = 2, **extra: Any) -> None:
    sim.run(start, start + timedelta(minutes=minutes), lambda at: per_minute, **extra)


@pytest.mark.ledger
@pytest.mark.django_db
def test_burst_of_100x_after_an_hour_of_steady_traffic_opens_one_anomaly_within_60s_and_pauses(acme, ingest, event):
    # given an hour of steady traffic
    watch(acme, window_minutes=5, factor="5", min_spend="1", action="pause")
    sim = Sim()
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE))
    assert sim.opened == []
    # when 100x the baseline spend arrives for 2 minutes, then steady traffic goes on
    start = T0 + timedelta(hours=1)
    burst(sim, start, Decimal(BASE) * 100)
    sim.run(start + timedelta(minutes=2), start + timedelta(minutes=20), steady(BASE))
    # then exactly one anomaly opened, within 60 s of the burst's start, and the customer is paused
    assert len(sim.opened) == 1
    anomaly = Anomaly.objects.get()
    assert anomaly.opened_at - start <= timedelta(seconds=60)
    assert anomaly.status == "open" and anomaly.action == "pause"
    assert anomaly.window_spend > 5 * anomaly.baseline_rate * 5
    assert Decimal("0.09") <= anomaly.baseline_rate <= Decimal("0.15")  # the steady rate (its last hour's edge)
    assert anomaly.pause is not None and anomaly.pause.source == Pause.Source.ANOMALY
    assert anomaly.pause.reason == "anomaly" and anomaly.pause.scope == "customer" and anomaly.pause.lifted_at is None
    assert sim.refused > 0  # events after the pause were refused
    refused = post_json(ingest, "/api/v1/events", event("after-the-burst"))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "paused"


@pytest.mark.ledger
@pytest.mark.django_db
def test_an_alert_only_anomaly_opens_once_and_pauses_nothing(acme, ingest, event):
    watch(acme, window_minutes=5, factor="5", min_spend="1", action="alert")
    sim = Sim()
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE), every=60)
    start = T0 + timedelta(hours=1)
    burst(sim, start, Decimal(BASE) * 100, minutes=10)  # a long burst: still one anomaly while it is open

    assert len(sim.opened) == 1 and sim.refused == 0
    assert Anomaly.objects.get().pause is None
    assert post_json(ingest, "/api/v1/events", event("goes-on")).status_code == 201


@pytest.mark.ledger
@pytest.mark.django_db
def test_a_daily_cycle_opens_nothing_but_a_burst_on_top_of_it_does(acme):
    """A quiet night then a busy day (20x the night's rate, reached over three hours): nothing opens; the
    detector is live all the same: a burst in the afternoon opens one."""
    watch(acme, window_minutes=10, factor="3", min_spend="0.5", action="alert")
    sim = Sim()
    day_one = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    sim.run(day_one, day_one + timedelta(hours=27), day_cycle, every=120, jitter=0.3)
    assert sim.opened == []
    afternoon = day_one + timedelta(hours=27)
    burst(sim, afternoon, Decimal("0.2") * 100, minutes=2)
    assert len(sim.opened) == 1


@pytest.mark.ledger
@pytest.mark.django_db
@pytest.mark.parametrize(("min_spend", "opened"), [("1", 0), ("0.2", 1)])
def test_a_burst_after_a_quiet_night_opens_nothing_while_min_spend_is_not_met(acme, min_spend, opened):
    """A small customer: the morning's burst is 25x its busiest hour but spends less than min_spend in the window;
    with a lower min_spend the same traffic opens one."""
    watch(acme, window_minutes=10, factor="5", min_spend=min_spend, action="pause")
    sim = Sim()
    evening = datetime(2026, 11, 10, 16, 0, tzinfo=UTC)
    sim.run(evening, evening + timedelta(hours=2), steady("0.002"), every=120)
    sim.run(evening + timedelta(hours=2), evening + timedelta(hours=15), steady("0.0001"), every=120)
    morning = evening + timedelta(hours=15)
    burst(sim, morning, Decimal("0.05"), minutes=10)

    assert len(sim.opened) == opened
    assert Anomaly.objects.count() == opened


@pytest.mark.ledger
@pytest.mark.django_db
def test_nothing_opens_before_an_hour_has_been_measured(acme):
    """Cold start: a new customer's first spend has no baseline to be compared with."""
    watch(acme, window_minutes=5, factor="5", min_spend="1")
    sim = Sim()
    sim.run(T0, T0 + timedelta(minutes=20), steady(BASE))
    burst(sim, T0 + timedelta(minutes=20), Decimal(BASE) * 100)
    assert sim.opened == []


@pytest.mark.ledger
@pytest.mark.django_db
def test_two_samplers_on_the_same_tick_open_one_anomaly(acme):
    watch(acme, window_minutes=5, factor="5", min_spend="1", action="pause")
    sim = Sim()
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE), every=60)
    start = T0 + timedelta(hours=1)
    sim.spend(start, Decimal("20"))
    first = sim.tick(start + timedelta(seconds=10))
    second = sim.tick(start + timedelta(seconds=10))
    assert len(first) == 1 and second == []
    assert Anomaly.objects.count() == 1 and Pause.objects.filter(source="anomaly").count() == 1


# --- the API: review and resolve ----------------------------------------------------------------------

def open_one(customer: Any, action: str = "pause") -> Anomaly:
    """An hour of steady traffic and a burst: one anomaly (paused when ``action`` says so)."""
    watch(customer, window_minutes=5, factor="5", min_spend="1", action=action)
    sim = Sim(customer.external_id)
    sim.run(T0, T0 + timedelta(hours=1), steady(BASE), every=60)
    burst(sim, T0 + timedelta(hours=1), Decimal(BASE) * 100, minutes=1)
    assert len(sim.opened) == 1
    return Anomaly.objects.get(customer=customer)


@pytest.mark.ledger
@pytest.mark.django_db
def test_resolving_with_resume_lifts_the_pause_and_a_later_event_is_accepted(acme, admin, ingest, event):
    anomaly = open_one(acme)
    assert post_json(ingest, "/api/v1/events", event("while-paused")).status_code == 402

    listed = admin.get("/api/v1/anomalies?status=open&customer=acme-co")
    assert listed.status_code == 200
    [row] = listed.json()["data"]
    assert row["id"] == anomaly.public_id and row["status"] == "open" and row["pause"]["active"] is True
    assert Decimal(row["window_spend"]) > Decimal(row["expected_spend"]) * 5

    resolved = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve",
                         {"resolution": "resume", "note": "a customer's planned backfill"})
    assert resolved.status_code == 200, resolved.content
    body = resolved.json()
    assert (body["status"], body["resolution"], body["note"]) == ("resolved", "resume", "a customer's planned backfill")
    assert body["pause"]["active"] is False and body["resolved_by"].startswith("api_key:")
    assert post_json(ingest, "/api/v1/events", event("after-review")).status_code == 201
    assert admin.get("/api/v1/anomalies?status=open").json()["data"] == []
    assert [a["id"] for a in admin.get("/api/v1/anomalies?status=resolved").json()["data"]] == [anomaly.public_id]
    # a retry answers the same; the other resolution is a conflict
    again = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"})
    assert again.status_code == 200 and again.json()["note"] == "a customer's planned backfill"
    other = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve", {"resolution": "keep_paused"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "anomaly_already_resolved"


@pytest.mark.ledger
@pytest.mark.django_db
def test_resolving_with_keep_paused_keeps_the_customer_paused(acme, admin, ingest, event):
    anomaly = open_one(acme)
    resolved = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve",
                         {"resolution": "keep_paused", "note": "runaway agent, customer told"})
    assert resolved.status_code == 200
    assert resolved.json()["pause"]["active"] is True
    refused = post_json(ingest, "/api/v1/events", event("still-paused"))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "paused"


@pytest.mark.ledger
@pytest.mark.django_db
def test_lifting_the_pause_before_any_review_resolves_the_anomaly_as_resume(acme, admin, ingest, event):
    """The operator lifts the anomaly's pause from the pauses API (or the console's pauses page): the anomaly
    leaves the review queue resolved as resume, with who did it, once; resolving it again is a retry."""
    anomaly = open_one(acme)
    assert anomaly.pause is not None
    assert admin.delete(f"/api/v1/customers/acme-co/pauses/{anomaly.pause.pause_id}").status_code == 200
    assert admin.get("/api/v1/anomalies?status=open").json()["data"] == []
    [row] = admin.get("/api/v1/anomalies?status=resolved").json()["data"]
    assert (row["id"], row["resolution"], row["note"]) == (anomaly.public_id, "resume", "Resumed by lifting its pause.")
    assert row["resolved_by"].startswith("api_key:") and row["pause"]["active"] is False
    assert post_json(ingest, "/api/v1/events", event("after-lift")).status_code == 201
    again = post_json(admin, f"/api/v1/anomalies/{anomaly.public_id}/resolve", {"resolution": "resume"})
    assert again.status_code == 200 and again.json()["note"] == "Resumed by lifting its pause."
    from billing.audit.models import AuditEntry

    resolved = AuditEntry.objects.filter(action="anomaly.resolved").values_list("object_type", "object_id")
    assert list(resolved) == [("anomaly", str(anomaly.pk))]


@pytest.mark.django_db
def test_the_anomalies_api_needs_admin_and_an_unrestricted_key_to_resolve(acme, globex, make_client):
    """A read or ingest key gets 403; a key restricted to a customer sees that customer's anomalies only, gets
    404 for another tenant's, and may not resolve its own (the pause is the operator's to lift)."""
    mine = _anomaly_row(acme, "a1")
    theirs = _anomaly_row(globex, "g1")
    for scope in ("read", "ingest"):
        client = make_client(scope)
        assert client.get("/api/v1/anomalies").status_code == 403
        assert post_json(client, f"/api/v1/anomalies/{mine.public_id}/resolve", {"resolution": "resume"}).status_code == 403

    restricted = make_client("admin", customer=acme)
    assert [a["id"] for a in restricted.get("/api/v1/anomalies").json()["data"]] == [mine.public_id]
    assert restricted.get("/api/v1/anomalies?customer=globex").status_code == 404
    assert post_json(restricted, f"/api/v1/anomalies/{theirs.public_id}/resolve",
                     {"resolution": "resume"}).status_code == 404
    assert post_json(restricted, f"/api/v1/anomalies/{mine.public_id}/resolve",
                     {"resolution": "resume"}).status_code == 403

    admin = make_client("admin")
    assert {a["id"] for a in admin.get("/api/v1/anomalies").json()["data"]} == {mine.public_id, theirs.public_id}
    assert [a["id"] for a in admin.get("/api/v1/anomalies?customer=globex").json()["data"]] == [theirs.public_id]
    assert admin.get("/api/v1/anomalies?status=closed").status_code == 422
    assert post_json(admin, "/api/v1/anomalies/anom_nope/resolve", {"resolution": "resume"}).status_code == 404
    bad = post_json(admin, f"/api/v1/anomalies/{mine.public_id}/resolve", {"resolution": "ignore"})
    assert bad.status_code == 422 and "resolution" in bad.json()["error"]["fields"]


def _anomaly_row(customer: Any, key: str) -> Anomaly:
    at = T0
    return Anomaly.objects.create(public_id=f"anom_{key}", idempotency_key=key, customer=customer, currency="USD",
                                  opened_at=at, window_start=at - timedelta(minutes=5), window_end=at,
                                  window_spend=Decimal("50"), baseline_rate=Decimal("0.1"), factor=Decimal("5"),
                                  min_spend=Decimal("1"), window_minutes=5, action="alert")


@pytest.mark.django_db
def test_the_database_keeps_one_open_anomaly_per_customer_and_one_per_key(acme):
    from django.db import IntegrityError, transaction

    _anomaly_row(acme, "k1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Anomaly.objects.create(public_id="anom_other", idempotency_key="k2", customer=acme, currency="USD", opened_at=T0,
                               window_start=T0, window_end=T0, window_spend=1, baseline_rate=1, factor=2, min_spend=0,
                               window_minutes=5, action="alert")


# --- the baseline's arithmetic ------------------------------------------------------------------------

def _hours(rates: dict[datetime, str]) -> list[list[int | str]]:
    return [[int(at.timestamp()), rate] for at, rate in sorted(rates.items())]


def test_a_monday_morning_after_a_quiet_weekend_is_measured_against_last_monday():
    from billing.guardrails.anomalies.baseline import baseline_rate

    monday = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    week: dict[datetime, str] = {}
    for h in range(8 * 24):  # busy 09:00-18:00 on weekdays, 0.001/min otherwise; last Monday 09:00 the busiest
        at = monday.replace(minute=0) - timedelta(hours=h + 1)
        busy = at.weekday() < 5 and 9 <= at.hour < 18
        week[at] = "0.2" if busy else "0.001"
    week[monday.replace(minute=0) - timedelta(days=7)] = "0.3"
    assert baseline_rate(_hours(week), monday) == Decimal("0.3")  # last Monday's 09:00, not Sunday's quiet
    without_last_week = {at: r for at, r in week.items() if at >= monday - timedelta(days=3)}
    assert baseline_rate(_hours(without_last_week), monday) == Decimal("0.1")  # the floor: half Friday's peak


def test_hours_of_a_spike_kept_paused_are_left_out_and_an_accepted_one_lifts_the_baseline():
    from billing.guardrails.anomalies.baseline import HourMark, baseline_rate, hours_record

    now = datetime(2026, 11, 20, 12, 10, tzinfo=UTC)
    hours = _hours({now.replace(minute=0) - timedelta(hours=h): "0.1" for h in range(2, 6)})
    spike_hour = now.replace(minute=0) - timedelta(hours=1)
    hours += _hours({spike_hour: "5"})
    assert baseline_rate(hours, now) == Decimal("5")
    kept = [(spike_hour + timedelta(minutes=20), spike_hour + timedelta(minutes=40))]
    assert baseline_rate(hours, now, excluded=kept) == Decimal("0.1")
    assert baseline_rate(hours, now, excluded=kept, accepted=[Decimal("2")]) == Decimal("2")
    assert baseline_rate([], now) is None  # cold start
    # a sampler that missed two hours gives each the same average rate
    mark = HourMark(datetime(2026, 11, 20, 9, 0, 5, tzinfo=UTC), Decimal("10"))
    recorded, new_mark = hours_record([], mark, datetime(2026, 11, 20, 12, 0, 5, tzinfo=UTC), Decimal("28"))
    assert [r for _, r in recorded] == ["0.100000000000"] * 3 and new_mark.spent == Decimal("28")


@pytest.mark.ledger
@pytest.mark.django_db
def test_the_beat_entry_names_the_sampler_task_and_it_samples_watched_customers_only(acme, globex):
    """The beat's task, run as the worker runs it (real clock): the customer whose terms set anomaly is
    sampled, the one on a plan without them is not."""
    from billing.common.queue import task_named
    from billing.guardrails.models import SpendSample, SpendWatch
    from portal.celery import app
    from tests import factories

    entry = app.conf.beat_schedule["anomalies-sample"]
    assert entry["task"] == "guardrails.anomalies_sample" and entry["schedule"] <= 20
    watch(acme)
    plain = factories.catalog(factories.plan("plain", [{"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}]))
    factories.subscribe(globex, "plain", start=datetime(2026, 1, 1, tzinfo=UTC), catalog_text=plain)
    at = datetime.now(UTC) - timedelta(seconds=30)
    factories.send(factories.event("a-1", at, "250"), factories.event("g-1", at, "250", customer="globex"), now=at)

    assert task_named("guardrails.anomalies_sample").apply().get() == 0
    assert list(SpendWatch.objects.values_list("customer__external_id", "spent")) == [("acme-co", Decimal("2.5"))]
    assert SpendSample.objects.filter(customer=globex).count() == 0
