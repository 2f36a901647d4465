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
    sim.run(day_one, day_one + timedelta(hours=27), day_cycle, every=60, jitter=0.3)
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
