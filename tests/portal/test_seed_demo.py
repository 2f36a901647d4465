"""``seed_demo`` gives a first run something real to look at: last month's finalized invoice (with its PDF),
usage on every demo meter, and agent runs that look like agent runs."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from pypdf import PdfReader

from billing.catalog.models import Meter
from billing.common.calendar import period_bounds, previous_period
from billing.invoicing.models import Invoice, PeriodClose
from billing.invoicing.selectors import invoice_verify
from billing.usage.models import UsageEvent


@pytest.mark.django_db(transaction=True)
def test_seed_demo_finalizes_last_months_invoice_and_fills_every_meter_with_agent_runs(
        client: Any, admin_user: Any) -> None:
    out = StringIO()
    call_command("seed_demo", "--json", stdout=out)
    info = json.loads(out.getvalue())
    start = previous_period(period_bounds(timezone.now())[0])[0]
    invoice = Invoice.objects.get(customer__external_id="acme-co", period_start=start, kind="invoice")
    assert invoice.status == "finalized" and invoice.number and invoice.due_at is not None
    assert info["last_month_invoice"] == f"/invoices/{invoice.pk}/"
    assert invoice_verify(invoice=invoice) == []
    assert invoice.lines.filter(kind="charge", quantity__gt=0).count() >= 4
    # every demo meter has usage
    used = set(UsageEvent.objects.filter(customer__external_id="acme-co").values_list("meter__key", flat=True))
    assert used == set(Meter.objects.values_list("key", flat=True))
    # runs: one project each, steps numbered 1..n in time order, each step's parent the step before
    runs: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for project, usage_at, trace in UsageEvent.objects.filter(meter__key="llm_tokens").values_list(
            "project__key", "usage_at", "trace"):
        assert trace is not None  # every step belongs to a run
        runs[trace["run_id"]].append((project, usage_at, trace))
    assert len(runs) >= 10
    for steps in runs.values():
        assert len({project for project, _, _ in steps}) == 1
        ordered = sorted(steps, key=lambda s: (s[1], s[2]["step"]))
        numbers = [trace["step"] for _, _, trace in ordered]
        assert numbers == sorted(numbers) and numbers[0] == 1
        assert all(str(trace.get("parent_id")).endswith(f"-s{trace['step'] - 1}")
                   for _, _, trace in ordered if trace["step"] > 1)
    # its PDF holds its number and total
    client.force_login(admin_user)
    pdf = client.get(f"/invoices/{invoice.pk}.pdf")
    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert str(invoice.number) in text
    # again: nothing doubles
    count = UsageEvent.objects.count()
    call_command("seed_demo", stdout=StringIO())
    assert UsageEvent.objects.count() == count
    assert Invoice.objects.filter(kind="invoice").exclude(status="draft").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("minutes", [0, 30, 59])
def test_seed_demo_in_a_months_first_hour_still_finalizes_last_month(minutes: int) -> None:
    # given: the clock in the first hour of the current month (last month still in its grace time)
    first_hour = period_bounds(timezone.now())[0] + timedelta(minutes=minutes, seconds=1)
    out = StringIO()
    # when
    call_command("seed_demo", "--json", "--events", "60", "--now", first_hour.isoformat(), stdout=out)
    # then: last month is closed and its invoice finalized, with the seed's events for it
    info = json.loads(out.getvalue())
    start = previous_period(period_bounds(first_hour)[0])[0]
    invoice = Invoice.objects.get(customer__external_id="acme-co", period_start=start, kind="invoice")
    assert invoice.status == "finalized" and invoice.number
    assert info["last_month_invoice"] == f"/invoices/{invoice.pk}/"
    assert invoice.events_count > 0 and invoice_verify(invoice=invoice) == []
    assert PeriodClose.objects.filter(period_start=start).exists()
    # and again at the same instant: nothing doubles
    call_command("seed_demo", "--now", first_hour.isoformat(), "--events", "60", stdout=StringIO())
    assert Invoice.objects.filter(kind="invoice").exclude(status="draft").count() == 1


def test_seed_demo_refuses_a_now_without_an_offset() -> None:
    with pytest.raises(CommandError, match="offset"):
        call_command("seed_demo", "--now", "2026-12-01T00:30:00", stdout=StringIO())
