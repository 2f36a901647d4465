"""Invoice reads: lists, one invoice for a caller, and the replay check (``invoice verify``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from billing.catalog import money
from billing.catalog.models import Plan
from billing.catalog.ratecard import RateCard
from billing.catalog.selectors import plan_subscriptions_now
from billing.common.auth import Principal
from billing.common.calendar import period_bounds
from billing.common.errors import CommonCode, DomainError
from billing.common.fields import decimal_to_text
from billing.invoicing.compute import invoice_compute
from billing.invoicing.lines import Line, Segment, period_cuts, period_parts, price_parts, price_period
from billing.invoicing.models import Invoice
from billing.invoicing.rows import events_digest, meters_by_pk, period_rows
from billing.invoicing.tax import TaxTerms


def invoices_list(*, principal: Principal | None, customer_pk: int | None = None, status: str | None = None
                  ) -> QuerySet[Invoice]:
    qs = Invoice.objects.select_related("customer").order_by("-period_start", "-id")
    if principal is not None and principal.customer_id is not None:
        qs = qs.filter(customer_id=principal.customer_id)
    if customer_pk is not None:
        qs = qs.filter(customer_id=customer_pk)
    if status:
        qs = qs.filter(status=status)
    return qs


def invoice_get(*, pk: Any, principal: Principal | None) -> Invoice:
    """One invoice as this caller may see it; another tenant's invoice is a plain 404."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise DomainError(CommonCode.NOT_FOUND, "No such invoice.") from None
    invoice = invoices_list(principal=principal).prefetch_related("lines").filter(pk=pk).first()
    if invoice is None:
        raise DomainError(CommonCode.NOT_FOUND, "No such invoice.")
    return invoice


def invoice_parties(*, invoice: Invoice) -> dict[str, dict[str, str]]:
    """Who sells and who is billed, as printed: frozen on the invoice when it is finalized (a later change of
    address or tax id never rewrites an issued invoice), read live for a draft."""
    if invoice.parties:
        return invoice.parties
    seller, customer = settings.TOLLGATE_SELLER, invoice.customer
    return {
        "seller": {"name": seller["name"], "address": seller["address"], "tax_id": seller.get("tax_id", ""),
                   "email": seller["email"]},
        "buyer": {"id": customer.external_id, "name": customer.name, "address": customer.billing_address,
                  "tax_id": customer.tax_id, "email": customer.invoice_email or customer.email},
    }


def invoice_as_dict(invoice: Invoice) -> dict[str, Any]:
    currency = invoice.currency

    def major(minor: int) -> str:
        return str(money.from_minor(minor, currency))

    return {
        "id": invoice.pk, "number": invoice.number, "kind": invoice.kind, "status": invoice.status,
        "customer": invoice.customer.external_id, "plan": invoice.plan.key if invoice.plan else None,
        "currency": currency,
        "period": {"start": invoice.period_start.isoformat().replace("+00:00", "Z"),
                   "end": invoice.period_end.isoformat().replace("+00:00", "Z")},
        "lines": [{"position": line.position, "kind": line.kind, "description": line.description, "meter": line.meter or None,
                   "model": line.model or None, "quantity": decimal_to_text(line.billed_quantity),
                   "unit_price": decimal_to_text(line.billed_unit_price) if line.billed_unit_price is not None else None,
                   "amount": major(line.amount_minor), "amount_minor": line.amount_minor, "detail": line.detail}
                  for line in invoice.lines.all()],
        "subtotal": major(invoice.subtotal_minor), "subtotal_minor": invoice.subtotal_minor,
        "credits": major(invoice.credits_minor), "credits_minor": invoice.credits_minor,
        "tax": major(invoice.tax_minor or 0), "tax_minor": invoice.tax_minor or 0,
        "tax_rate": decimal_to_text(invoice.tax_rate) if invoice.tax_rate is not None else None,
        "tax_note": invoice.tax_note or None,
        "total": major(invoice.total_minor), "total_minor": invoice.total_minor,
        "issued_at": invoice.finalized_at, "due_at": invoice.due_at, **invoice_parties(invoice=invoice),
        "versions": invoice.versions, "events_hash": invoice.events_hash or None, "events_count": invoice.events_count,
        "corrects": invoice.corrects.number if invoice.corrects_id and invoice.corrects else None,
        "finalized_at": invoice.finalized_at, "paid_at": invoice.paid_at, "voided_at": invoice.voided_at,
    }


def invoice_verify(*, invoice: Invoice) -> list[str]:
    """Recompute a finalized invoice from the raw events alone and compare it to the cent: lines, totals,
    the rate-card versions and the event-set hash. Returns the differences (empty when it matches)."""
    if invoice.kind != Invoice.Kind.INVOICE or invoice.status == Invoice.Status.DRAFT:
        return []
    problems = []
    label = invoice.number or str(invoice.pk)
    digest, count = events_digest(customer=invoice.customer, start=invoice.period_start, end=invoice.period_end)
    if (digest, count) != (invoice.events_hash, invoice.events_count):
        problems.append(f"{label}: the period's events changed ({invoice.events_count} -> {count} events, hash differs)")
    # credits come from the ledger (not from events): replay with the credits the invoice applied
    from billing.invoicing.compute import credits_consumed

    consumed = credits_consumed(customer=invoice.customer, currency=invoice.currency, start=invoice.period_start)
    terms = TaxTerms(invoice.tax_rate or Decimal(0), invoice.tax_note or None)  # the terms it was issued with
    again = invoice_compute(customer=invoice.customer, start=invoice.period_start, end=invoice.period_end, source="raw",
                            credits=consumed, tax=terms)
    if again is None:
        return [*problems, f"{label}: no plan for the period any more"]
    if again.versions != sorted(invoice.versions):
        problems.append(f"{label}: priced with versions {invoice.versions}, the rate cards now say {again.versions}")
    stored = [(line.kind, line.description, line.meter, line.amount_minor, decimal_to_text(line.billed_quantity))
              for line in invoice.lines.order_by("position")]
    fresh = [line.key() for line in again.lines]
    for index in range(max(len(stored), len(fresh))):
        have = stored[index] if index < len(stored) else None
        want = fresh[index] if index < len(fresh) else None
        if have != want:
            problems.append(f"{label}: line {index + 1} is {have}, raw events give {want}")
    for name in ("subtotal_minor", "credits_minor", "tax_minor", "total_minor"):
        if (getattr(invoice, name) or 0) != getattr(again, name):
            problems.append(f"{label}: {name} is {getattr(invoice, name)}, raw events give {getattr(again, name)}")
    return problems


def draft_comparison(*, plan: Plan, card: RateCard, now: datetime, customer_id: str = "") -> list[dict[str, Any]]:
    """Each current subscriber of ``plan`` with the open period priced as it stands and under the draft
    ``card`` (the console's simulation), largest first. Each customer's usage is read once for
    both prices, and the meters once for all customers. ``customer_id``: only that customer."""
    start, end = period_bounds(now)
    meters = meters_by_pk()
    out: list[dict[str, Any]] = []
    for sub in plan_subscriptions_now(plan=plan, now=now):
        customer = sub.customer
        if customer_id and customer.external_id != customer_id:  # one customer's simulation
            continue
        parts = period_parts(customer=customer, start=start, end=end)
        usage, _ = period_rows(customer=customer, start=start, end=end, cuts=period_cuts(parts), meters=meters)
        estimates = price_parts(customer=customer, parts=parts, start=start, end=end, rows=usage, meters=meters)
        current_minor = sum(estimate.subtotal_minor for estimate in estimates)
        draft = price_period(customer=customer, plan=plan, start=start, end=end,
                             segments=[Segment(start, end, card, None)], rows=usage, meters=meters)
        out.append({"customer": customer, "current": money.from_minor(current_minor, plan.currency),
                    "draft": money.from_minor(draft.subtotal_minor, plan.currency),
                    "difference": money.from_minor(draft.subtotal_minor - current_minor, plan.currency),
                    "lines": line_differences([line for e in estimates for line in e.lines], draft.lines,
                                              plan.currency)})
    out.sort(key=lambda r: r["current"], reverse=True)
    return out


def line_differences(current: list[Line], draft: list[Line], currency: str) -> list[dict[str, Any]]:
    """The simulation's lines: each invoice line (matched by kind, description, pricing model and order) as
    priced now and under the draft, with its quantity and amount on each side and the difference; a line
    on one side only shows a blank on the other."""
    keyed: dict[tuple[Any, ...], dict[str, Any]] = {}
    for side, lines in (("current", current), ("draft", draft)):
        seen: dict[tuple[Any, ...], int] = {}
        for line in lines:
            base = (line.kind, line.description, line.model or "")
            seen[base] = seen.get(base, 0) + 1
            label = f"{line.description} ({line.model.replace('_', ' ')})" if line.model else line.description
            row = keyed.setdefault((*base, seen[base]), {
                "description": label, "current_quantity": None, "current_amount": None, "draft_quantity": None,
                "draft_amount": None})
            row[f"{side}_quantity"] = line.quantity
            row[f"{side}_amount"] = money.round_to_minor(line.amount, currency)
    for row in keyed.values():
        row["difference"] = money.round_to_minor((row["draft_amount"] or Decimal(0)) - (row["current_amount"] or Decimal(0)),
                                                 currency)
    return list(keyed.values())
