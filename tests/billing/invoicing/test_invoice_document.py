"""The finance-ready invoice: seller and buyer details, issue and due dates, the tax line (computed once,
replayed by ``invoice verify``), charges in words, formatted amounts, one status word, and the PDF."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from pypdf import PdfReader

from billing.catalog import money
from billing.catalog.services import catalog_import
from billing.customers.models import CustomerUser
from billing.invoicing import services
from billing.invoicing.models import Invoice
from billing.invoicing.selectors import invoice_verify
from billing.usage.rollups import rollup_until_current
from tests import factories

UTC = timezone.utc
OCT = datetime(2026, 10, 1, tzinfo=UTC)
CATALOG = """
meters:
  - {key: llm_tokens, name: LLM tokens, unit: token, aggregation: sum}
  - {key: api_calls, name: API calls, unit: call, aggregation: count}
plans:
  - key: pro
    name: Pro
    currency: USD
    effective_from: "2024-01-01T00:00:00Z"
    base_fee: "1000.00"
    charges:
      - meter: llm_tokens
        model: graduated
        tiers:
          - {up_to: 1000, unit_price: "0.01"}
          - {up_to: null, unit_price: "0.001"}
      - {meter: api_calls, model: package, package_size: 1000, package_price: "5.00"}
"""


@pytest.fixture
def pro(acme: Any, settings: Any) -> Any:
    settings.TOLLGATE_SELLER = {"name": "Operator Ltd", "address": "1 Main St\nDublin", "email": "ar@operator.example",
                                "tax_id": "IE1234567X", "logo": ""}
    settings.TOLLGATE_PAYMENT_TERMS_DAYS = 14
    acme.billing_address, acme.tax_id, acme.tax_rate = "9 Side Rd\nBerlin", "DE999999999", Decimal("19")
    acme.save()
    catalog_import(text=CATALOG, actor="t")
    factories.subscribe(acme, "pro", start=OCT)
    return acme


def finalized(customer: Any, quantity: str = "1500") -> Invoice:
    results = factories.ingest(factories.event("a", "2026-10-10T00:00:00Z", quantity, "llm_tokens"),
                               now=datetime(2026, 10, 12, tzinfo=UTC))
    assert all(r["status"] == "accepted" for r in results), results
    at = datetime(2026, 11, 1, 1, tzinfo=UTC)
    services.periods_close(now=at)
    rollup_until_current(now=at + timedelta(days=1))
    services.periods_finalize(now=at + timedelta(days=1))
    return Invoice.objects.get(customer=customer, period_start=OCT, kind="invoice")


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


@pytest.mark.django_db
def test_tax_is_charged_once_on_the_total_and_the_replay_reconciles_to_the_cent(pro: Any) -> None:
    invoice = finalized(pro, "1500")
    # 1000 base + 10.00 tier 1 + 0.50 tier 2 + 0 package = 1010.50; 19% = 191.995 -> 192.00 (half up, once)
    assert invoice.subtotal_minor == 101050 and invoice.tax_minor == 19200
    assert invoice.total_minor == 101050 + 19200 == money.to_minor(Decimal("1010.50") * Decimal("1.19"), "USD")
    assert invoice.tax_rate == Decimal("19")
    assert invoice_verify(invoice=invoice) == []
    pro.tax_rate = Decimal("25")  # a later change of rate never rewrites an issued invoice or its replay
    pro.save()
    assert invoice_verify(invoice=invoice) == []
    assert invoice.finalized_at is not None and invoice.parties is not None
    assert invoice.due_at == invoice.finalized_at + timedelta(days=14)
    assert invoice.parties["buyer"]["tax_id"] == "DE999999999" and invoice.parties["seller"]["tax_id"] == "IE1234567X"


@pytest.mark.django_db
def test_a_reverse_charge_customer_pays_no_tax_and_the_document_says_why(pro: Any, client: Any, admin_user: Any) -> None:
    pro.tax_reverse_charge = True
    pro.save()
    invoice = finalized(pro)
    assert invoice.tax_minor == 0 and invoice.total_minor == invoice.subtotal_minor
    client.force_login(admin_user)
    html = client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "Reverse charge" in html


@pytest.mark.django_db
def test_the_document_is_finance_ready(pro: Any, client: Any, admin_user: Any) -> None:
    invoice = finalized(pro, "1500")
    client.force_login(admin_user)
    html = client.get(f"/invoices/{invoice.pk}/").content.decode()
    for text in ("Operator Ltd", "IE1234567X", "9 Side Rd", "DE999999999", "Issue date", "2026-11-02",
                 "Due date", "2026-11-16", "Net 14 days", "Status: <strong>Open</strong>", "1,000.00",
                 "1,202.50", "Tax 19% on 1,010.50", "192.00", "Total due",
                 "Graduated pricing", "0 to 1,000: 0.01 per token", "above 1,000: 0.001 per token",
                 "5.00 USD per started package of 1,000 calls"):
        assert text in html, text
    base_fee = html.split('class="line-base_fee"')[1].split("</tr>")[0]
    assert '<td class="num">1</td>' in base_fee  # quantity 1, not 0
    assert "not a request for payment" not in html


@pytest.mark.django_db
def test_a_draft_says_it_is_not_a_request_for_payment(pro: Any, client: Any, admin_user: Any) -> None:
    factories.ingest(factories.event("a", "2026-10-10T00:00:00Z", "10", "llm_tokens"),
                     now=datetime(2026, 10, 12, tzinfo=UTC))
    draft = services.invoice_draft_refresh(customer=pro, period_start=OCT)
    assert draft is not None and draft.is_draft
    client.force_login(admin_user)
    html = client.get(f"/invoices/{draft.pk}/").content.decode()
    assert "Draft — not a request for payment" in html and "Total due" not in html and "Total (draft)" in html


@pytest.mark.django_db
def test_the_status_word_is_the_same_on_the_document_and_the_dashboard(pro: Any, client: Any,
                                                                        django_user_model: Any) -> None:
    invoice = finalized(pro)
    owner = django_user_model.objects.create_user("a", password="pw")
    CustomerUser.objects.create(user=owner, customer=pro)
    client.force_login(owner)
    listed = client.get("/dashboard/acme-co/invoices/").content.decode()
    document = client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert ">Open<" in listed and "<strong>Open</strong>" in document
    assert "Finalized" not in document and "not paid" not in listed


@pytest.mark.django_db
def test_the_pdf_of_an_invoice_holds_its_number_total_and_due_date_for_its_readers_only(
        pro: Any, globex: Any, client: Any, admin_user: Any, django_user_model: Any, make_client: Any) -> None:
    invoice = finalized(pro)
    url = f"/invoices/{invoice.pk}.pdf"
    assert client.get(url).status_code == 302  # login first
    client.force_login(admin_user)
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    text = pdf_text(response.content)
    assert invoice.due_at is not None and invoice.number is not None
    for wanted in (invoice.number, "1,202.50", invoice.due_at.strftime("%Y-%m-%d"), "Operator Ltd"):
        assert wanted in text, (wanted, text)
    stranger = django_user_model.objects.create_user("g", password="pw")
    CustomerUser.objects.create(user=stranger, customer=globex)
    client.force_login(stranger)
    assert client.get(url).status_code == 404
    # the API: the same document, for a key that may read it
    own = make_client("read", customer=pro)
    api = own.get(f"/api/v1/invoices/{invoice.pk}/pdf", HTTP_ACCEPT="application/pdf")
    assert api.status_code == 200 and api["Content-Type"] == "application/pdf"
    assert str(invoice.number) in pdf_text(api.content)
    foreign = make_client("read", customer=globex).get(f"/api/v1/invoices/{invoice.pk}/pdf",
                                                       HTTP_ACCEPT="application/pdf")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
@pytest.mark.parametrize("column, value", [("tax_minor", 1), ("due_at", "2030-01-01T00:00:00Z"), ("tax_note", "x")])
def test_the_database_refuses_to_change_a_finalized_invoices_tax_or_due_date(pro: Any, column: str, value: Any) -> None:
    invoice = finalized(pro)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE invoicing_invoice SET {column} = %s WHERE id = %s", [value, invoice.pk])


@pytest.mark.django_db
def test_the_customer_api_reads_and_sets_the_billing_details(acme: Any, admin: Any) -> None:
    body = {"billing_address": "9 Side Rd\nBerlin", "tax_id": "DE999999999", "invoice_email": "ap@acme.example",
            "tax_rate": "19", "tax_reverse_charge": False}
    response = admin.patch("/api/v1/customers/acme-co", body, format="json")
    assert response.status_code == 200, response.json()
    got = admin.get("/api/v1/customers/acme-co").json()
    assert {k: got[k] for k in body} == {**body, "tax_rate": "19.000"}
    assert admin.patch("/api/v1/customers/acme-co", {"tax_rate": "120"}, format="json").status_code == 422


@pytest.mark.django_db
def test_a_customer_is_created_with_its_billing_details(admin: Any) -> None:
    response = admin.post("/api/v1/customers", {"id": "initech", "tax_id": "US-12", "tax_reverse_charge": True,
                                                "billing_address": "4120 Freidrich Ln"}, format="json")
    assert response.status_code == 201, response.json()
    got = response.json()
    assert (got["tax_id"], got["tax_reverse_charge"], got["billing_address"]) == ("US-12", True, "4120 Freidrich Ln")


def _base_fee_row(api_body: dict[str, Any]) -> dict[str, Any]:
    return next(line for line in api_body["lines"] if line["kind"] == "base_fee")


@pytest.mark.django_db
def test_the_stored_base_fee_line_says_what_the_document_prints(pro: Any, admin: Any, client: Any,
                                                                 admin_user: Any) -> None:
    invoice = finalized(pro)
    line = invoice.lines.get(kind="base_fee")
    assert (line.quantity, line.unit_price, line.amount) == (Decimal(1), Decimal("1000.00"), Decimal("1000.00"))
    body = admin.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert {k: _base_fee_row(body)[k] for k in ("quantity", "unit_price", "amount", "amount_minor")} == {
        "quantity": "1", "unit_price": "1000", "amount": "1000.00", "amount_minor": 100000}
    client.force_login(admin_user)
    html = client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert '<td class="num">1</td>' in html.split('class="line-base_fee"')[1].split("</tr>")[0]
    assert invoice_verify(invoice=invoice) == []


@pytest.mark.django_db
def test_an_invoice_finalized_with_a_base_fee_of_quantity_0_is_read_as_1_and_still_verifies(
        pro: Any, admin: Any, monkeypatch: Any) -> None:
    # given: an invoice finalized by the code that stored the base fee line with quantity 0 and no unit price
    from billing.invoicing import compute

    real = compute._lines

    def older(lines: Any, currency: str) -> Any:
        out = real(lines, currency)
        for line in out:
            if line.kind == "base_fee":
                line.quantity, line.unit_price = Decimal(0), None
        return out

    monkeypatch.setattr(compute, "_lines", older)
    invoice = finalized(pro)
    monkeypatch.undo()
    stored = invoice.lines.get(kind="base_fee")
    assert (stored.quantity, stored.unit_price) == (Decimal(0), None)  # as issued: never rewritten
    # then: every reader says one period at the fee, and the replay (which now computes 1) reconciles
    body = admin.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert (_base_fee_row(body)["quantity"], _base_fee_row(body)["unit_price"]) == ("1", "1000")
    assert invoice_verify(invoice=invoice) == []
    stored.refresh_from_db()
    assert stored.quantity == Decimal(0)
