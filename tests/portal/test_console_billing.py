"""The console's billing flows of a customer: its plan (assign, change at the next period or on a date,
cancel), prepaid credits, and its invoices (prepare, finalize, mark paid, void with a credit note). Each is
proved by what it stored, its error beside the input, and its audit entry with the staff user as actor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.catalog.models import Plan, Subscription
from billing.catalog.services import subscription_set
from billing.common.calendar import next_period_start, period_bounds, previous_period
from billing.customers.models import Customer
from billing.guardrails.models import CreditGrant
from billing.guardrails.selectors import customer_balance
from billing.invoicing.models import Invoice
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
HTMX = {"HTTP_HX_REQUEST": "true"}
CHARGE = {"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}


@pytest.fixture
def ops(db: None) -> Any:
    return get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)


@pytest.fixture
def staff(client: Any, ops: Any) -> Any:
    client.force_login(ops)
    return client


@pytest.fixture
def plans(db: None) -> None:
    from billing.catalog.services import catalog_import

    catalog_import(text=factories.catalog(factories.plan("pro", [CHARGE], base_fee="49"),
                                          factories.plan("basic", [CHARGE], base_fee="9")), actor="t")


def page(response: Any) -> str:
    return unescape(response.content.decode())


def by(action: str, user: Any) -> AuditEntry:
    found = AuditEntry.objects.filter(action=action).order_by("-id").first()
    assert found is not None, (action, list(AuditEntry.objects.values_list("action", flat=True)))
    assert (found.actor_type, found.actor_id, found.actor_label) == ("user", str(user.pk), user.get_username())
    return found


def test_a_customer_without_a_plan_is_put_on_one_now(staff: Any, ops: Any, acme: Customer, plans: None) -> None:
    response = staff.post("/console/customers/acme-co/subscription", {"plan": "pro", "when": "next_period"}, **HTMX)

    subscription = Subscription.objects.get(customer=acme)
    assert subscription.plan.key == "pro" and subscription.end is None
    assert subscription.start <= datetime.now(timezone.utc)
    assert "<html" not in page(response) and 'data-plan="pro" data-current="1"' in page(response)
    assert by("subscription.created", ops).object_id == str(subscription.pk)


def test_a_plan_change_takes_effect_at_the_next_period_or_on_a_date(staff: Any, ops: Any, acme: Customer,
                                                                   plans: None) -> None:
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40), now=now, actor="t")

    staff.post("/console/customers/acme-co/subscription", {"plan": "basic", "when": "next_period"}, **HTMX)

    rows = list(Subscription.objects.filter(customer=acme).order_by("start"))
    assert [(r.plan.key, r.end) for r in rows] == [("pro", next_period_start(now)), ("basic", None)]
    assert rows[1].start == next_period_start(now)
    assert by("subscription.ended", ops).object_id == str(rows[0].pk)

    on = (next_period_start(now) + timedelta(days=40)).replace(hour=12, minute=0, second=0, microsecond=0)
    response = staff.post("/console/customers/acme-co/subscription",
                          {"plan": "basic", "when": "date", "start": on.strftime("%Y-%m-%dT%H:%M")}, **HTMX)

    assert "On Basic from" in page(response)
    assert Subscription.objects.filter(customer=acme, plan__key="basic", start=next_period_start(now)).exists()


def test_a_plan_change_without_its_date_or_in_the_past_is_refused_beside_the_date(staff: Any, acme: Customer,
                                                                                 plans: None) -> None:
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=40), now=now, actor="t")

    missing = page(staff.post("/console/customers/acme-co/subscription", {"plan": "basic", "when": "date"}, **HTMX))
    past = page(staff.post("/console/customers/acme-co/subscription",
                           {"plan": "basic", "when": "date",
                            "start": (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")}, **HTMX))

    assert 'data-error-for="start">Give the date and time the new plan starts.' in missing
    assert 'data-error-for="start">The subscription in effect since' in past
    assert past.count("cannot be ended in the past") == 1 and "data-error-summary" in past
    assert Subscription.objects.filter(customer=acme).count() == 1


def test_a_plan_is_cancelled_at_the_end_of_the_period(staff: Any, ops: Any, acme: Customer, plans: None) -> None:
    now = datetime.now(timezone.utc)
    subscription = subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=3),
                                    now=now, actor="t")

    past = page(staff.post("/console/customers/acme-co/subscription/cancel",
                           {"when": "date", "end": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")}, **HTMX))
    done = page(staff.post("/console/customers/acme-co/subscription/cancel", {"when": "period_end"}, **HTMX))

    assert 'data-error-for="end">A plan ends now or later, never in the past.' in past
    subscription.refresh_from_db()
    assert subscription.end == next_period_start(now)
    assert "Pro ends" in done
    cancelled = by("subscription.cancelled", ops)
    assert cancelled.before is not None and cancelled.before["end"] is None


def test_credits_are_granted_once_per_form_and_what_remains_is_shown(staff: Any, ops: Any, acme: Customer) -> None:
    form = {"amount": "25.50", "currency": "usd", "reason": "welcome", "idempotency_key": "console-abc"}

    first = page(staff.post("/console/customers/acme-co/credits", form, **HTMX))
    staff.post("/console/customers/acme-co/credits", form, **HTMX)  # a double submit

    grant = CreditGrant.objects.get(customer=acme)
    assert (grant.amount, grant.currency, grant.reason) == (Decimal("25.50"), "USD", "welcome")
    assert customer_balance(customer=acme, now=datetime.now(timezone.utc))["credits"][0]["available"] == "25.5"
    assert 'data-currency="USD" data-available="25.5"' in first and 'data-grant="console-abc"' in first
    assert by("credits.granted", ops).object_id == str(grant.pk)
    assert AuditEntry.objects.filter(action="credits.granted").count() == 1


def test_a_bad_grant_is_refused_beside_its_inputs(staff: Any, acme: Customer) -> None:
    response = staff.post("/console/customers/acme-co/credits",
                          {"amount": "-5", "currency": "XXX", "idempotency_key": "k1"})
    negative = page(staff.post("/console/customers/acme-co/credits",
                               {"amount": "-5", "currency": "USD", "idempotency_key": "k2"}, **HTMX))

    assert response.status_code == 422
    assert 'data-error-for="currency">Unsupported currency \'XXX\'.' in page(response)
    assert 'data-error-for="amount">Must be a positive amount.' in negative
    assert negative.count("Must be a positive amount.") == 1
    assert not CreditGrant.objects.exists()


@pytest.fixture
def billed(acme: Customer, plans: None) -> tuple[datetime, datetime]:
    """acme on pro since two periods ago: at least the first of them has ended past its grace time."""
    now = datetime.now(timezone.utc)
    start = previous_period(previous_period(period_bounds(now)[0])[0])[0]
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=start, now=now, actor="t")
    return start, now


def test_the_operator_prepares_finalizes_and_marks_an_invoice_paid(staff: Any, ops: Any, billed: Any) -> None:
    start, _ = billed

    prepared = staff.post("/console/invoices/prepare", {"customer": "acme-co"}, follow=True)

    assert by("period.closed", ops)
    draft = Invoice.objects.get(period_start=start, kind="invoice")
    assert draft.status == "draft" and "draft(s) to review and finalize" in page(prepared)
    assert f'id="invoice-{draft.pk}" data-status="draft"' in page(prepared)

    finalized = page(staff.post(f"/console/invoices/{draft.pk}/finalize", {"customer": "acme-co"}, follow=True))

    draft.refresh_from_db()
    assert draft.status == "finalized" and draft.number and draft.total_minor == 4900
    assert f"Invoice {draft.number} finalized." in finalized
    assert by("invoice.finalized", ops).object_id == str(draft.pk)

    staff.post(f"/console/invoices/{draft.pk}/mark-paid")

    draft.refresh_from_db()
    assert draft.status == "paid" and by("invoice.paid", ops).object_id == str(draft.pk)


def test_a_voided_invoice_gets_a_credit_note(staff: Any, ops: Any, billed: Any) -> None:
    start, _ = billed
    staff.post("/console/invoices/prepare")
    invoice = Invoice.objects.get(period_start=start, kind="invoice")
    staff.post(f"/console/invoices/{invoice.pk}/finalize")

    staff.post(f"/console/invoices/{invoice.pk}/void", {"reason": "billed twice"})

    invoice.refresh_from_db()
    note = Invoice.objects.get(corrects=invoice, kind="credit_note")
    assert invoice.status == "void" and note.total_minor == -invoice.total_minor and note.reason == "billed twice"
    assert by("invoice.void", ops).object_id == str(invoice.pk)


def test_an_open_period_is_not_finalized_and_says_why(staff: Any, acme: Customer, plans: None) -> None:
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(hours=1), now=now, actor="t")
    factories.send(factories.event("e1", now - timedelta(minutes=1), "100"))
    from billing.invoicing.services import invoice_draft_refresh

    draft = invoice_draft_refresh(customer=acme, period_start=now)
    assert draft is not None

    response = page(staff.post(f"/console/invoices/{draft.pk}/finalize", follow=True))

    draft.refresh_from_db()
    assert draft.status == "draft" and "period is still open" in response


def test_an_override_saved_from_the_customers_page_link_is_audited_with_the_operator(staff: Any, ops: Any,
                                                                                     acme: Customer, plans: None) -> None:
    guardrails = "/console/customers/acme-co/guardrails/"
    assert f'href="{guardrails}"' in page(staff.get("/console/customers/acme-co/"))

    saved = staff.post(f"{guardrails}override", {"limit-llm_tokens-hard": "100", "spend_cap_mode": "plan"})

    assert saved.status_code == 302
    put = by("override.put", ops)
    assert put.after is not None and "100" in str(put.after)


def test_a_cancel_drops_the_change_scheduled_after_it_and_without_a_plan_says_so(staff: Any, ops: Any, acme: Customer,
                                                                                 globex: Customer, plans: None) -> None:
    now = datetime.now(timezone.utc)
    subscription_set(customer=acme, plan=Plan.objects.get(key="pro"), start=now - timedelta(days=3), now=now, actor="t")
    staff.post("/console/customers/acme-co/subscription", {"plan": "basic", "when": "next_period"})
    on = (now + timedelta(days=1)).replace(second=0, microsecond=0)

    staff.post("/console/customers/acme-co/subscription/cancel", {"when": "date", "end": on.strftime("%Y-%m-%dT%H:%M")})
    nothing = page(staff.post("/console/customers/globex/subscription/cancel", {"when": "period_end"}, **HTMX))

    assert [(s.plan.key, s.end) for s in Subscription.objects.filter(customer=acme)] == [("pro", on)]
    dropped = by("subscription.deleted", ops)
    assert dropped.before is not None and dropped.after is None
    assert 'data-error-for="cancel">The customer has no plan at that time to end.' in nothing
    assert nothing.count("no plan at that time") == 1
