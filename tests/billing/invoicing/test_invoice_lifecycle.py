"""Invoices: periods and their edges, late events and the grace time, corrections and adjustments,
finalization (idempotent, concurrent, gap-free), immutability, payment states and credit notes."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from billing.catalog.models import Plan
from billing.catalog.services import catalog_import, subscription_set
from billing.common.auth import Principal
from billing.common.errors import DomainError
from billing.invoicing import services
from billing.invoicing.compute import invoice_compute
from billing.invoicing.models import FinalizedInvoiceError, Invoice, InvoiceLine
from billing.invoicing.selectors import invoice_verify
from billing.usage.rollups import rollup_until_current
from tests import factories

ADMIN = Principal(scopes=frozenset({"admin"}))
UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "10.00"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.001"}
      - {meter: api_calls, model: per_unit, unit_price: "0.5"}
"""


send = factories.ingest


def ev(event_id: str, at: datetime | str, quantity: str = "100", meter: str = "llm_tokens", **extra: Any) -> dict[str, Any]:
    return factories.event(event_id, at, quantity, meter, **extra)


def accepted(results: list[dict[str, Any]]) -> None:
    assert all(r["status"] == "accepted" for r in results), results


def subscribe(customer: Any, start: datetime) -> Any:
    factories.subscribe(customer, "pro", start=start)
    return customer


@pytest.fixture
def pro(acme: Any) -> Any:
    catalog_import(text=CATALOG, actor="t")
    return subscribe(acme, OCT)


def close(now: datetime) -> list[Invoice]:
    services.periods_close(now=now)
    rollup_until_current(now=now + timedelta(days=1))
    return services.periods_finalize(now=now + timedelta(days=1))


def invoice_of(customer: Any, start: datetime) -> Invoice:
    return Invoice.objects.get(customer=customer, period_start=start, kind="invoice")


@pytest.mark.django_db
def test_events_at_period_edges_land_in_exactly_one_period_including_29_february_and_offsets(acme: Any) -> None:
    catalog_import(text=CATALOG, actor="t")
    pro = subscribe(acme, datetime(2024, 1, 1, tzinfo=UTC))
    feb, mar = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    accepted(send(
        ev("feb-first", "2024-02-01T00:00:00Z", "1"),
        ev("feb-29-last", "2024-02-29T23:59:59.999999Z", "2"),
        ev("feb-offset", "2024-03-01T00:59:59.999999+01:00", "4"),  # 23:59:59.999999Z on 29 Feb
        ev("mar-first", "2024-03-01T00:00:00Z", "8"),
        ev("mar-offset", "2024-03-01T01:00:00+01:00", "16"),  # exactly 00:00Z on 1 March
        ev("jan-last", "2024-01-31T23:59:59.999999Z", "32"),
        ev("mar-offset-west", "2024-02-29T19:00:00-05:00", "64"),  # 00:00Z on 1 March
        now=datetime(2024, 3, 2, tzinfo=UTC)))
    rollup_until_current(now=datetime(2024, 3, 3, tzinfo=UTC))

    def tokens(start: datetime) -> Decimal:
        computed = invoice_compute(customer=pro, start=start, end=(start + timedelta(days=32)).replace(day=1))
        assert computed is not None
        return next(line.quantity for line in computed.lines if line.meter == "llm_tokens")

    assert tokens(datetime(2024, 1, 1, tzinfo=UTC)) == 32
    assert tokens(feb) == 1 + 2 + 4
    assert tokens(mar) == 8 + 16 + 64
    for source in ("rollups", "raw"):  # rollup hours and raw events agree on the edges
        total = sum(
            next(line.quantity for line in computed.lines if line.meter == "llm_tokens")
            for start in (datetime(2024, 1, 1, tzinfo=UTC), feb, mar)
            if (computed := invoice_compute(customer=pro, start=start, end=(start + timedelta(days=32)).replace(day=1),
                                            source=source)) is not None)
        assert total == 127


@pytest.mark.django_db
def test_draft_follows_usage_late_event_inside_grace_lands_and_after_close_gets_422(pro: Any) -> None:
    accepted(send(ev("a", "2026-10-15T10:00:00Z", "500"), now=datetime(2026, 10, 15, 11, tzinfo=UTC)))
    draft = services.invoice_draft_refresh(customer=pro, period_start=OCT)
    assert draft is not None and draft.status == "draft" and draft.number is None
    assert draft.subtotal_minor == 1000 + 500  # base fee 10.00 + 500 tokens at 0.01

    # nothing new: the refresh computes the same invoice and writes nothing (no line or invoice write)
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        same = services.invoice_draft_refresh(customer=pro, period_start=OCT)
    assert same is not None and same.pk == draft.pk and same.updated_at == draft.updated_at
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert not [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"]]  # not even a row lock

    # 30 minutes after the period's end: still inside the one-hour grace time
    inside_grace = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    assert OCT not in [start for start, _ in services.periods_close(now=inside_grace)]  # earlier months close
    accepted(send(ev("late", "2026-10-31T23:59:00Z", "100"), now=inside_grace))
    draft = services.invoice_draft_refresh(customer=pro, period_start=OCT)
    assert draft is not None and draft.subtotal_minor == 1000 + 600

    after_grace = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
    finalized = close(after_grace)
    assert OCT in [i.period_start for i in finalized]
    oct_invoice = invoice_of(pro, OCT)
    assert oct_invoice.status == "finalized" and oct_invoice.subtotal_minor == 1600

    too_late = send(ev("too-late", "2026-10-31T23:59:30Z", "100"), now=datetime(2026, 11, 1, 2, tzinfo=UTC))
    assert too_late[0]["status"] == "rejected" and too_late[0]["error"]["code"] == "period_closed"
    # a retry of an event stored before the close is still answered as a duplicate, not 422
    again = send(ev("late", "2026-10-31T23:59:00Z", "100"), now=datetime(2026, 11, 1, 2, tzinfo=UTC))
    assert again[0]["status"] == "duplicate"
    assert invoice_verify(invoice=invoice_of(pro, OCT)) == []


@pytest.mark.django_db
def test_the_beat_refreshes_every_open_draft_and_one_failing_customer_stops_no_other(
        pro: Any, globex: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    subscribe(globex, OCT)
    accepted(send(ev("a", "2026-10-15T10:00:00Z", "500"), ev("g", "2026-10-15T10:00:00Z", "200", customer="globex"),
                  now=datetime(2026, 10, 15, 11, tzinfo=UTC)))
    assert services.drafts_refresh(now=datetime(2026, 10, 20, tzinfo=UTC)) == 2
    assert (invoice_of(pro, OCT).subtotal_minor, invoice_of(globex, OCT).subtotal_minor) == (1500, 1200)

    # November, inside October's grace time: both periods are open, October's drafts follow a late event
    inside_grace = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    accepted(send(ev("late", "2026-10-31T23:00:00Z", "100", customer="globex"), now=inside_grace))
    real = services.invoice_compute

    def failing_for_acme(*, customer: Any, **kwargs: Any) -> Any:
        if customer.pk == pro.pk:
            raise RuntimeError("pricing bug for one plan")
        return real(customer=customer, **kwargs)

    monkeypatch.setattr(services, "invoice_compute", failing_for_acme)
    assert services.drafts_refresh(now=inside_grace) == 2  # globex's October and November drafts
    assert invoice_of(globex, OCT).subtotal_minor == 1300 and invoice_of(pro, OCT).subtotal_minor == 1500
    assert Invoice.objects.filter(customer=globex, period_start=NOV).exists()
    assert not Invoice.objects.filter(customer=pro, period_start=NOV).exists()
    failures = [r for r in caplog.records if r.levelname == "ERROR" and "acme-co" in r.getMessage()]
    assert len(failures) == 2  # one per open period, each with its traceback
    assert all(r.exc_info and "pricing bug" in str(r.exc_info[1]) for r in failures)


@pytest.mark.django_db
def test_period_closed_is_a_422_through_the_api(pro: Any, ingest: Any) -> None:
    services.periods_close(now=datetime(2026, 11, 1, 1, tzinfo=UTC))
    response = ingest.post("/api/v1/events", ev("x", "2026-10-20T00:00:00Z"), format="json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "period_closed"
    ok = ingest.post("/api/v1/events", ev("y", datetime.now(UTC) - timedelta(minutes=1)), format="json")
    assert ok.status_code in (200, 201, 202), ok.content


@pytest.mark.django_db
def test_a_correction_shows_on_the_invoice_and_one_for_a_closed_period_becomes_an_adjustment(pro: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z", "1500"), ev("b", "2026-10-11T00:00:00Z", "200"),
                  now=datetime(2026, 10, 12, tzinfo=UTC)))
    accepted(send(ev("fix-a", "2026-10-12T00:00:00Z", "-600", corrects="a"), now=datetime(2026, 10, 12, 1, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    lines = {line.kind: line for line in invoice.lines.filter(meter="llm_tokens")}
    # 1700 tokens gross: 1000 * 0.01 + 700 * 0.001 = 10.70; net 1100: 10.10; the correction is -0.60
    assert lines["charge"].quantity == 1700 and lines["charge"].amount_minor == 1070
    assert lines["correction"].quantity == -600 and lines["correction"].amount_minor == -60
    assert lines["correction"].detail["corrects"] == ["a"]
    assert invoice.subtotal_minor == 1000 + 1010

    # October is closed and final: a correction of "b" sent in November is booked on November
    result = send(ev("fix-b", "2026-11-03T00:00:00Z", "-200", corrects="b"), now=datetime(2026, 11, 3, 1, tzinfo=UTC))
    accepted(result)
    nov = services.invoice_draft_refresh(customer=pro, period_start=NOV)
    assert nov is not None
    adjustment = nov.lines.get(kind="adjustment")
    assert adjustment.quantity == -200 and adjustment.detail["corrects"] == ["b"]
    assert invoice_of(pro, OCT).subtotal_minor == 2010  # the final invoice is untouched
    # a correction dated inside the closed period itself is refused like any late event
    refused = send(ev("fix-b2", "2026-10-30T00:00:00Z", "-1", corrects="b"), now=datetime(2026, 11, 3, 1, tzinfo=UTC))
    assert refused[0]["error"]["code"] == "period_closed"


@pytest.mark.django_db
def test_finalizing_three_times_yields_one_invoice_and_numbers_have_no_gaps(pro: Any, globex: Any) -> None:
    subscribe(globex, OCT)
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    services.periods_close(now=datetime(2026, 11, 1, 1, tzinfo=UTC))
    later = datetime(2026, 11, 2, tzinfo=UTC)
    for _ in range(3):
        services.periods_finalize(now=later)
        call_command("close_periods", "--now", "2026-11-02T00:00:00Z")
    draft = invoice_of(pro, OCT)
    for _ in range(3):
        services.invoice_finalize(invoice=draft, now=later)
    oct_invoices = Invoice.objects.filter(period_start=OCT, kind="invoice")
    assert oct_invoices.count() == 2  # acme and globex, once each
    assert Invoice.objects.filter(customer=pro, period_start=OCT).count() == 1
    numbers = sorted(n or "" for n in Invoice.objects.exclude(number=None).values_list("number", flat=True))
    assert numbers == [f"INV-{n:06d}" for n in range(1, len(numbers) + 1)]  # gap-free


@pytest.mark.django_db
def test_an_open_period_cannot_be_finalized(pro: Any) -> None:
    accepted(send(ev("a", "2026-11-10T00:00:00Z"), now=datetime(2026, 11, 12, tzinfo=UTC)))
    draft = services.invoice_draft_refresh(customer=pro, period_start=NOV)
    assert draft is not None
    with pytest.raises(DomainError) as caught:
        services.invoice_finalize(invoice=draft, now=datetime(2026, 11, 12, tzinfo=UTC))
    assert caught.value.code == "period_open"


@pytest.mark.django_db
def test_a_finalized_invoice_cannot_be_edited_through_any_code_path(pro: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    line = invoice.lines.first()
    assert line is not None
    invoice.total_minor += 1
    with pytest.raises(FinalizedInvoiceError):
        invoice.save()
    with pytest.raises(FinalizedInvoiceError):
        Invoice.objects.filter(pk=invoice.pk).update(total_minor=1)
    with pytest.raises(FinalizedInvoiceError):
        Invoice.objects.filter(pk=invoice.pk).update(status="draft")
    with pytest.raises(FinalizedInvoiceError):
        invoice.delete()
    with pytest.raises(FinalizedInvoiceError):
        Invoice.objects.filter(pk=invoice.pk).delete()
    line.amount_minor = 0
    with pytest.raises(FinalizedInvoiceError):
        line.save()
    with pytest.raises(FinalizedInvoiceError):
        InvoiceLine.objects.filter(invoice=invoice).update(amount_minor=0)
    with pytest.raises(FinalizedInvoiceError):
        InvoiceLine.objects.filter(invoice=invoice).delete()
    with pytest.raises(FinalizedInvoiceError):
        InvoiceLine(invoice=invoice, position=99, kind="charge", description="x", amount_minor=1).save()
    # below the ORM: the database's own triggers (PostgreSQL and SQLite)
    table = Invoice._meta.db_table
    for statement in (f"UPDATE {table} SET total_minor = 1 WHERE id = %s",
                      f"UPDATE {table} SET status = 'draft' WHERE id = %s",
                      f"UPDATE {InvoiceLine._meta.db_table} SET amount_minor = 0 WHERE invoice_id = %s"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [invoice.pk])
    fresh = invoice_of(pro, OCT)
    assert fresh.total_minor == invoice.total_minor - 1 and fresh.status == "finalized"
    # state moves stay possible; a void issues a credit note instead of editing
    services.invoice_mark_paid(invoice=fresh, at=datetime(2026, 11, 5, tzinfo=UTC))
    assert invoice_of(pro, OCT).status == "paid"
    with pytest.raises(DomainError) as paid:
        services.invoice_void(invoice=fresh, at=datetime(2026, 11, 6, tzinfo=UTC))  # paid cannot be voided
    assert paid.value.code == "invalid_invoice_state"


@pytest.mark.django_db
def test_void_issues_one_credit_note_and_transitions_are_idempotent(pro: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    at = datetime(2026, 11, 5, tzinfo=UTC)
    services.invoice_mark_uncollectible(invoice=invoice, at=at)
    services.invoice_mark_uncollectible(invoice=invoice, at=at)
    for _ in range(2):
        services.invoice_void(invoice=invoice, at=at, reason="duplicate order")
    notes = Invoice.objects.filter(kind="credit_note", corrects=invoice)
    assert notes.count() == 1
    note = notes.get()
    assert note.total_minor == -invoice.total_minor and note.number == "CN-000001" and note.status == "finalized"
    assert invoice_of(pro, OCT).status == "void"


@pytest.mark.django_db
def test_invoices_api_lists_details_and_keeps_tenants_apart(pro: Any, globex: Any, make_client: Any, admin: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    listed = admin.get("/api/v1/invoices?customer=acme-co&status=finalized").json()["data"]
    assert [i["number"] for i in listed] == [invoice.number]
    detail = admin.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert detail["total_minor"] == invoice.total_minor and detail["currency"] == "USD"
    assert detail["lines"][0]["kind"] == "base_fee"
    foreign = make_client("read", customer=globex)
    assert foreign.get(f"/api/v1/invoices/{invoice.pk}").status_code == 404
    assert foreign.get("/api/v1/invoices").json()["data"] == []
    own = make_client("read", customer=pro)
    assert own.get(f"/api/v1/invoices/{invoice.pk}").status_code == 200
    assert own.post(f"/api/v1/invoices/{invoice.pk}/void", {}, format="json").status_code == 403
    voided = admin.post(f"/api/v1/invoices/{invoice.pk}/void", {"reason": "test"}, format="json")
    assert voided.status_code == 200 and voided.json()["status"] == "void"
    assert admin.get("/api/v1/invoices?status=bogus").status_code == 422


@pytest.mark.django_db
def test_operator_marks_uncollectible_then_paid_through_the_api(pro: Any, make_client: Any, admin: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    own = make_client("read", customer=pro)

    assert own.post(f"/api/v1/invoices/{invoice.pk}/mark_paid", {}, format="json").status_code == 403
    given_up = admin.post(f"/api/v1/invoices/{invoice.pk}/mark_uncollectible", {}, format="json")
    paid = admin.post(f"/api/v1/invoices/{invoice.pk}/mark_paid", {}, format="json")
    again = admin.post(f"/api/v1/invoices/{invoice.pk}/mark_paid", {}, format="json")
    back = admin.post(f"/api/v1/invoices/{invoice.pk}/mark_uncollectible", {}, format="json")

    assert (given_up.status_code, given_up.json()["status"]) == (200, "uncollectible")
    assert (paid.status_code, paid.json()["status"]) == (200, "paid") and paid.json()["paid_at"]
    assert (again.status_code, again.json()["status"]) == (200, "paid")  # idempotent
    assert back.status_code == 409 and back.json()["error"]["code"] == "invalid_invoice_state"
    assert invoice_of(pro, OCT).total_minor == invoice.total_minor  # figures untouched


@pytest.mark.django_db
def test_invoice_document_for_staff_and_own_customer_only(pro: Any, globex: Any, client: Any,
                                                          django_user_model: Any) -> None:
    from billing.customers.models import CustomerUser

    accepted(send(ev("a", "2026-10-10T00:00:00Z", "1500"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    close(datetime(2026, 11, 1, 1, tzinfo=UTC))
    invoice = invoice_of(pro, OCT)
    url = f"/invoices/{invoice.pk}/"
    assert client.get(url).status_code == 302  # login first
    staff = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    client.force_login(staff)
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    for text in (invoice.number, "Acme", "2026-10-01", "USD", "Total due", "20.50", "tier 2", "<strong>Open</strong>"):
        assert text in html, text
    assert "Printable version" not in client.get(url + "?print=1").content.decode()
    stranger = django_user_model.objects.create_user("g", password="pw")
    CustomerUser.objects.create(user=stranger, customer=globex)
    client.force_login(stranger)
    assert client.get(url).status_code == 404
    owner = django_user_model.objects.create_user("a", password="pw")
    CustomerUser.objects.create(user=owner, customer=pro)
    client.force_login(owner)
    assert client.get(url).status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_refreshes_of_a_period_create_one_draft_with_its_lines_once(pro: Any) -> None:
    # given usage in an open period and no draft yet
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 13, tzinfo=UTC))
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            services.invoice_draft_refresh(customer=pro, period_start=OCT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # when six refreshes create it at once (each inserts the whole draft; the losers refresh the winner's)
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then one draft, its lines once, and the figures a refresh computes
    assert errors == []
    draft = Invoice.objects.get(customer=pro, period_start=OCT)
    computed = invoice_compute(customer=pro, start=OCT, end=NOV)
    assert computed is not None and draft.total_minor == computed.total_minor and draft.lines_digest == computed.digest()
    assert InvoiceLine.objects.filter(invoice=draft).count() == len(computed.lines)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_finalization_yields_one_invoice_and_one_number(pro: Any) -> None:
    accepted(send(ev("a", "2026-10-10T00:00:00Z"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    services.periods_close(now=datetime(2026, 11, 1, 1, tzinfo=UTC))
    rollup_until_current(now=datetime(2026, 11, 2, tzinfo=UTC))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(kind: int) -> None:
        try:
            barrier.wait()
            if kind % 2:
                services.periods_finalize(now=datetime(2026, 11, 2, tzinfo=UTC))
            else:
                draft = services._draft_for(customer=pro, start=OCT, end=NOV, currency="USD")
                services.invoice_finalize(invoice=draft, now=datetime(2026, 11, 2, tzinfo=UTC))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Invoice.objects.filter(customer=pro, period_start=OCT).count() == 1
    assert list(Invoice.objects.exclude(number=None).values_list("number", flat=True)) == ["INV-000001"]


@pytest.mark.django_db
@pytest.mark.parametrize("source", ["rollups", "raw"])
def test_a_subscription_starting_or_ending_inside_the_period_bills_exactly_its_own_usage(
        acme: Any, globex: Any, source: str) -> None:
    """Where the subscription starts or ends mid-period is a cut like a rate-card change: a rollup range
    that spans it would otherwise be priced (or dropped) as a whole. Off the hour (10:30) and on it."""
    from billing.catalog.models import Subscription

    catalog_import(text=CATALOG, actor="t")
    subscribe(acme, datetime(2026, 10, 10, 10, 30, tzinfo=UTC))
    subscribe(globex, datetime(2026, 10, 12, tzinfo=UTC))
    Subscription.objects.filter(customer=globex).update(end=datetime(2026, 10, 20, 6, tzinfo=UTC))
    usage = [  # (customer, time, tokens, billed)
        ("acme-co", datetime(2026, 10, 5, 9, tzinfo=UTC), "1", False),
        ("acme-co", datetime(2026, 10, 10, 10, 15, tzinfo=UTC), "2", False),  # same hour, before the start
        ("acme-co", datetime(2026, 10, 10, 10, 30, tzinfo=UTC), "4", True),  # exactly at the start
        ("acme-co", datetime(2026, 10, 10, 10, 45, tzinfo=UTC), "8", True),
        ("acme-co", datetime(2026, 10, 10, 11, 5, tzinfo=UTC), "16", True),
        ("acme-co", datetime(2026, 10, 28, 3, tzinfo=UTC), "32", True),
        ("globex", datetime(2026, 10, 11, 23, 59, tzinfo=UTC), "64", False),
        ("globex", datetime(2026, 10, 12, 0, 0, tzinfo=UTC), "128", True),
        ("globex", datetime(2026, 10, 15, 7, tzinfo=UTC), "256", True),
        ("globex", datetime(2026, 10, 20, 5, 59, tzinfo=UTC), "512", True),
        ("globex", datetime(2026, 10, 20, 6, 0, tzinfo=UTC), "1024", False),  # the end is exclusive
        ("globex", datetime(2026, 10, 25, tzinfo=UTC), "2048", False),
    ]
    accepted(send(*[dict(ev(f"u{i}", at, tokens), customer=who) for i, (who, at, tokens, _) in enumerate(usage)],
                  now=datetime(2026, 10, 29, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 30, tzinfo=UTC))
    for customer in (acme, globex):
        computed = invoice_compute(customer=customer, start=OCT, end=NOV, source=source)
        assert computed is not None
        tokens = next(line.quantity for line in computed.lines if line.meter == "llm_tokens")
        assert tokens == sum(Decimal(q) for who, _, q, billed in usage if who == customer.external_id and billed)


RICH_CATALOG = """
meters:
  - {key: seats, name: Seats, unit: seat, aggregation: max}
  - {key: agents, name: Agents, unit: agent, aggregation: unique_count, unique_by: agent}
  - {key: storage, name: Storage, unit: GB, aggregation: latest}
plans:
  - key: rich
    name: Rich
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    charges:
      - {meter: seats, model: per_unit, unit_price: "3"}
      - {meter: agents, model: per_unit, unit_price: "1.5", markup: {dimension: team, percent: {red: "10"}, default: "0"}}
      - {meter: storage, model: per_unit, unit_price: "0.25"}
  - key: rich
    name: Rich
    currency: USD
    effective_from: "2026-10-20T07:30:00Z"
    charges:
      - {meter: seats, model: per_unit, unit_price: "4"}
      - {meter: agents, model: per_unit, unit_price: "2", markup: {dimension: team, percent: {red: "10"}, default: "0"}}
      - {meter: storage, model: per_unit, unit_price: "0.5"}
"""


@pytest.mark.django_db
def test_max_unique_and_latest_meters_priced_from_rollup_ranges_match_the_raw_events(acme: Any) -> None:
    """On PostgreSQL whole-hour ranges of rollups are aggregated in SQL (largest maximum, union of distinct
    values, latest by time then event id); the invoice must equal the one priced from raw events."""
    catalog_import(text=RICH_CATALOG, actor="t")
    subscription_set(customer=acme, plan=Plan.objects.get(key="rich"), start=OCT, now=OCT, actor="t")
    tie = datetime(2026, 10, 28, 9, 15, tzinfo=UTC)
    events = []
    for i, (hour, seats, agent, team, storage) in enumerate([
            (3, "7", "a1", "red", "10"), (3, "2", "a2", "red", "11"), (50, "9", "a1", "blue", "12"),
            (200, "4", "a3", "blue", "5"), (200, "12", "a4", "red", "6"), (455, "1", "a2", "blue", "8"),
            (560, "3", "a5", "red", "13"), (600, "5", "a1", "red", "14")]):
        at = OCT + timedelta(hours=hour, minutes=i)
        events += [ev(f"s{i}", at, seats, meter="seats"), ev(f"a{i}", at, "1", meter="agents",
                                                              dimensions={"agent": agent, "team": team}),
                   ev(f"g{i}", at, storage, meter="storage")]
    events += [ev("tie1", tie, "20", meter="storage"), ev("tie2", tie, "21", meter="storage")]  # same time: later id wins
    accepted(send(*events, now=datetime(2026, 10, 30, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 31, tzinfo=UTC))
    rolled = invoice_compute(customer=acme, start=OCT, end=NOV, source="rollups")
    raw = invoice_compute(customer=acme, start=OCT, end=NOV, source="raw")
    assert rolled is not None and raw is not None
    assert [line.key() for line in rolled.lines] == [line.key() for line in raw.lines]
    quantities = sorted((line.meter or "", line.quantity) for line in rolled.lines)
    # seats: the largest; agents per team (blue: a1 a2 a3, red: a1 a2 a4 a5); storage: the later of the tie
    assert quantities == [("agents", 3), ("agents", 4), ("seats", 12), ("storage", 21)]


@pytest.mark.django_db
def test_a_start_and_a_price_change_in_the_same_hour_count_each_event_once(acme: Any) -> None:
    """The upcoming invoice reads from the subscription's start (10:30): its partial first hour and the hour
    of the price change (10:45) overlap, and are read once."""
    from billing.invoicing.compute import upcoming_invoice

    catalog_import(text=CATALOG + CATALOG.split("plans:\n")[1].replace("2024-01-01T00:00:00Z", "2026-10-10T10:45:00Z")
                   .replace('"0.01"', '"0.02"'), actor="t")
    subscribe(acme, datetime(2026, 10, 10, 10, 30, tzinfo=UTC))
    times = [(10, 20, "1"), (10, 35, "2"), (10, 50, "4"), (11, 10, "8"), (23, 0, "16")]
    accepted(send(*[ev(f"x{i}", datetime(2026, 10, 10, h, m, tzinfo=UTC), q) for i, (h, m, q) in enumerate(times)],
                  now=datetime(2026, 10, 11, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 12, tzinfo=UTC))
    upcoming = upcoming_invoice(customer=acme, now=datetime(2026, 10, 20, tzinfo=UTC))
    raw = invoice_compute(customer=acme, start=OCT, end=NOV, source="raw")
    assert upcoming is not None and raw is not None
    tokens = [line for line in upcoming.lines if line.meter == "llm_tokens"]
    assert [line.quantity for line in tokens] == [2 + 4 + 8 + 16]
    # 2 tokens at 0.01 before the change, 4 + 8 + 16 at 0.02 after; the raw replay agrees
    assert tokens[0].amount == Decimal("0.58") == next(line.amount for line in raw.lines if line.meter == "llm_tokens")


TWO_PLANS = CATALOG + """
  - key: team
    name: Team
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "30.00"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.002"}
  - key: euro
    name: Euro
    currency: EUR
    effective_from: "2024-01-01T00:00:00Z"
    charges:
      - {meter: llm_tokens, model: per_unit, unit_price: "0.002"}
"""


@pytest.mark.django_db
@pytest.mark.parametrize("source", ["rollups", "raw"])
def test_a_plan_changed_mid_period_bills_each_stretch_with_its_own_plan(acme: Any, source: str) -> None:
    """Pro until 15 October 10:30, then Team: the invoice holds both plans' lines, each stretch priced by
    its own plan (Pro's tiers count Pro's tokens only), and both base fees. Before, the usage under the
    first plan was not billed at all. The upcoming invoice and the replay agree; another currency mid-period
    is refused."""
    from billing.invoicing.compute import upcoming_invoice

    catalog_import(text=TWO_PLANS, actor="t")
    subscribe(acme, OCT)
    switch = datetime(2026, 10, 15, 10, 30, tzinfo=UTC)
    accepted(send(ev("a", datetime(2026, 10, 5, tzinfo=UTC), "600"), ev("b", datetime(2026, 10, 15, 10, 15, tzinfo=UTC), "500"),
                  ev("c", switch, "700"), now=datetime(2026, 10, 15, 10, 40, tzinfo=UTC)))
    subscription_set(customer=acme, plan=Plan.objects.get(key="team"), start=switch, now=switch, actor="t")
    accepted(send(ev("d", datetime(2026, 10, 20, tzinfo=UTC), "300"), now=datetime(2026, 10, 20, 1, tzinfo=UTC)))
    with pytest.raises(DomainError) as refused:
        subscription_set(customer=acme, plan=Plan.objects.get(key="euro"), start=datetime(2026, 10, 20, tzinfo=UTC),
                         now=datetime(2026, 10, 19, tzinfo=UTC), actor="t")
    assert refused.value.code == "validation_error" and "EUR" in str(refused.value.fields)
    rollup_until_current(now=datetime(2026, 10, 30, tzinfo=UTC))

    computed = invoice_compute(customer=acme, start=OCT, end=NOV, source=source)
    assert computed is not None and computed.plan.key == "team"
    got = [(line.description, line.quantity, line.amount_minor) for line in computed.lines]
    assert got == [("Pro base fee", 1, 1000), ("Pro: LLM tokens", 1100, 1010), ("Pro: API calls", 0, 0),
                   ("Team base fee", 1, 3000), ("Team: LLM tokens", 1000, 200)]
    assert computed.total_minor == 5210 and computed.versions == [1]
    upcoming = upcoming_invoice(customer=acme, now=datetime(2026, 10, 29, tzinfo=UTC))
    assert upcoming is not None and upcoming.subtotal_minor == 5210
    assert [line.description for line in upcoming.lines] == [g[0] for g in got]

    (invoice,) = close(NOV + timedelta(hours=2))
    assert invoice.status == Invoice.Status.FINALIZED and invoice.total_minor == 5210
    assert invoice_verify(invoice=invoice) == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_rollup_committing_while_an_invoice_reads_counts_each_event_once(pro: Any) -> None:
    """The watermark and the rollups are read in one statement, the events above the watermark after it. A
    rollup run that commits in between (simulated right after that statement) moves events into the
    rollups already read past: they are still read once, as raw events above the watermark read."""
    from billing.invoicing import rows as invoice_rows

    accepted(send(ev("a", "2026-10-10T05:00:00Z", "300"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 13, tzinfo=UTC))
    accepted(send(ev("b", "2026-10-11T05:00:00Z", "200"), now=datetime(2026, 10, 12, tzinfo=UTC)))  # not rolled up
    fired: list[int] = []

    def roll_up_elsewhere(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if "usage_rollupwatermark" in sql and not fired:
            def other() -> None:
                try:
                    fired.append(rollup_until_current(now=datetime(2026, 10, 13, tzinfo=UTC)))
                finally:
                    connection.close()
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(timeout=30)
        return result

    with connection.execute_wrapper(roll_up_elsewhere):
        rows, watermark = invoice_rows.period_rows(customer=pro, start=OCT, end=NOV)
    assert fired == [1]  # the other run rolled "b" up and committed before the raw events were read
    from billing.usage.models import UsageEvent

    assert watermark == UsageEvent.objects.get(event_id="a").pk  # read with the rollups, before "b" was rolled up
    assert sum(r.total for r in rows) == 500
    computed = invoice_compute(customer=pro, start=OCT, end=NOV)
    assert computed is not None and next(line.quantity for line in computed.lines if line.meter == "llm_tokens") == 500


@pytest.mark.django_db
def test_daily_rollups_are_backfilled_from_hourly_ones_and_drift_is_refused(pro: Any) -> None:
    """Migration usage.0008 fills the daily rollups of a database that had hourly ones only (an empty daily
    table would drop whole days from invoices). A rollup row whose dimension set is not stored is drift the
    check reports and an error for the invoice, never a line without dimensions."""
    import importlib

    from django.apps import apps

    from billing.usage import selectors as usage_selectors
    from billing.usage.models import DailyRollup, DimensionSet
    from billing.usage.rollups import rollup_check

    backfill = importlib.import_module("billing.usage.migrations.0008_backfill_daily_rollup").backfill
    accepted(send(ev("a", "2026-10-10T05:00:00Z", "300", dimensions={"model": "x"}),
                  ev("b", "2026-10-10T07:00:00Z", "200", dimensions={"model": "x"}),
                  ev("c", "2026-10-11T05:00:00Z", "100", meter="api_calls"), now=datetime(2026, 10, 12, tzinfo=UTC)))
    rollup_until_current(now=datetime(2026, 10, 13, tzinfo=UTC))
    fields = ("customer_id", "meter_id", "dims_key", "day", "total", "events", "maximum", "uniques", "latest_value")
    maintained = sorted(DailyRollup.objects.values_list(*fields), key=repr)
    before = invoice_compute(customer=pro, start=OCT, end=NOV)
    DailyRollup.objects.all().delete()

    class Editor:
        connection = connection

    backfill(apps, Editor())
    assert sorted(DailyRollup.objects.values_list(*fields), key=repr) == maintained and len(maintained) == 2
    assert rollup_check() == []
    after = invoice_compute(customer=pro, start=OCT, end=NOV)
    assert before is not None and after is not None and after.digest() == before.digest()

    DimensionSet.objects.all().delete()  # drift: rollup rows whose dimension sets are lost
    usage_selectors._DIMENSIONS.clear()
    assert rollup_check()[-1].startswith("dimension set ") and rollup_check()[-1].endswith(": missing")
    with pytest.raises(usage_selectors.RollupDriftError), transaction.atomic():
        invoice_compute(customer=pro, start=OCT, end=NOV)
