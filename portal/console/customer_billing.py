"""The billing sections of a customer's console page: its plan (assign, change at the next period or on a
date, cancel) and its prepaid credits (grant; the list with what remains). Each view calls one service."""

from __future__ import annotations

from datetime import datetime, timezone

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from billing.catalog.selectors import plan_get
from billing.catalog.services import subscription_set
from billing.catalog.subscriptions import subscription_cancel
from billing.common.errors import DomainError
from billing.guardrails.services import credits_grant
from portal.console import selectors
from portal.console.customer_forms import CancelForm, CreditGrantForm, SubscriptionForm, apply_error
from portal.console.customers import customer_or_404, section
from portal.console.views import staff_required


def _utc(value: datetime | None) -> datetime | None:
    """The form's datetime-local is UTC (the console works in UTC)."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


@staff_required
@require_POST
def subscription_assign(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    now = datetime.now(timezone.utc)
    form = SubscriptionForm(request.POST, plans=selectors.customer_page(customer=customer, now=now)["plans"])
    if form.is_valid():
        data = form.cleaned_data
        start = {"now": now, "date": _utc(data["start"])}.get(data["when"])
        try:
            subscription = subscription_set(customer=customer, plan=plan_get(key=data["plan"]), start=start, now=now,
                                            actor=request.user.get_username())
        except DomainError as exc:
            apply_error(form, exc, {"": "plan"})
        else:
            return section(request, customer, "subscription",
                           notice=f"On {subscription.plan.name} from {subscription.start:%Y-%m-%d %H:%M} UTC.")
    return section(request, customer, "subscription", failed=True, subscription_form=form)


@staff_required
@require_POST
def subscription_end(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    form = CancelForm(request.POST)
    if form.is_valid():
        end = _utc(form.cleaned_data["end"]) if form.cleaned_data["when"] == "date" else None
        try:
            ended = subscription_cancel(customer=customer, end=end, now=datetime.now(timezone.utc),
                                        actor=request.user.get_username())
        except DomainError as exc:
            apply_error(form, exc)
        else:
            assert ended.end is not None
            return section(request, customer, "subscription",
                           notice=f"{ended.plan.name} ends {ended.end:%Y-%m-%d %H:%M} UTC.")
    return section(request, customer, "subscription", failed=True, cancel_form=form)


@staff_required
@require_POST
def credit_grant(request: HttpRequest, customer_id: str) -> HttpResponse:
    customer = customer_or_404(customer_id)
    form = CreditGrantForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            grant, _ = credits_grant(customer=customer, amount=data["amount"], currency=data["currency"],
                                     idempotency_key=data["idempotency_key"], reason=data["reason"],
                                     actor=request.user.get_username())
        except DomainError as exc:
            apply_error(form, exc, {"idempotency_key": "amount"})
        else:
            return section(request, customer, "credits", notice=f"Granted {grant.amount} {grant.currency}.")
    return section(request, customer, "credits", failed=True, grant_form=form)
