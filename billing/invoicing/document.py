"""The invoice document: what a finance team reads, as HTML (``/invoices/<id>/``) and as PDF (WeasyPrint,
``/invoices/<id>.pdf``, the API and the email). One context feeds both, so they never disagree.

Every amount is printed with ``money.format_display`` (the one rounding rule, the currency's minor digits,
thousands separators); each charge says its pricing in words, with its tiers, from the rate-card version
the line was priced with.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from billing.catalog import money, pricing
from billing.catalog.models import Meter, RateCardVersion
from billing.common.fields import decimal_to_text
from billing.invoicing.models import Invoice, InvoiceLine
from billing.invoicing.selectors import invoice_parties

log = logging.getLogger(__name__)
DRAFT_NOTICE = "Draft — not a request for payment"


class PdfUnavailable(Exception):
    """WeasyPrint (or the Pango library it needs) is not installed: no PDF can be rendered."""


def _qty(value: Decimal) -> str:
    """1234567.5 -> 1,234,567.5: exact, thousands separators, no trailing zeros."""
    text = decimal_to_text(value)
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.lstrip("-").partition(".")
    return sign + f"{int(whole):,}" + ("." + frac if frac else "")


def _price(value: Decimal) -> str:
    return decimal_to_text(value)


def _plural(unit: str) -> str:
    return f"{unit}s" if unit and not unit.endswith("s") else unit


def charge_in_words(spec: pricing.ChargeSpec, unit: str, currency: str) -> str:
    """How a charge is priced, in a sentence (tiers included): what the line's customer needs to check it."""
    units = _plural(unit)
    if spec.model == "per_unit":
        return f"{_price(spec.unit_price)} {currency} per {unit}"
    if spec.model == "package":
        free = f", the first {_qty(spec.free_units)} {units} free" if spec.free_units else ""
        return (f"{money.format_display(spec.package_price, currency)} {currency} per started package of "
                f"{_qty(spec.package_size)} {units}{free}")
    if spec.model == "flat_overage":
        return (f"{money.format_display(spec.flat_price, currency)} {currency} flat, including {_qty(spec.included)} "
                f"{units}; then {_price(spec.overage_unit_price)} {currency} per {unit}")
    tiers, lower = [], Decimal(0)
    for tier in spec.tiers:
        span = f"above {_qty(lower)}" if tier.up_to is None else f"{_qty(lower)} to {_qty(tier.up_to)}"
        flat = f" + {money.format_display(tier.flat_price, currency)} flat" if tier.flat_price else ""
        tiers.append(f"{span}: {_price(tier.unit_price)} per {unit}{flat}")
        lower = tier.up_to if tier.up_to is not None else lower
    if spec.model == "volume":
        return f"Volume pricing (every {unit} at the price of the tier reached) in {currency}: " + "; ".join(tiers)
    return f"Graduated pricing (each tier's {units} at that tier's price) in {currency}: " + "; ".join(tiers)


def _charges(invoice: Invoice) -> dict[tuple[int, str, str], pricing.ChargeSpec]:
    """(version, meter, filter) -> the charge's terms, for the versions the invoice was priced with."""
    out: dict[tuple[int, str, str], pricing.ChargeSpec] = {}
    if invoice.plan_id is None:
        return out
    for version in RateCardVersion.objects.filter(plan_id=invoice.plan_id, number__in=invoice.versions or []):
        for charge in version.rate_card.charges:
            out[(version.number, charge.meter, repr(sorted((charge.filter or {}).items())))] = charge.spec
    return out


def _line_row(line: InvoiceLine, currency: str, charges: dict[tuple[int, str, str], pricing.ChargeSpec],
              meters: dict[str, Meter]) -> dict[str, Any]:
    row: dict[str, Any] = {"line": line, "quantity": _qty(line.billed_quantity), "amount": money.format_display(
        money.from_minor(line.amount_minor, currency), currency), "pricing": "", "tiers": []}
    if line.kind == InvoiceLine.Kind.BASE_FEE:
        row["pricing"] = f"{money.format_display(line.amount, currency)} {currency} per period"
    versions = [v for v in (line.detail or {}).get("versions", []) if v is not None]
    meter = meters.get(line.meter)
    if line.kind == InvoiceLine.Kind.CHARGE and versions and meter is not None:
        spec = charges.get((versions[-1], line.meter, repr(sorted(((line.detail or {}).get("filter") or {}).items()))))
        if spec is not None:
            row["pricing"] = charge_in_words(spec, meter.unit, currency)
        row["unit"] = _plural(meter.unit)
    for tier in (line.detail or {}).get("tiers", []):
        row["tiers"].append({"tier": tier["tier"], "units": _qty(Decimal(tier["units"])),
                             "amount": money.format_display(Decimal(tier["amount"]), currency)})
    return row


def _logo() -> str:
    """The seller's logo file as a data: URI (the HTML page and the PDF both embed it; nothing is fetched)."""
    path = settings.TOLLGATE_SELLER.get("logo") or ""
    if not path:
        return ""
    try:
        data = Path(path).read_bytes()
    except OSError:
        log.warning("TOLLGATE_SELLER_LOGO %s cannot be read: invoices print no logo", path)
        return ""
    kind = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def document_context(*, invoice: Invoice) -> dict[str, Any]:
    """Everything the document prints, formatted."""
    currency = invoice.currency

    def shown(minor: int | None) -> str:
        return money.format_display(money.from_minor(minor or 0, currency), currency)

    meters = {m.key: m for m in Meter.objects.all()}
    charges = _charges(invoice)
    tax_rate = invoice.tax_rate if invoice.tax_rate is not None else Decimal(0)
    total_labels: dict[str, str] = {Invoice.Status.DRAFT: "Total (draft)", Invoice.Status.PAID: "Total paid",
                   Invoice.Status.VOID: "Total (void)"}
    total_label = total_labels.get(invoice.status, "Total due")
    return {
        "invoice": invoice, "parties": invoice_parties(invoice=invoice), "logo": _logo(),
        "status_word": invoice.status_word, "draft_notice": DRAFT_NOTICE if invoice.is_draft else "",
        "lines": [_line_row(line, currency, charges, meters) for line in invoice.lines.order_by("position")],
        "subtotal": shown(invoice.subtotal_minor), "credits": shown(invoice.credits_minor),
        "taxable": shown(invoice.subtotal_minor - invoice.credits_minor), "tax": shown(invoice.tax_minor),
        "tax_label": settings.TOLLGATE_TAX_LABEL, "tax_rate": decimal_to_text(tax_rate.normalize()),
        "tax_note": invoice.tax_note or "", "total": shown(invoice.total_minor), "total_label": total_label,
        "terms_days": settings.TOLLGATE_PAYMENT_TERMS_DAYS,
        "last_day": invoice.period_end - timedelta(microseconds=1),  # the period is half-open
    }


def invoice_pdf(*, invoice: Invoice, context: dict[str, Any] | None = None) -> bytes:
    """The document as a PDF, rendered here by WeasyPrint from the same template as the page."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: the package is there, Pango is not
        raise PdfUnavailable(f"WeasyPrint cannot render: {exc}") from exc
    ctx = {**(context or document_context(invoice=invoice)), "printable": True, "pdf": True}
    html = render_to_string("invoices/pdf.html", ctx)
    return bytes(HTML(string=html, base_url=str(settings.BASE_DIR)).write_pdf())


def invoice_pdf_filename(invoice: Invoice) -> str:
    return f"{invoice.number or f'draft-{invoice.customer.external_id}-{invoice.period_start:%Y-%m}'}.pdf"
