"""Hourly rollups: incremental from a watermark, harmless to rerun or crash, equal to a recomputation."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.catalog.services import meter_create
from billing.common.auth import Principal
from billing.usage import rollups
from billing.usage.models import DailyRollup, DimensionSet, HourlyRollup, RollupWatermark
from tests import factories

pytestmark = pytest.mark.django_db
ADMIN = Principal(scopes=frozenset({"admin"}))
T0 = datetime(2026, 11, 10, 10, 0, tzinfo=timezone.utc)
LATER = T0 + timedelta(days=1)  # "now" for the rollup: every event is older than the lag


def send(*events: dict, now: datetime = T0 + timedelta(hours=6)) -> None:
    factories.send(*events, now=now)


def ev(event_id: str, minutes: int, quantity: str, meter: str = "llm_tokens", **extra: Any) -> dict:
    return factories.event(event_id, T0 + timedelta(minutes=minutes), quantity, meter, **extra)


@pytest.fixture(autouse=True)
def _catalog(acme, tokens_meter):
    meter_create(key="agents", name="Agents", aggregation="unique_count", unique_by="agent_id")
    meter_create(key="gpu_temp", name="GPU temperature", aggregation="latest")


def test_rollup_aggregates_per_hour_and_dimension_set():
    send(ev("a", 5, "10", dimensions={"model": "x"}), ev("b", 50, "0.5", dimensions={"model": "x"}),
         ev("c", 70, "7", dimensions={"model": "x"}), ev("d", 6, "1", dimensions={"model": "y"}),
         ev("u1", 1, "1", meter="agents", dimensions={"agent_id": "p"}),
         ev("u2", 2, "1", meter="agents", dimensions={"agent_id": "p"}),
         ev("skip", 3, "99", billable=False),
         ev("t1", 40, "71", meter="gpu_temp"), ev("t2", 20, "65", meter="gpu_temp"))

    assert rollups.rollup_until_current(now=LATER) == 9

    x10 = HourlyRollup.objects.get(hour=T0, dims_key=rollups.dims_key({"model": "x"}))
    assert (x10.total, x10.events, x10.maximum) == (Decimal("10.5"), 2, Decimal(10))
    assert x10.latest_value is None  # only a `latest` meter needs its latest value (and keeps it)
    temp = HourlyRollup.objects.get(meter__key="gpu_temp")
    assert (temp.latest_value, temp.latest_at) == (Decimal(71), T0 + timedelta(minutes=40))  # by time, not arrival
    assert HourlyRollup.objects.get(hour=T0 + timedelta(hours=1)).total == 7
    agents = HourlyRollup.objects.get(meter__key="agents")
    assert agents.uniques == ["p"] and agents.events == 2
    assert not HourlyRollup.objects.filter(total=99).exists()
    assert rollups.rollup_check() == []


def test_incremental_runs_add_up_and_a_rerun_is_harmless():
    send(ev("a", 5, "10"))
    rollups.rollup_until_current(now=LATER)
    send(ev("b", 6, "5"), ev("fix", 7, "-3", corrects="a"))

    rollups.rollup_until_current(now=LATER)
    rollups.rollup_until_current(now=LATER)

    assert HourlyRollup.objects.get().total == 12
    assert rollups.rollup_check() == []


def test_events_younger_than_the_lag_wait_for_the_next_run():
    send(ev("a", 5, "10"), now=LATER)

    assert rollups.rollup_until_current(now=LATER + timedelta(seconds=5)) == 0
    assert rollups.rollup_until_current(now=LATER + timedelta(minutes=5)) == 1


def test_a_crash_inside_the_transaction_leaves_nothing_and_the_rerun_catches_up(monkeypatch):
    send(ev("a", 5, "10"), ev("b", 65, "4"))
    real_apply = rollups._apply_range

    def crash(lo: int, hi: int) -> None:
        real_apply(lo, hi)
        raise RuntimeError("worker died mid-way")

    monkeypatch.setattr(rollups, "_apply_range", crash)
    with pytest.raises(RuntimeError):
        rollups.rollup_incremental(now=LATER)
    assert not HourlyRollup.objects.exists()
    assert not RollupWatermark.objects.filter(last_event_id__gt=0).exists()

    monkeypatch.setattr(rollups, "_apply_range", real_apply)
    rollups.rollup_until_current(now=LATER)
    assert sorted(r.total for r in HourlyRollup.objects.all()) == [4, 10]
    assert rollups.rollup_check() == []


def test_check_reports_drift_and_full_rebuild_repairs_it():
    send(ev("a", 5, "10"))
    rollups.rollup_until_current(now=LATER)
    HourlyRollup.objects.update(total=Decimal(11))

    drift = rollups.rollup_check()
    with pytest.raises(CommandError):
        call_command("rollup", "--check", stdout=StringIO())
    rollups.rollup_full(now=LATER)

    assert drift and "total" in drift[0]
    assert rollups.rollup_check() == []
    out = StringIO()
    call_command("rollup", "--check", stdout=out)
    assert "match" in out.getvalue()


batches = st.lists(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 10**6), st.sampled_from(["x", "y"])),
                            min_size=1, max_size=8), min_size=1, max_size=5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=batches)
def test_any_sequence_of_ingest_and_rollup_equals_a_recomputation(data):
    HourlyRollup.objects.all().delete()
    DailyRollup.objects.all().delete()
    RollupWatermark.objects.all().delete()
    tag = uuid.uuid4().hex[:10]
    for b, batch in enumerate(data):
        send(*[ev(f"{tag}-{b}-{i}", minutes, str(q), dimensions={"model": m}) for i, (minutes, q, m) in enumerate(batch)])
        rollups.rollup_incremental(now=LATER, chunk=3)
    rollups.rollup_until_current(now=LATER)

    assert rollups.rollup_check() == []


windows = st.tuples(st.integers(-30, 400), st.integers(1, 500))
events_strategy = st.lists(st.tuples(st.integers(0, 360), st.integers(1, 1000), st.sampled_from(["x", "y"]),
                                     st.sampled_from(["llm_tokens", "agents"])), min_size=1, max_size=25)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, split=st.integers(0, 25), window=windows,
       granularity=st.sampled_from(["hour", "day"]), group=st.sampled_from([(), ("model",), ("project",)]))
def test_usage_from_rollups_and_tail_equals_usage_from_raw_events(acme, events, split, window, granularity, group):
    from billing.usage.models import UsageEvent
    from billing.usage.selectors import usage_aggregate

    HourlyRollup.objects.all().delete()
    DailyRollup.objects.all().delete()
    RollupWatermark.objects.all().delete()
    tag = uuid.uuid4().hex[:10]
    bodies = [ev(f"{tag}-{i}", minutes, str(q), meter=m, dimensions={"model": model, "agent_id": model + str(q % 3)})
              for i, (minutes, q, model, m) in enumerate(events)]
    send(*bodies[:split]) if bodies[:split] else None
    rollups.rollup_until_current(now=LATER)
    send(*bodies[split:]) if bodies[split:] else None  # the tail, not rolled up
    start = T0 + timedelta(minutes=window[0])
    end = start + timedelta(minutes=window[1])

    with_rollups = usage_aggregate(customer=acme, start=start, end=end, granularity=granularity, group_by=group)
    RollupWatermark.objects.update(last_event_id=0)  # forces the raw-only path
    raw_only = usage_aggregate(customer=acme, start=start, end=end, granularity=granularity, group_by=group)

    assert with_rollups == raw_only
    assert UsageEvent.objects.exists()


def test_usage_by_dimension_with_a_lost_dimension_set_is_a_503_never_usage_without_dimensions(admin):
    from billing.usage import selectors

    send(ev("a", 5, "10", dimensions={"model": "x"}), ev("b", 6, "5", dimensions={"model": "y"}))
    rollups.rollup_until_current(now=LATER)
    url = "/api/v1/customers/acme-co/usage"
    params = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat(), "granularity": "hour"}
    by_model = admin.get(url, {**params, "group_by": "model"})
    assert by_model.status_code == 200
    assert {r["group"]["model"]: r["quantity"] for r in by_model.json()["data"]} == {"x": "10", "y": "5"}

    DimensionSet.objects.filter(key=rollups.dims_key({"model": "y"})).delete()
    selectors._DIMENSIONS.clear()
    lost = admin.get(url, {**params, "group_by": "model"})
    assert lost.status_code == 503 and lost.json()["error"]["code"] == "rollups_drift"
    assert admin.get(url, {**params, "group_by": "project"}).status_code == 200  # needs no dimension set
    assert any(line.endswith(": missing") for line in rollups.rollup_check())


KILLED_WORKER = """
import os, sys, time
import django
django.setup()
from datetime import datetime
from billing.usage import rollups

real_apply = rollups._apply_range

def apply_then_hang(lo, hi):
    real_apply(lo, hi)  # the rollup rows are written, the transaction is still open
    print("applied", flush=True)
    time.sleep(120)

rollups._apply_range = apply_then_hang
rollups.rollup_incremental(now=datetime.fromisoformat(sys.argv[1]), chunk=2)
"""


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_rollup_worker_killed_with_sigkill_leaves_nothing_and_the_rerun_equals_a_recomputation():
    import os
    import signal
    import subprocess
    import sys

    from django.conf import settings as django_settings
    from django.db import connection

    # given: events committed (a transactional test), and a real worker process mid-way through its rollup
    send(ev("a", 5, "10"), ev("b", 65, "4"), ev("c", 7, "1", dimensions={"model": "x"}))
    rollups.rollup_until_current(now=LATER)
    send(ev("d", 8, "2"), ev("e", 130, "5"), ev("f", 131, "6"))
    db = connection.settings_dict
    url = f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, LATER.isoformat()], env=env,
                              cwd=django_settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line.strip() == "applied", worker.stderr.read() if worker.stderr else ""
        before = RollupWatermark.objects.get(name="hourly").last_event_id

        # when: SIGKILL while its transaction holds the watermark lock and uncommitted rollup rows
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()

    # then: nothing of its work is visible; the rerun (which must get the lock PostgreSQL released) catches up
    assert RollupWatermark.objects.get(name="hourly").last_event_id == before
    assert sorted(r.total for r in HourlyRollup.objects.all()) == [1, 4, 10]
    assert rollups.rollup_until_current(now=LATER) == 3
    assert sorted(r.total for r in HourlyRollup.objects.all()) == [1, 4, 11, 12]
    assert rollups.rollup_check() == []


TRICKY = [{"model": "x"}, {"model": "é ü 漢字"}, {"model": 'say "hi"', "b": "back\\slash"},
          {"zz": "1", "a": "2", "mid": "line\nbreak\ttab"}, {"ctl": "\u0001\u001f"}, {}, {"k": "/ slash <tag>"}]


@pytest.mark.postgres
def test_the_sql_rebuild_keys_and_aggregates_rows_exactly_like_the_incremental_run():
    meter_create(key="gpu_temp", name="GPU temperature", aggregation="latest")
    events = []
    for i, dims in enumerate(TRICKY):
        events += [ev(f"t{i}", i, str(i + 1), dimensions=dims), ev(f"u{i}", 60 + i, "3", dimensions=dims),
                   ev(f"g{i}", 30 - i, str(50 + i), meter="gpu_temp", dimensions=dims),
                   ev(f"h{i}", 30 - i, str(70 + i), meter="gpu_temp", dimensions=dims),  # same time: the later id wins
                   ev(f"a{i}", i, "1", meter="agents", dimensions={**dims, "agent_id": f"p{i % 3}"}),
                   ev(f"b{i}", i, "1", meter="agents", dimensions={**dims, "agent_id": "Zed é"}),
                   ev(f"n{i}", i, "1", meter="agents", dimensions=dims)]  # no agent_id: no distinct value
    send(*events)
    fields = ("customer_id", "project_slot", "meter_id", "dims_key", "hour", "total", "events",
              "maximum", "uniques", "latest_value", "latest_at", "latest_event")

    daily_fields = ("customer_id", "meter_id", "dims_key", "day", "total", "events", "maximum", "uniques",
                    "latest_value", "latest_at", "latest_event")

    def rows() -> list[tuple]:
        return sorted(HourlyRollup.objects.values_list(*fields), key=repr)

    def daily() -> list[tuple]:
        return sorted(DailyRollup.objects.values_list(*daily_fields), key=repr)

    def sets() -> dict[str, dict]:
        return dict(DimensionSet.objects.values_list("key", "dimensions"))

    def indexes() -> list[tuple]:
        from django.db import connection

        with connection.cursor() as cursor:
            found = []
            for table in rollups.TABLES:
                cursor.execute(rollups.INDEXES, [table])
                found += cursor.fetchall()
            return sorted(found)

    rollups.rollup_until_current(now=LATER)
    incremental, incremental_daily, indexes_before = rows(), daily(), indexes()
    incremental_sets = sets()
    assert {rollups.dims_key(d) for d in incremental_sets.values()} == set(incremental_sets) == {r[3] for r in rows()}
    DimensionSet.objects.filter(key=rollups.dims_key({})).delete()  # lost: the rebuild stores it again
    rollups.rollup_full(now=LATER)  # PostgreSQL: indexes (primary key too) off, INSERT ... SELECT ... GROUP BY, indexes back
    assert sets() == incremental_sets

    assert len(incremental) == 6 * len(TRICKY) and rows() == incremental
    # the daily rows from the hourly ones in SQL, as the incremental run merges them in Python
    assert len(incremental_daily) == 5 * len(TRICKY) and daily() == incremental_daily
    assert indexes() == indexes_before and any("UNIQUE" in (i[3] or "") for i in indexes_before)
    assert any("PRIMARY KEY" in (i[3] or "") for i in indexes_before)
    assert rollups.rollup_check() == []
    assert RollupWatermark.objects.get(name="hourly").last_event_id == rollups.latest_event_id()

    # a set first seen after the watermark: the rebuild stores it from the events it has not read yet
    send(ev("new-set", 3, "5", dimensions={"model": "brand new"}))
    rollups.rollup_full(now=LATER)
    assert sets() == {**incremental_sets, rollups.dims_key({"model": "brand new"}): {"model": "brand new"}}
    assert rollups.rollup_check() == []
