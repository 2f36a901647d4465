"""The incremental rollup on PostgreSQL (set-based SQL, billing.usage.rollup_sql) writes exactly the rows
of the Python path it replaced and of the rebuild, for every aggregation, step by step."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection, transaction

from billing.catalog.services import meter_create
from billing.customers.services import project_create
from billing.usage import rollup_sql, rollups
from billing.usage.models import DailyRollup, DimensionSet, HourlyRollup, RollupWatermark, UsageEvent
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
T0 = datetime(2026, 11, 10, 22, 0, tzinfo=timezone.utc)  # two hours before midnight: the events span two days
LATER = T0 + timedelta(days=2)
HOURLY = ("customer_id", "project_id", "project_slot", "meter_id", "dims_key", "hour", "total", "events", "maximum",
          "uniques", "latest_value", "latest_at", "latest_event")
DAILY = ("customer_id", "meter_id", "dims_key", "day", "total", "events", "maximum", "uniques", "latest_value",
         "latest_at", "latest_event")
# sorted by code point, not by a locale: "Zed" < "apple" < "zeta" < "É" < "漢"
AGENTS = ["apple", "Zed", "É", "漢", "zeta"]
TIE = {"probe": "tie"}
DIMS = [{}, {"model": "x"}, {"model": "é ü 漢字", "tier": 'say "hi"'}, {"zz": "1", "a": "line\nbreak"}]


@pytest.fixture(autouse=True)
def _catalog(acme, globex, tokens_meter, calls_meter):
    meter_create(key="peak", name="Peak", aggregation="max")
    meter_create(key="agents", name="Agents", aggregation="unique_count", unique_by="agent_id")
    meter_create(key="gpu_temp", name="GPU temperature", aggregation="latest")
    for customer in (acme, globex):
        project_create(customer=customer, key="chatbot")
        project_create(customer=customer, key="agent")


def ev(event_id: str, minutes: int, quantity: str | None, meter: str, **extra: Any) -> dict:
    return factories.event(event_id, T0 + timedelta(minutes=minutes), quantity, meter, **extra)


def batch(tag: str, n: int, offset: int) -> list[dict]:
    """``n`` events of every meter over four hours (across midnight), both customers, two projects and none,
    four dimension sets, and one non-billable event in eleven."""
    out = []
    for i in range(n):
        k = i + offset
        extra: dict[str, Any] = {"customer": ("acme-co", "globex")[k % 2], "billable": k % 11 != 5}
        if k % 3:
            extra["project"] = ("chatbot", "agent")[k % 3 - 1]
        dims = DIMS[k % len(DIMS)]
        minutes = (k * 37) % 240
        meter = ("llm_tokens", "api_calls", "peak", "agents", "gpu_temp")[k % 5 if k % 7 else (k // 7) % 5]
        if meter == "agents":
            dims = {**dims, "agent_id": AGENTS[(k // 5) % len(AGENTS)]} if k % 4 else dims  # and a few without one
        quantity = None if meter == "api_calls" and k % 2 else f"{(k * 7919) % 1000 + 10}.{k % 4 * 25:02d}"
        out.append(ev(f"{tag}-{i}", minutes, quantity, meter, dimensions=dims, **extra))
    return out


def hourly() -> list[str]:
    return sorted(repr(r) for r in HourlyRollup.objects.values_list(*HOURLY))


def daily() -> list[str]:
    return sorted(repr(r) for r in DailyRollup.objects.values_list(*DAILY))


def sets() -> dict[str, Any]:
    return dict(DimensionSet.objects.values_list("key", "dimensions"))


def history() -> list[int]:
    """Events sent in batches and rolled up in small steps between them (the SQL path): late events (usage
    in hours already rolled up, ids above the watermark), corrections, ties of ``latest`` values on time.
    Returns the watermark after each step."""
    steps = [0]

    def roll(chunk: int) -> None:
        while rollups.rollup_incremental(now=LATER, chunk=chunk):
            steps.append(RollupWatermark.objects.get(name="hourly").last_event_id)

    factories.send(*batch("a", 60, 0), now=T0 + timedelta(hours=5))
    roll(7)
    factories.send(*batch("b", 40, 1000), now=T0 + timedelta(hours=5))  # the same hours again: all late now
    factories.send(ev("fix-1", 0, "-1.5", "llm_tokens", corrects="a-0", customer="acme-co"),
                   ev("fix-2", 0, "-1", "api_calls", corrects="a-1", customer="globex", project="chatbot"),
                   # the same time: the higher id wins
                   ev("tie-1", 30, "50", "gpu_temp", dimensions=TIE), ev("tie-2", 30, "70", "gpu_temp", dimensions=TIE),
                   ev("old-temp", 5, "99", "gpu_temp", dimensions=TIE),  # earlier usage: loses to both
                   ev("max-1", 30, "1000000.5", "peak"), ev("skip", 30, "12345", "peak", billable=False),
                   now=T0 + timedelta(hours=5))
    roll(11)
    factories.send(ev("tie-3", 30, "60", "gpu_temp", dimensions=TIE), ev("late-day", -1400, "3", "llm_tokens"),  # the day before
                   ev("fix-3", 0, "-2", "llm_tokens", corrects="b-0", customer="acme-co"), now=T0 + timedelta(hours=6))
    roll(2)
    factories.send(*batch("c", 30, 2000), now=T0 + timedelta(hours=7))
    roll(50_000)
    return steps


def test_the_sql_incremental_run_writes_the_rows_of_the_python_path_and_of_the_rebuild():
    assert connection.vendor == "postgresql"
    steps = history()
    assert len(steps) > 15 and steps[-1] == rollups.latest_event_id()
    sql_hourly, sql_daily, sql_sets = hourly(), daily(), sets()
    assert rollups.rollup_check() == []
    # every aggregation is there, with more than one value where it can have one
    by_meter = {key: list(HourlyRollup.objects.filter(meter__key=key)) for key in
                ("llm_tokens", "api_calls", "peak", "agents", "gpu_temp")}
    assert all(len(rows) > 5 for rows in by_meter.values())
    assert {tuple(r.uniques) for r in by_meter["agents"]} == {(), *((a,) for a in AGENTS)}
    assert all(r.latest_value is not None for r in by_meter["gpu_temp"])
    assert all(r.latest_value is None for key in ("llm_tokens", "peak") for r in by_meter[key])
    tie = HourlyRollup.objects.get(meter__key="gpu_temp", hour=T0, project_slot=0, dims_key=rollups.dims_key(TIE),
                                   customer__external_id="acme-co")
    assert (tie.latest_value, tie.latest_at) == (60, T0 + timedelta(minutes=30))  # tie-3: the same time, a later id
    assert HourlyRollup.objects.filter(meter__key="peak", maximum=1000000.5).exists()
    assert not HourlyRollup.objects.filter(maximum=12345).exists()  # non-billable
    assert DailyRollup.objects.filter(day=T0 - timedelta(hours=46)).exists()  # the late event of the day before
    assert UsageEvent.objects.filter(billable=False).count() > 5

    # the same steps through the Python path
    HourlyRollup.objects.all().delete()
    DailyRollup.objects.all().delete()
    DimensionSet.objects.all().delete()
    for lo, hi in itertools.pairwise(steps):
        with transaction.atomic():
            rollups._apply(rollups._aggregate(lo, hi))
    assert (hourly(), daily(), sets()) == (sql_hourly, sql_daily, sql_sets)

    # and the rebuild
    rollups.rollup_full(now=LATER)
    assert (hourly(), daily(), sets()) == (sql_hourly, sql_daily, sql_sets)
    assert rollups.rollup_check() == []


def test_the_range_ends_where_the_python_loop_ends_it():
    # ids in insert order, received_at not: a younger batch first, an older one after it
    factories.send(*batch("a", 10, 0), now=T0 + timedelta(hours=5))
    factories.send(*batch("b", 10, 100), now=T0 + timedelta(hours=9))
    factories.send(*batch("c", 10, 200), now=T0 + timedelta(hours=7))
    ids = sorted(UsageEvent.objects.values_list("id", flat=True))
    for lo in (0, ids[3], ids[9], ids[15], ids[-1]):
        for hours in (4, 6, 8, 10):
            for chunk in (1, 4, 10, 50):
                cut = T0 + timedelta(hours=hours)
                assert rollup_sql.range_end(lo=lo, cut=cut, chunk=chunk) == rollups._range_end_python(lo, cut, chunk)
    assert rollup_sql.range_end(lo=0, cut=T0 + timedelta(hours=8), chunk=50) == (ids[9], 10)  # stops at "b"
    assert rollup_sql.range_end(lo=ids[-1], cut=LATER, chunk=50) == (ids[-1], 0)


def test_a_stored_row_with_other_distinct_values_gets_their_union_sorted_by_code_point():
    factories.send(ev("a1", 1, "1", "agents", dimensions={"agent_id": "apple"}), now=T0 + timedelta(hours=1))
    rollups.rollup_until_current(now=LATER)
    # a state no run writes (a set holds one value): the merge still unites, as Agg.merge does
    HourlyRollup.objects.update(uniques=["zeta", "É"])
    DailyRollup.objects.update(uniques=["Zed"])
    factories.send(ev("a2", 2, "1", "agents", dimensions={"agent_id": "apple"}), now=T0 + timedelta(hours=1))
    rollups.rollup_until_current(now=LATER)

    assert HourlyRollup.objects.get().uniques == sorted(["apple", "zeta", "É"]) == ["apple", "zeta", "É"]
    assert DailyRollup.objects.get().uniques == ["Zed", "apple"]
    assert HourlyRollup.objects.get().events == 2
