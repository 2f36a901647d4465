"""The one module that imports ``stripe``: a thin, typed gateway over ``stripe.StripeClient``.

Every write carries an ``Idempotency-Key`` derived from our own ids (``tg-<what>-<our id>...``), so a
retried call after a timeout or a crash returns Stripe's first answer instead of creating a second
object. Callers get plain values and :class:`GatewayError`, never a ``stripe`` type, so nothing else
in the project depends on the SDK. mypy runs strict on this package (pyproject.toml): the SDK's
TypedDict parameter types check the shape of every call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings

from billing.common.fields import decimal_to_text

# Tests set this to a recording ``stripe.HTTPClient`` (tests/billing/payments/recording.py).
HTTP_CLIENT: stripe.HTTPClient | None = None
# Read by the metadata of every object we create, so a Stripe object points back at its row.
METADATA_INVOICE = "tollgate_invoice_id"
METADATA_CUSTOMER = "tollgate_customer"
METADATA_INSTALLATION = "tollgate_installation"  # which installation made the object (docs/payments.md)


class GatewayError(Exception):
    """A Stripe call failed. ``retryable``: an outage, a timeout, a rate limit or a 5xx (try again
    later, same idempotency key); otherwise Stripe refused the request and retrying will not help."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class SignatureError(Exception):
    """A webhook whose signature, secret or timestamp does not verify."""


@dataclass(frozen=True)
class RemoteInvoice:
    id: str
    status: str
    total_minor: int
    currency: str
    hosted_invoice_url: str
    metadata: dict[str, str]


def _quoted(value: str) -> str:
    """A value in Stripe's search query language: single-quoted, with quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _invoice(obj: stripe.Invoice) -> RemoteInvoice:
    # to_dict: fields a given API version (or a test double) leaves out read as absent, not as errors
    data = obj.to_dict()
    return RemoteInvoice(id=str(obj.id), status=str(data.get("status") or ""), total_minor=int(data.get("total") or 0),
                         currency=str(data.get("currency") or ""), hosted_invoice_url=str(data.get("hosted_invoice_url") or ""),
                         metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()})


def _error(exc: stripe.StripeError) -> GatewayError:
    status = exc.http_status or 0
    retryable = isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or status >= 500 or status == 409
    return GatewayError(f"{type(exc).__name__}: {exc.user_message or exc}", retryable=retryable, code=str(exc.code or ""))


def installation_id() -> str:
    """This installation's id, the prefix of every key, identifier and metadata tag we send: two
    installations (a staging and a production, a recreated database) sharing one Stripe account never
    collide. ``STRIPE_INSTALLATION_ID`` overrides it; otherwise it is the installation's id stored with
    the database (the ledger's namespace, random for each new database; '' for an installation older than
    it, which keeps the keys it always sent)."""
    override = str(getattr(settings, "STRIPE_INSTALLATION_ID", "") or "")
    if override:
        return override
    from ledger.ids import namespace

    return namespace()


def idempotency_key(*parts: object, installation: str | None = None) -> str:
    """``tg-<installation>-<parts>`` (``tg-<parts>`` for the legacy empty installation id)."""
    inst = installation_id() if installation is None else installation
    return "-".join(["tg", *([inst] if inst else []), *(str(part) for part in parts)])


class StripeGateway:
    def __init__(self, client: stripe.StripeClient, *, installation: str = "") -> None:
        self._client = client
        self.installation = installation

    def _key(self, *parts: object) -> str:
        return idempotency_key(*parts, installation=self.installation)

    def _metadata(self, **tags: str) -> dict[str, str]:
        """Our metadata tags, with the installation's (absent for the legacy empty id)."""
        return {**({METADATA_INSTALLATION: self.installation} if self.installation else {}), **tags}

    # --- customers -------------------------------------------------------------------------------
    def customer_create(self, *, customer_pk: int, external_id: str, name: str, email: str) -> str:
        metadata = self._metadata(**{METADATA_CUSTOMER: external_id})
        params: stripe.params.CustomerCreateParams = {"name": name, "metadata": metadata}
        if email:
            params["email"] = email
        try:
            created = self._client.v1.customers.create(params, {"idempotency_key": self._key("customer", customer_pk)})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return str(created.id)

    def customer_update(self, *, stripe_customer_id: str, customer_pk: int, version: str, name: str, email: str) -> None:
        params: stripe.params.CustomerUpdateParams = {"name": name, "email": email}
        key = self._key("customer", customer_pk, "update", version)
        try:
            self._client.v1.customers.update(stripe_customer_id, params, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def customer_default_payment_method_set(self, *, stripe_customer_id: str, customer_pk: int, payment_method: str) -> None:
        """Invoices of this customer are charged to ``payment_method`` from now on."""
        params: stripe.params.CustomerUpdateParams = {"invoice_settings": {"default_payment_method": payment_method}}
        key = self._key("customer", customer_pk, "default-payment-method", payment_method)
        try:
            self._client.v1.customers.update(stripe_customer_id, params, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def checkout_setup_session(self, *, stripe_customer_id: str, customer_pk: int, request_id: str, success_url: str,
                               cancel_url: str) -> str:
        """A Stripe Checkout page in setup mode, where the customer saves a card for later charges; its URL."""
        params: stripe.params.checkout.SessionCreateParams = {
            "mode": "setup", "customer": stripe_customer_id, "allowed_payment_method_types": ["card"],
            "success_url": success_url, "cancel_url": cancel_url,
            "metadata": self._metadata(**{METADATA_CUSTOMER: str(customer_pk)}),
        }
        key = self._key("customer", customer_pk, "setup", request_id)
        try:
            session = self._client.v1.checkout.sessions.create(params, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return str(session.url or "")

    def setup_intent_payment_method(self, *, setup_intent_id: str) -> str:
        """The payment method a completed SetupIntent saved ('' when none)."""
        try:
            intent = self._client.v1.setup_intents.retrieve(setup_intent_id)
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        found = intent.payment_method
        return "" if found is None else str(found if isinstance(found, str) else found.id)

    # --- invoices (mode tollgate_invoices) --------------------------------------------------------------
    def invoice_find(self, *, stripe_customer_id: str, invoice_pk: int) -> RemoteInvoice | None:
        """The Stripe invoice an earlier push created for this Tollgate invoice, if any: the safety net
        beyond Stripe's 24-hour idempotency window, found by a metadata search (one page however many
        invoices the customer has). The search index lags by up to a minute, but within 24 hours the
        creation's idempotency key answers with that same invoice, so a miss there is harmless. A
        Stripe-compatible server without search (localstripe answers 404) is read page by page."""
        query = (f"customer:{_quoted(stripe_customer_id)} AND "
                 f"metadata[{_quoted(METADATA_INVOICE)}]:{_quoted(str(invoice_pk))}")
        try:
            try:
                found = list(self._client.v1.invoices.search({"query": query, "limit": 100}).auto_paging_iter())
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise
                found = list(self._client.v1.invoices.list({"customer": stripe_customer_id, "limit": 100})
                             .auto_paging_iter())
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        for obj in found:  # the installation is matched here: the legacy empty id has no metadata tag
            remote = _invoice(obj)
            if (remote.metadata.get(METADATA_INVOICE) == str(invoice_pk)
                    and remote.metadata.get(METADATA_INSTALLATION, "") == self.installation):
                return remote
        return None

    def invoice_create(self, *, invoice_pk: int, stripe_customer_id: str, currency: str, number: str,
                       description: str, days_until_due: int | None = None) -> RemoteInvoice:
        """``days_until_due`` None: charged to the customer's default payment method; otherwise Stripe emails
        the invoice (with its hosted page) to be paid within that many days."""
        params: stripe.params.InvoiceCreateParams = {
            "customer": stripe_customer_id,
            "currency": currency.lower(),
            "collection_method": "charge_automatically" if days_until_due is None else "send_invoice",
            "auto_advance": False,  # we finalize explicitly once every line is on it
            "pending_invoice_items_behavior": "exclude",  # only the items we attach below
            "description": description,
            "metadata": self._metadata(**{METADATA_INVOICE: str(invoice_pk), "tollgate_number": number}),
            # shown on Stripe's hosted page and PDF: the customer's link to our invoice document
            "custom_fields": [{"name": "Invoice", "value": number[:140]}],
        }
        if days_until_due is not None:
            params["days_until_due"] = days_until_due
        try:
            obj = self._client.v1.invoices.create(params, {"idempotency_key": self._key("invoice", invoice_pk)})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return _invoice(obj)

    def invoice_item_create(self, *, invoice_pk: int, position: int, stripe_customer_id: str, stripe_invoice_id: str,
                            amount_minor: int, currency: str, description: str) -> str:
        params: stripe.params.InvoiceItemCreateParams = {
            "customer": stripe_customer_id,
            "invoice": stripe_invoice_id,
            "amount": amount_minor,
            "currency": currency.lower(),
            "description": description[:500],
            "metadata": self._metadata(**{METADATA_INVOICE: str(invoice_pk), "tollgate_line": str(position)}),
        }
        key = self._key("invoice", invoice_pk, "line", position)
        try:
            item = self._client.v1.invoice_items.create(params, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return str(item.id)

    def invoice_retrieve(self, *, stripe_invoice_id: str) -> RemoteInvoice:
        try:
            return _invoice(self._client.v1.invoices.retrieve(stripe_invoice_id))
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def invoice_finalize(self, *, invoice_pk: int, stripe_invoice_id: str, collect: bool = True) -> RemoteInvoice:
        # auto_advance: Stripe collects from here on; not for an invoice Tollgate has already settled
        params: stripe.params.InvoiceFinalizeInvoiceParams = {"auto_advance": collect}
        key = self._key("invoice", invoice_pk, "finalize")
        try:
            obj = self._client.v1.invoices.finalize_invoice(stripe_invoice_id, params, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return _invoice(obj)

    def invoice_void(self, *, invoice_pk: int, stripe_invoice_id: str) -> RemoteInvoice:
        key = self._key("invoice", invoice_pk, "void")
        try:
            return _invoice(self._client.v1.invoices.void_invoice(stripe_invoice_id, None, {"idempotency_key": key}))
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def invoice_pay_out_of_band(self, *, invoice_pk: int, stripe_invoice_id: str) -> RemoteInvoice:
        params: stripe.params.InvoicePayParams = {"paid_out_of_band": True}
        key = self._key("invoice", invoice_pk, "paid")
        try:
            return _invoice(self._client.v1.invoices.pay(stripe_invoice_id, params, {"idempotency_key": key}))
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def invoice_mark_uncollectible(self, *, invoice_pk: int, stripe_invoice_id: str) -> RemoteInvoice:
        key = self._key("invoice", invoice_pk, "uncollectible")
        try:
            obj = self._client.v1.invoices.mark_uncollectible(stripe_invoice_id, None, {"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return _invoice(obj)

    def invoice_payment_error(self, *, stripe_invoice_id: str) -> str:
        """Why the invoice's latest payment attempt was declined, read from its payment (the invoice itself
        only carries ``last_finalization_error``, which is about finalizing); '' when none is recorded."""
        params: stripe.params.InvoicePaymentListParams = {
            "invoice": stripe_invoice_id, "limit": 20, "expand": ["data.payment.payment_intent"]}
        try:
            page = self._client.v1.invoice_payments.list(params)
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        for payment in sorted(page.data, key=lambda p: p.created, reverse=True):
            intent = payment.payment.payment_intent
            failure = intent.last_payment_error if isinstance(intent, stripe.PaymentIntent) else None
            if failure is not None:
                reason = failure.decline_code or failure.code or failure.type
                return f"{reason}: {failure.message}" if failure.message else str(reason or "declined")
        return ""

    # --- Billing Meters (mode stripe_meters) -------------------------------------------------------------
    def meter_find(self, *, event_name: str) -> str | None:
        """The active Billing Meter of this event name, if the account has one (made by an earlier push, another
        installation, or the operator): Stripe allows one active meter per event name."""
        try:
            for meter in self._client.v1.billing.meters.list({"status": "active", "limit": 100}).auto_paging_iter():
                if meter.event_name == event_name:
                    return str(meter.id)
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return None

    def meter_create(self, *, meter_pk: int, display_name: str, event_name: str, formula: str) -> str:
        params: stripe.params.billing.MeterCreateParams = {
            "display_name": display_name,
            "event_name": event_name,
            "default_aggregation": {"formula": formula},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
        try:
            meter = self._client.v1.billing.meters.create(params, {"idempotency_key": self._key("meter", meter_pk)})
        except stripe.StripeError as exc:
            raise _error(exc) from exc
        return str(meter.id)

    def meter_event_create(self, *, event_name: str, identifier: str, stripe_customer_id: str, value: Decimal,
                           timestamp: int) -> None:
        params: stripe.params.billing.MeterEventCreateParams = {
            "event_name": event_name,
            "identifier": identifier,
            "payload": {"stripe_customer_id": stripe_customer_id, "value": decimal_to_text(value)},
            "timestamp": timestamp,
        }
        try:
            self._client.v1.billing.meter_events.create(params, {"idempotency_key": identifier})
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def meter_hour_total(self, *, stripe_meter_id: str, stripe_customer_id: str, hour_start: int) -> Decimal:
        """What Stripe counts for one customer in the hour starting at ``hour_start`` (its hourly event
        summary; 0 when it holds nothing). Stripe answers a float: exact for every figure this project can
        have sent (each event at most 15 significant digits, an hour's few events adding up well inside 2**53
        for counts; see docs/payments.md for decimals)."""
        params: stripe.params.billing.MeterEventSummaryListParams = {
            "customer": stripe_customer_id, "start_time": hour_start, "end_time": hour_start + 3600,
            "value_grouping_window": "hour",
        }
        try:
            summaries = self._client.v1.billing.meters.event_summaries.list(stripe_meter_id, params)
            return sum((Decimal(repr(float(summary.aggregated_value))) for summary in summaries.auto_paging_iter()),
                       Decimal(0))
        except stripe.StripeError as exc:
            raise _error(exc) from exc

    def meter_event_cancel(self, *, event_name: str, identifier: str) -> None:
        params: stripe.params.billing.MeterEventAdjustmentCreateParams = {
            "event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier},
        }
        try:
            self._client.v1.billing.meter_event_adjustments.create(params, {"idempotency_key": f"{identifier}-cancel"})
        except stripe.StripeError as exc:
            raise _error(exc) from exc


def gateway_get() -> StripeGateway:
    """A gateway from settings. Raises a non-retryable GatewayError when no secret key is set."""
    if not settings.STRIPE_SECRET_KEY:
        raise GatewayError("STRIPE_SECRET_KEY is not set: the Stripe integration is off.", retryable=True,
                           code="not_configured")
    http_client = HTTP_CLIENT or stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS)
    client = stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE, "meter_events": settings.STRIPE_METER_EVENTS_BASE},
        http_client=http_client,
        stripe_version=settings.STRIPE_API_VERSION,  # pinned: the SDK's default moves with the lock file
        max_network_retries=0,  # our tasks retry, with the same idempotency keys
    )
    return StripeGateway(client, installation=installation_id())


def _signed_at(signature_header: str) -> int | None:
    """The ``t=`` of a ``Stripe-Signature`` header (the SDK reads it the same way), None without one."""
    for item in signature_header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            return int(value) if value.isdigit() else None
    return None


def webhook_event_verify(*, payload: bytes, signature_header: str, secret: str, tolerance: int) -> dict[str, Any]:
    """Verify Stripe's signature on the raw body (HMAC-SHA256 of ``t.body``, timestamp within
    ``tolerance`` seconds either way) and return the event as parsed JSON. The SDK refuses only an old
    timestamp; one dated ahead is refused here too, or a signature captured with a skewed clock (or forged
    with a leaked secret) would stay replayable until that future moment passed."""
    if not secret:
        raise SignatureError("STRIPE_WEBHOOK_SECRET is not set")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance)
        event = json.loads(text)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(str(exc)) from exc
    signed_at = _signed_at(signature_header)
    if signed_at is None or signed_at > time.time() + tolerance:
        raise SignatureError(f"Timestamp outside the tolerance zone ({signed_at}): more than {tolerance} s in the future")
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise SignatureError("not a Stripe event")
    return event
