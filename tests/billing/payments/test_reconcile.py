"""The daily reconciliation: every pushed invoice read back from Stripe and compared with ours (status and
total); what differs is recorded as drift on the row and shown in the console, nothing is changed."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model

from billing.invoicing.models import Invoice
from billing.payments.models import StripeInvoiceSync, SyncState
from billing.payments.reconcile import stripe_invoices_reconcile
from billing.payments.services import stripe_invoice_push, stripe_invoice_sync_schedule

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)


def pushed(localstripe, customer, make_invoice, month: int) -> StripeInvoiceSync:
    invoice = make_invoice(customer, [(1000 * month, "Base fee")], month=month)
    stripe_invoice_sync_schedule(invoice=invoice)
    row = stripe_invoice_push(invoice_pk=invoice.pk)
    assert row is not None and row.state == SyncState.SYNCED and row.stripe_status == "open"
    [remote] = [inv for inv in localstripe.objects("invoice") if inv.id == row.stripe_invoice_id]
    remote._draft = False  # what Stripe's finalize did (localstripe lacks it: the recording client answered)
    return row


def test_drift_is_found_recorded_and_shown_and_a_matching_invoice_is_clean(stripe_on, localstripe, acme, make_invoice,
                                                                           client):
    clean, voided_behind, edited = (pushed(localstripe, acme, make_invoice, m) for m in (1, 2, 3))
    remotes = {inv.id: inv for inv in localstripe.objects("invoice")}
    remotes[voided_behind.stripe_invoice_id]._voided = True  # voided in Stripe, its webhook missed for good
    remotes[edited.stripe_invoice_id].lines._list[0].amount = 2500  # changed by hand in Stripe's dashboard
    assert stripe_invoices_reconcile(now=NOW) == {"checked": 3, "drift": 2}
    for row in (clean, voided_behind, edited):
        row.refresh_from_db()
        assert row.reconciled_at == NOW
    assert clean.drift == ""
    assert voided_behind.drift == "Stripe status void, recorded open; Stripe void but the Tollgate invoice is finalized"
    assert edited.drift == "Stripe total 2500, ours 3000 (minor units)"
    # nothing was changed by the check
    assert Invoice.objects.get(pk=voided_behind.invoice_id).status == Invoice.Status.FINALIZED
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    page = client.get("/console/invoices/").content.decode()
    assert "drift:</strong> Stripe total 2500" in page and "drift 2" in page


def test_an_outage_stops_the_run_and_the_next_goes_on_from_the_least_recently_checked(stripe_on, localstripe, acme,
                                                                                      make_invoice):
    _, second = (pushed(localstripe, acme, make_invoice, m) for m in (1, 2))
    stripe_on.fail_on.append(("get", f"/v1/invoices/{second.stripe_invoice_id}"))
    assert stripe_invoices_reconcile(now=NOW) == {"checked": 1, "drift": 0}
    stripe_on.fail_on.clear()
    assert stripe_invoices_reconcile(now=NOW.replace(day=3), limit=1) == {"checked": 1, "drift": 0}
    second.refresh_from_db()
    assert second.reconciled_at == NOW.replace(day=3)


def test_nothing_is_checked_while_stripe_is_off(acme, make_invoice, settings):
    settings.STRIPE_SECRET_KEY = ""
    assert stripe_invoices_reconcile(now=NOW) == {"checked": 0, "drift": 0}
