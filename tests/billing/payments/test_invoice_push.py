"""Mode tollgate_invoices: a finalized invoice becomes one Stripe invoice with one item per line, the same
total to the cent, then finalized. Against localstripe (customers, invoices, items) and the recording
client (finalize)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.customers.services import customer_create
from billing.invoicing.signals import invoice_finalized
from billing.payments import services
from billing.payments.models import BillingMode, StripeCustomer, StripeInvoiceSync, SyncState
from billing.payments.operator import stripe_invoice_sync_retry
from billing.payments.services import plan_billing_mode_set, stripe_invoice_sync_schedule
from billing.payments.sweep import stripe_sync_pending
from tests.billing.payments.conftest import after_backoff

pytestmark = pytest.mark.django_db

LINES = [(9900, "Base fee"), (1234, "LLM tokens: 617,000 tokens, tier 2"), (7, "API calls: 3,500 calls")]


def stripe_invoice_push(*, invoice_pk: int) -> StripeInvoiceSync:
    row = services.stripe_invoice_push(invoice_pk=invoice_pk)
    assert row is not None
    return row


def stripe_invoices_of(localstripe, customer):
    customer_id = StripeCustomer.objects.get(customer=customer).stripe_customer_id
    return [inv for inv in localstripe.objects("invoice") if inv.customer == customer_id]


def test_a_finalized_invoice_is_pushed_with_its_lines_and_finalized(stripe_on, localstripe, acme, make_invoice):
    # given
    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    # when
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    # then
    assert row is not None and row.state == SyncState.SYNCED, row.last_error
    stripe_customer_id = StripeCustomer.objects.get(customer=acme).stripe_customer_id
    [remote] = stripe_invoices_of(localstripe, acme)
    assert row.stripe_invoice_id == remote.id
    assert [(line.amount, line.description) for line in remote.lines._list] == LINES
    assert remote.total == invoice.total_minor == 11141 == row.stripe_total_minor
    assert remote.currency == "usd"
    assert remote.metadata == {"tollgate_installation": "inst-a", "tollgate_invoice_id": str(invoice.pk),
                               "tollgate_number": invoice.number}
    # every write carried a key derived from our ids
    writes = [r for r in stripe_on.requests if r.method == "post"]
    assert [(r.path, r.idempotency_key) for r in writes] == [
        ("/v1/customers", f"tg-inst-a-customer-{acme.pk}"),
        ("/v1/invoices", f"tg-inst-a-invoice-{invoice.pk}"),
        ("/v1/invoiceitems", f"tg-inst-a-invoice-{invoice.pk}-line-1"),
        ("/v1/invoiceitems", f"tg-inst-a-invoice-{invoice.pk}-line-2"),
        ("/v1/invoiceitems", f"tg-inst-a-invoice-{invoice.pk}-line-3"),
        (f"/v1/invoices/{remote.id}/finalize", f"tg-inst-a-invoice-{invoice.pk}-finalize"),
    ]
    create = writes[1].form
    assert create["customer"] == stripe_customer_id
    assert create["pending_invoice_items_behavior"] == "exclude"
    assert create["auto_advance"] == "false"
    assert writes[2].form == {"customer": stripe_customer_id, "invoice": remote.id, "amount": "9900", "currency": "usd",
                              "description": "Base fee", "metadata[tollgate_installation]": "inst-a",
                              "metadata[tollgate_invoice_id]": str(invoice.pk),
                              "metadata[tollgate_line]": "1"}
    assert writes[5].form == {"auto_advance": "true"}
    assert row.stripe_status == "open"


def test_pushing_the_same_invoice_twice_creates_one_stripe_invoice(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    first = stripe_invoice_push(invoice_pk=invoice.pk)
    # a second push of a synced invoice sends nothing
    stripe_on.requests.clear()
    again = stripe_invoice_push(invoice_pk=invoice.pk)
    assert stripe_on.requests == []
    # an operator's retry of a synced invoice pushes no line and no invoice again
    stripe_invoice_sync_retry(invoice=invoice)
    StripeInvoiceSync.objects.filter(pk=first.pk).update(state=SyncState.PENDING)
    third = stripe_invoice_push(invoice_pk=invoice.pk)
    assert first.stripe_invoice_id == again.stripe_invoice_id == third.stripe_invoice_id
    assert len(stripe_invoices_of(localstripe, acme)) == 1
    assert stripe_on.calls("post", "/v1/invoices") == stripe_on.calls("post", "/v1/invoiceitems") == []


def test_a_lost_answer_to_the_invoice_creation_does_not_create_a_second_invoice(stripe_on, localstripe, acme,
                                                                                 make_invoice):
    """Stripe created the invoice but our commit of its id was lost (a crash, a timeout on the answer):
    the retry finds it by its metadata (and real Stripe would also answer the same idempotency key with it)."""
    invoice = make_invoice(acme, LINES)
    scheduled = stripe_invoice_sync_schedule(invoice=invoice)
    assert scheduled is not None
    stripe_on.fail_on = [("post", "/v1/invoiceitems")]
    stripe_invoice_push(invoice_pk=invoice.pk)
    StripeInvoiceSync.objects.filter(pk=scheduled.pk).update(stripe_invoice_id=None, next_attempt_at=None)
    stripe_on.fail_on = []
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert row.stripe_invoice_id == remote.id
    assert len(stripe_on.calls("post", "/v1/invoices")) == 1
    assert remote.total == invoice.total_minor
    # found by one metadata search, not by reading the customer's invoices page by page
    before_creating, retried = stripe_on.calls("get", "/v1/invoices/search")
    assert before_creating.form == retried.form
    assert f"metadata['tollgate_invoice_id']:'{invoice.pk}'" in retried.form["query"]
    assert stripe_on.calls("get", "/v1/invoices") == []


def _lose_the_created_invoice(stripe_on, invoice):
    scheduled = stripe_invoice_sync_schedule(invoice=invoice)
    assert scheduled is not None
    stripe_on.fail_on = [("post", "/v1/invoiceitems")]
    stripe_invoice_push(invoice_pk=invoice.pk)
    StripeInvoiceSync.objects.filter(pk=scheduled.pk).update(stripe_invoice_id=None, next_attempt_at=None)
    stripe_on.fail_on = []


def test_a_retry_before_the_search_index_has_the_invoice_gets_it_from_the_idempotency_key(
        stripe_on, localstripe, acme, make_invoice):
    """Stripe's search lags behind a creation by up to a minute; a retry in that minute is inside the
    24-hour idempotency window, so creating again answers with the invoice created first."""
    invoice = make_invoice(acme, LINES)
    _lose_the_created_invoice(stripe_on, invoice)
    stripe_on.search_unindexed = {r.id for r in stripe_invoices_of(localstripe, acme)}
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert row.stripe_invoice_id == remote.id
    first, retried = stripe_on.calls("post", "/v1/invoices")
    assert first.idempotency_key == retried.idempotency_key


def test_a_server_without_search_is_read_page_by_page(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES)
    _lose_the_created_invoice(stripe_on, invoice)
    stripe_on.search_available = False  # answered by localstripe itself: 404
    stripe_on.rules.keys.clear()  # past Stripe's 24 hours: only the lookup can find it
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert row.stripe_invoice_id == remote.id
    assert len(stripe_on.calls("post", "/v1/invoices")) == 1
    assert len(stripe_on.calls("get", "/v1/invoices")) == 1


def test_an_invoice_pushed_twice_concurrently_is_one_stripe_invoice(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    # the first holder of the lease pushes; a second worker arriving meanwhile leaves the row alone
    row = StripeInvoiceSync.objects.get(invoice=invoice)
    StripeInvoiceSync.objects.filter(pk=row.pk).update(leased_until=timezone.now() + timedelta(minutes=1))
    assert stripe_invoice_push(invoice_pk=invoice.pk).state == SyncState.PENDING
    assert stripe_on.requests == []


def test_applied_credits_become_one_negative_item_so_totals_match(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES, credits_minor=2000)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert remote.lines._list[-1].amount == -2000
    assert remote.total == invoice.total_minor == 9141


def test_the_invoices_tax_becomes_one_item_so_totals_match(stripe_on, localstripe, acme, make_invoice, settings):
    settings.TOLLGATE_TAX_LABEL = "VAT"
    invoice = make_invoice(acme, LINES, credits_minor=2000, tax_minor=1737, tax_rate=Decimal("19"))
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert [(line.amount, line.description) for line in remote.lines._list[-2:]] == [
        (1737, "VAT 19%"), (-2000, "Prepaid credits applied")]
    assert remote.total == invoice.total_minor == 9141 + 1737


def test_lines_that_do_not_add_up_fail_without_pushing_anything(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES, total_minor=1)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.FAILED
    assert "add up" in row.last_error
    assert localstripe.objects("invoice") == []


def test_a_stripe_outage_leaves_the_push_pending_and_a_later_retry_completes_it_once(stripe_on, localstripe, acme,
                                                                                     make_invoice):
    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    # given Stripe is down
    localstripe.stop()
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.PENDING
    assert row.attempts == 1 and "APIConnectionError" in row.last_error
    assert row.next_attempt_at is not None and row.next_attempt_at > timezone.now()
    # the beat sweep does not retry before the backoff is over
    assert stripe_sync_pending()["invoices"] == 0
    # when Stripe is back and the backoff is over
    localstripe.start()
    done = stripe_sync_pending(now=after_backoff(row))
    # then
    assert done["invoices"] == 1
    row.refresh_from_db()
    assert row.state == SyncState.SYNCED and row.last_error == ""
    [remote] = stripe_invoices_of(localstripe, acme)
    assert [line.amount for line in remote.lines._list] == [9900, 1234, 7]
    assert len(localstripe.objects("customer")) == 1


def test_an_outage_in_the_middle_continues_from_the_last_pushed_line(stripe_on, localstripe, acme, make_invoice):
    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    stripe_on.down = True  # finalize (answered by the recording client) fails like an outage
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.PENDING
    assert row.items.count() == 3
    stripe_on.down = False
    stripe_on.requests.clear()
    stripe_sync_pending(now=after_backoff(row))
    row = StripeInvoiceSync.objects.get(invoice=invoice)
    assert row.state == SyncState.SYNCED
    assert [r.path.rsplit("/", 1)[-1] for r in stripe_on.requests if r.method == "post"] == ["finalize"]
    [remote] = stripe_invoices_of(localstripe, acme)
    assert len(remote.lines._list) == 3


def test_the_finalized_signal_queues_the_push(stripe_on, localstripe, celery_eager, acme, make_invoice,
                                              django_capture_on_commit_callbacks):
    invoice = make_invoice(acme, LINES)
    with django_capture_on_commit_callbacks(execute=True):
        invoice_finalized.send(sender=type(invoice), invoice_id=invoice.pk)
    assert StripeInvoiceSync.objects.get(invoice=invoice).state == SyncState.SYNCED


def test_a_plan_billed_with_stripe_meters_pushes_no_invoice(stripe_on, acme, make_invoice):
    from billing.catalog.models import Plan

    plan = Plan.objects.create(key="metered", name="Metered", currency="USD")
    plan_billing_mode_set(plan=plan, mode=BillingMode.STRIPE_METERS)
    invoice = make_invoice(acme, LINES, plan=plan)
    assert stripe_invoice_sync_schedule(invoice=invoice) is None
    assert stripe_sync_pending()["invoices"] == 0
    assert not StripeInvoiceSync.objects.exists()


def test_without_a_secret_key_nothing_is_sent(settings, stripe_http, db):
    settings.STRIPE_SECRET_KEY = ""
    customer = customer_create(external_id="quiet", name="Quiet")
    assert StripeCustomer.objects.get(customer=customer).state == SyncState.PENDING
    assert stripe_sync_pending() == {}
    assert stripe_http.requests == []


# --- Tollgate settles an invoice itself: Stripe follows ------------------------------------------------------
@pytest.mark.parametrize(("service", "path", "status"), [
    ("invoice_void", "void", "void"),
    ("invoice_mark_paid", "pay", "paid"),
    ("invoice_mark_uncollectible", "mark_uncollectible", "uncollectible"),
])
def test_a_status_set_in_tollgate_is_sent_to_stripe(stripe_on, localstripe, celery_eager, acme, make_invoice,
                                                    django_capture_on_commit_callbacks, service, path, status):
    from billing.invoicing import services as invoicing

    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    stripe_on.requests.clear()
    with django_capture_on_commit_callbacks(execute=True):
        getattr(invoicing, service)(invoice=invoice, at=timezone.now())
    [call] = [r for r in stripe_on.requests if r.method == "post"]
    suffix = path.replace("mark_", "").replace("pay", "paid")
    assert (call.path, call.idempotency_key) == (f"/v1/invoices/{row.stripe_invoice_id}/{path}",
                                                 f"tg-inst-a-invoice-{invoice.pk}-{suffix}")
    if path == "pay":
        assert call.form == {"paid_out_of_band": "true"}
    row.refresh_from_db()
    assert (row.state, row.stripe_status) == (SyncState.SYNCED, status)


def test_a_status_that_came_from_a_stripe_webhook_is_not_sent_back(stripe_on, localstripe, celery_eager, acme, make_invoice,
                                                                   django_capture_on_commit_callbacks):
    from billing.invoicing.services import invoice_mark_paid

    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    StripeInvoiceSync.objects.filter(pk=row.pk).update(stripe_status="paid")  # as the invoice.paid handler does
    stripe_on.requests.clear()
    with django_capture_on_commit_callbacks(execute=True):
        invoice_mark_paid(invoice=invoice, at=timezone.now())
    assert stripe_on.requests == []


def test_voiding_in_tollgate_a_stripe_invoice_already_paid_is_a_visible_conflict(stripe_on, localstripe, celery_eager,
                                                                                acme, make_invoice,
                                                                                django_capture_on_commit_callbacks):
    from billing.invoicing.services import invoice_void

    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    StripeInvoiceSync.objects.filter(pk=row.pk).update(stripe_status="paid")  # paid in Stripe, webhook not yet here
    with django_capture_on_commit_callbacks(execute=True):
        invoice_void(invoice=invoice, at=timezone.now())
    row.refresh_from_db()
    assert row.state == SyncState.FAILED
    assert "by hand" in row.last_error


def test_an_invoice_settled_in_tollgate_before_its_push_is_not_sent(stripe_on, localstripe, acme, make_invoice):
    from billing.invoicing.services import invoice_void

    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    invoice_void(invoice=invoice, at=timezone.now())
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row.state == SyncState.SYNCED and row.stripe_invoice_id is None
    assert [r for r in stripe_on.requests if r.path.startswith("/v1/invoices")] == []


def test_an_invoice_voided_in_tollgate_during_its_push_is_voided_in_stripe_next(stripe_on, localstripe, acme, make_invoice,
                                                                             monkeypatch):
    from billing.invoicing.services import invoice_void
    from billing.payments.gateway import StripeGateway

    invoice = make_invoice(acme, LINES)
    stripe_invoice_sync_schedule(invoice=invoice)
    real_finalize = StripeGateway.invoice_finalize

    def finalize_then_void(self, **kwargs):
        answer = real_finalize(self, **kwargs)
        invoice_void(invoice=invoice, at=timezone.now())  # its own task finds the lease taken
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(StripeGateway, "invoice_finalize", finalize_then_void)
        row = stripe_invoice_push(invoice_pk=invoice.pk)
        assert (row.state, row.stripe_status, row.next_attempt_at) == (SyncState.PENDING, "open", None)
    stripe_sync_pending()
    row.refresh_from_db()
    assert (row.state, row.stripe_status) == (SyncState.SYNCED, "void")
    assert len(stripe_on.calls("post", rf"/v1/invoices/{row.stripe_invoice_id}/void")) == 1


def test_an_invoice_finalized_by_period_close_reaches_stripe_to_the_cent(stripe_on, localstripe, celery_eager, acme,
                                                                        django_capture_on_commit_callbacks):
    """The whole path: events, rollups, period close, finalization, the signal, the task, the push."""
    from billing.catalog.services import catalog_import
    from billing.invoicing.models import Invoice
    from tests.billing.invoicing.test_invoice_lifecycle import CATALOG, NOV, OCT, accepted, close, ev, send, subscribe

    catalog_import(text=CATALOG, actor="t")
    subscribe(acme, OCT)
    accepted(send(ev("a", "2026-10-10T00:00:00Z", "1234.5"), ev("b", "2026-10-11T00:00:00Z", meter="api_calls"),
                  ev("c", "2026-10-12T00:00:00Z", "3", meter="api_calls"), now=NOV))
    with django_capture_on_commit_callbacks(execute=True):
        [invoice] = close(NOV + timedelta(hours=1))
    invoice = Invoice.objects.get(pk=invoice.pk)
    row = StripeInvoiceSync.objects.get(invoice=invoice)
    assert row.state == SyncState.SYNCED, row.last_error
    [remote] = stripe_invoices_of(localstripe, acme)
    assert [line.amount for line in remote.lines._list] == list(invoice.lines.order_by("position").values_list(
        "amount_minor", flat=True))
    assert remote.total == invoice.total_minor == row.stripe_total_minor
    assert invoice.total_minor > 1000
