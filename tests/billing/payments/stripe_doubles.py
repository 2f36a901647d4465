"""Test doubles for Stripe, both real HTTP:

- ``LocalStripe``: the localstripe server (a stateful Stripe-compatible fake) run in this process on
  127.0.0.1 (its own launcher listens on every interface), with its site stoppable for outages, and a few
  patches that teach it the current API this project uses (see ``_patch_localstripe``).
- ``RecordingClient``: a ``stripe.HTTPClient`` given to ``StripeClient``. It records every request
  (method, path, form fields, idempotency key); calls localstripe lacks (Billing Meters, meter events,
  invoice finalize) are answered with Stripe's official example objects (stripe_fixtures.json), the rest
  go to localstripe over HTTP. Like one real Stripe account, it refuses what Stripe refuses (``StripeRules``):
  a parameter the SDK's types for that call do not name, an idempotency key reused with other
  parameters, a meter value of more than 15 significant digits, a
  meter-event cancellation more than 24 hours after Stripe received the event, a second active meter with
  the same event name; and it keeps the account's meter totals, counting a repeated identifier once.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import stripe

FIXTURES = json.loads((Path(__file__).parent / "stripe_fixtures.json").read_text())["resources"]

# (method, path pattern) -> the fixture resource answering it
CANNED = [
    ("post", re.compile(r"^/v1/billing/meters$"), "billing.meter"),
    ("post", re.compile(r"^/v1/billing/meter_events$"), "billing.meter_event"),
    ("post", re.compile(r"^/v1/billing/meter_event_adjustments$"), "billing.meter_event_adjustment"),
    ("post", re.compile(r"^/v1/invoices/(?P<id>[^/]+)/(finalize|void|pay|mark_uncollectible)$"), "invoice"),
    ("post", re.compile(r"^/v1/checkout/sessions$"), "checkout.session"),
]


# (method, path pattern) -> the SDK's parameter type of that call: a top-level parameter it does not name
# is refused as Stripe refuses an unknown parameter (mypy checks our literal dicts; this checks the wire)
P = stripe.params
PARAMETERS: list[tuple[str, re.Pattern[str], Any]] = [
    ("post", re.compile(r"^/v1/customers$"), P.CustomerCreateParams),
    ("post", re.compile(r"^/v1/customers/[^/]+$"), P.CustomerUpdateParams),
    ("post", re.compile(r"^/v1/invoices$"), P.InvoiceCreateParams),
    ("get", re.compile(r"^/v1/invoices$"), P.InvoiceListParams),
    ("get", re.compile(r"^/v1/invoices/search$"), P.InvoiceSearchParams),
    ("get", re.compile(r"^/v1/invoices/[^/]+$"), P.InvoiceRetrieveParams),
    ("post", re.compile(r"^/v1/invoiceitems$"), P.InvoiceItemCreateParams),
    ("post", re.compile(r"^/v1/invoices/[^/]+/finalize$"), P.InvoiceFinalizeInvoiceParams),
    ("post", re.compile(r"^/v1/invoices/[^/]+/pay$"), P.InvoicePayParams),
    ("post", re.compile(r"^/v1/invoices/[^/]+/void$"), P.InvoiceVoidInvoiceParams),
    ("post", re.compile(r"^/v1/invoices/[^/]+/mark_uncollectible$"), P.InvoiceMarkUncollectibleParams),
    ("get", re.compile(r"^/v1/invoice_payments$"), P.InvoicePaymentListParams),
    ("get", re.compile(r"^/v1/setup_intents/[^/]+$"), P.SetupIntentRetrieveParams),
    ("post", re.compile(r"^/v1/checkout/sessions$"), P.checkout.SessionCreateParams),
    ("get", re.compile(r"^/v1/billing/meters$"), P.billing.MeterListParams),
    ("get", re.compile(r"^/v1/billing/meters/[^/]+/event_summaries$"), P.billing.MeterEventSummaryListParams),
    ("post", re.compile(r"^/v1/billing/meters$"), P.billing.MeterCreateParams),
    ("post", re.compile(r"^/v1/billing/meter_events$"), P.billing.MeterEventCreateParams),
    ("post", re.compile(r"^/v1/billing/meter_event_adjustments$"), P.billing.MeterEventAdjustmentCreateParams),
]


def unknown_parameters(method: str, path: str, form: dict[str, str]) -> list[str]:
    for known_method, pattern, params in PARAMETERS:
        if known_method == method and pattern.match(path):
            known = params.__required_keys__ | params.__optional_keys__
            return sorted({name.split("[", 1)[0] for name in form} - known)
    return []


# one clause of a search query: customer:'cus_1' or metadata['key']:'value' (quotes escaped by backslash)
SEARCH_CLAUSE = re.compile(r"(customer|metadata\['([^']+)'\]):'((?:[^'\\]|\\.)*)'")
MAX_SIGNIFICANT_DIGITS = 15  # Stripe's precision of a meter event's value
CANCEL_WINDOW = timedelta(hours=24)  # Stripe cancels a meter event only within 24 h of receiving it


def stripe_error(status: int, kind: str, message: str) -> tuple[str, int, dict[str, str]]:
    return json.dumps({"error": {"type": kind, "message": message}}), status, {"Request-Id": "req_refused"}


def significant_digits(value: str) -> int:
    digits = Decimal(value).normalize().as_tuple().digits
    return len(digits)


@dataclass
class StripeRules:
    """The account state the rules need: answers by idempotency key, meters, meter events received."""

    keys: dict[str, tuple[str, str, dict[str, str], Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> meter object
    events: dict[str, tuple[str, str, Decimal, datetime]] = field(default_factory=dict)  # identifier -> (name, cus, v, at)
    cancelled: set[str] = field(default_factory=set)
    timestamps: dict[str, int] = field(default_factory=dict)  # identifier -> the event's own timestamp

    def meter_total(self, event_name: str, stripe_customer_id: str) -> Decimal:
        """What Stripe counts for this meter and customer: the sum of its events not cancelled."""
        return sum((value for ident, (name, cus, value, _) in self.events.items()
                    if name == event_name and cus == stripe_customer_id and ident not in self.cancelled), Decimal(0))


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, str]
    idempotency_key: str | None
    stripe_version: str | None = None


class RecordingClient(stripe.HTTPClient):
    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.inner = stripe.RequestsClient(timeout=10)
        self.requests: list[Recorded] = []
        self.down = False  # canned calls fail like an outage
        self.fail_on: list[tuple[str, str]] = []  # (method, path regex): fail like an outage, before sending
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.rules = StripeRules()
        self.clock: datetime | None = None  # Stripe's "now" (None: the real time)
        self.invoice_payments: dict[str, list[dict[str, Any]]] = {}  # Stripe invoice id -> its payments
        # invoice search: off answers as localstripe does (404); unindexed ids are not found yet, like
        # Stripe's search index that lags up to a minute behind a creation
        self.search_available = True
        self.search_unindexed: set[str] = set()
        self.unsummarized: set[str] = set()  # meter events not in the event summaries yet (Stripe aggregates later)

    def decline(self, stripe_invoice_id: str, *, code: str, decline_code: str, message: str, created: int) -> None:
        """A failed payment of the invoice, as Stripe's invoice payment with its PaymentIntent expanded."""
        intent = copy.deepcopy(FIXTURES["payment_intent"])
        intent.update(id=f"pi_{next(self._ids)}", status="requires_payment_method",
                      last_payment_error={"type": "card_error", "code": code, "decline_code": decline_code,
                                          "message": message})
        payment = copy.deepcopy(FIXTURES["invoice_payment"])
        payment.update(id=f"inpay_{next(self._ids)}", invoice=stripe_invoice_id, created=created, status="open",
                       payment={"type": "payment_intent", "payment_intent": intent})
        self.invoice_payments.setdefault(stripe_invoice_id, []).append(payment)

    def now(self) -> datetime:
        return self.clock or datetime.now(timezone.utc)

    def request(self, method: str, url: str, headers: Any, post_data: Any = None, *, _usage: Any = None) -> Any:
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        form = dict(parse_qsl(body or parts.query, keep_blank_values=True))
        key = (headers or {}).get("Idempotency-Key")
        with self._lock:
            self.requests.append(Recorded(method, parts.path, form, key, (headers or {}).get("Stripe-Version")))
        if any(method == m and re.fullmatch(p, parts.path) for m, p in self.fail_on):
            raise stripe.APIConnectionError(f"recording client: {method} {parts.path} timed out")
        if key:
            with self._lock:
                seen = self.rules.keys.get(key)
            if seen is not None:
                if seen[:3] != (method, parts.path, form):
                    return stripe_error(400, "idempotency_error", "Keys for idempotent requests can only be used with "
                                        "the same parameters they were first used with.")
                return seen[3]  # Stripe's first answer, replayed
        answer = self._answer(method, url, parts.path, form, headers, post_data)
        if key and answer[1] < 500:
            with self._lock:
                self.rules.keys[key] = (method, parts.path, form, answer)
        return answer

    def _answer(self, method: str, url: str, path: str, form: dict[str, str], headers: Any, post_data: Any) -> Any:
        refused = self._refused(method, path, form)
        if refused is not None:
            return refused
        if method == "get" and path == "/v1/invoice_payments":
            if form.get("expand[0]") != "data.payment.payment_intent":
                return stripe_error(400, "invalid_request_error", "this double answers only with the payment expanded")
            listed = self.invoice_payments.get(form.get("invoice", ""), [])
            return json.dumps({"object": "list", "url": path, "has_more": False, "data": listed}), 200, {}
        if method == "get" and path == "/v1/invoices/search" and self.search_available:
            return self._invoice_search(url, form, headers)
        summaries = re.fullmatch(r"/v1/billing/meters/([^/]+)/event_summaries", path)
        if method == "get" and summaries:
            if self.down:
                raise stripe.APIConnectionError("recording client: Stripe is down")
            return self._event_summaries(summaries[1], form)
        if method == "get" and path == "/v1/billing/meters":
            if self.down:
                raise stripe.APIConnectionError("recording client: Stripe is down")
            listed = sorted(self.rules.meters.values(), key=lambda m: m["id"])
            return json.dumps({"object": "list", "url": path, "has_more": False, "data": listed}), 200, {}
        parts = urlsplit(url)
        for canned_method, pattern, resource in CANNED:
            match = pattern.match(parts.path)
            if canned_method == method and match:
                if self.down:
                    raise stripe.APIConnectionError("recording client: Stripe is down")
                answer = copy.deepcopy(FIXTURES[resource])
                if "id" in match.groupdict():
                    answer["id"] = match["id"]
                elif "id" in answer:
                    answer["id"] = f"{answer['id']}_{next(self._ids)}"
                for name, value in form.items():  # reflect the scalar fields sent, as stripe-mock does
                    if "[" not in name and name in answer and not isinstance(answer[name], dict | list):
                        answer[name] = value
                if resource == "checkout.session":
                    answer["url"] = f"https://checkout.stripe.com/c/pay/{answer['id']}"
                self._remember(resource, answer, form)
                return json.dumps(answer), 200, {"Request-Id": "req_recorded"}
        return self.inner.request(method, url, headers, post_data)

    def _event_summaries(self, meter_id: str, form: dict[str, str]) -> Any:
        """Stripe's summary of a meter's events for a customer, per hour window: a float, as Stripe answers."""
        meter = self.rules.meters.get(meter_id)
        if meter is None:
            return stripe_error(404, "invalid_request_error", f"No such billing meter: '{meter_id}'")
        start, end = int(form["start_time"]), int(form["end_time"])
        windows: dict[int, Decimal] = {}
        for identifier, (name, customer, value, _) in self.rules.events.items():
            at = self.rules.timestamps[identifier]
            if (name == meter["event_name"] and customer == form.get("customer") and start <= at < end
                    and identifier not in self.rules.cancelled and identifier not in self.unsummarized):
                hour = at - at % 3600
                windows[hour] = windows.get(hour, Decimal(0)) + value
        data = [{"id": f"mtrusg_{hour}", "object": "billing.meter_event_summary", "aggregated_value": float(total),
                 "start_time": hour, "end_time": hour + 3600, "livemode": False, "meter": meter_id}
                for hour, total in sorted(windows.items())]
        return json.dumps({"object": "list", "url": f"/v1/billing/meters/{meter_id}/event_summaries",
                           "has_more": False, "data": data}), 200, {}

    def _invoice_search(self, url: str, form: dict[str, str], headers: Any) -> Any:
        """Stripe's invoice search over localstripe's invoices: every clause must match (AND)."""
        clauses = {match[2] or match[1]: re.sub(r"\\(.)", r"\1", match[3])
                   for match in SEARCH_CLAUSE.finditer(form.get("query", ""))}
        customer = clauses.pop("customer", "")
        base = urlsplit(url)
        listed: list[dict[str, Any]] = []
        while True:  # every page of the customer's invoices
            query = {"customer": customer, "limit": "100", **({"starting_after": listed[-1]["id"]} if listed else {})}
            body, status, _ = self.inner.request("get", f"{base.scheme}://{base.netloc}/v1/invoices?{urlencode(query)}",
                                                 headers)
            if status != 200:
                return body, status, {}
            page = json.loads(body)
            listed += page["data"]
            if not page.get("has_more"):
                break
        found = [invoice for invoice in listed if invoice["id"] not in self.search_unindexed
                 and all((invoice.get("metadata") or {}).get(key) == value for key, value in clauses.items())]
        return json.dumps({"object": "search_result", "url": "/v1/invoices/search", "has_more": False,
                           "next_page": None, "data": found}), 200, {}

    def _refused(self, method: str, path: str, form: dict[str, str]) -> Any:
        unknown = unknown_parameters(method, path, form)
        if unknown:
            return stripe_error(400, "invalid_request_error", f"Received unknown parameter: {unknown[0]}")
        if method != "post":
            return None
        if path == "/v1/billing/meter_events":
            value = form.get("payload[value]", "")
            if significant_digits(value) > MAX_SIGNIFICANT_DIGITS:
                return stripe_error(400, "invalid_request_error", f"payload[value] {value} has more than "
                                    f"{MAX_SIGNIFICANT_DIGITS} significant digits.")
        if path == "/v1/billing/meter_event_adjustments":
            received = self.rules.events.get(form.get("cancel[identifier]", ""))
            if received is None:
                return stripe_error(400, "invalid_request_error", "No meter event with this identifier.")
            if self.now() - received[3] > CANCEL_WINDOW:
                return stripe_error(400, "invalid_request_error", "You can only cancel events within 24 hours of "
                                    "Stripe receiving them.")
        if path == "/v1/billing/meters":
            name = form.get("event_name")
            if any(m["event_name"] == name and m["status"] == "active" for m in self.rules.meters.values()):
                return stripe_error(400, "invalid_request_error", f"An active meter with event_name {name} already exists.")
        return None

    def _remember(self, resource: str, answer: dict[str, Any], form: dict[str, str]) -> None:
        with self._lock:
            if resource == "billing.meter":
                answer["event_name"] = form["event_name"]
                self.rules.meters[answer["id"]] = answer
            elif resource == "billing.meter_event" and form["identifier"] not in self.rules.events:
                self.rules.timestamps[form["identifier"]] = int(form["timestamp"])
                # a repeated identifier is deduplicated account-wide: answered, not counted again
                self.rules.events[form["identifier"]] = (form["event_name"], form["payload[stripe_customer_id]"],
                                                         Decimal(form["payload[value]"]), self.now())
            elif resource == "billing.meter_event_adjustment":
                self.rules.cancelled.add(form["cancel[identifier]"])

    def meter_total(self, event_name: str, stripe_customer_id: str) -> Decimal:
        return self.rules.meter_total(event_name, stripe_customer_id)

    def request_stream(self, method: str, url: str, headers: Any, post_data: Any = None, *, _usage: Any = None) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self.inner.close()

    def calls(self, method: str, path_pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_patched = False


def _patch_localstripe() -> None:
    """localstripe emulates an older API. Teach it what this project sends, nothing more:
    - a one-off invoice (no subscription) created with ``currency``, ``auto_advance``,
      ``collection_method`` and ``pending_invoice_items_behavior=exclude`` (current API; it refuses
      an invoice without a subscription or pending items, and unknown parameters);
    - an invoice item created with ``invoice=`` lands on that invoice (current API; it only attaches
      pending items when an invoice is created);
    - its store is not pickled to a shared file in /tmp (parallel test runs would share it)."""
    global _patched
    if _patched:
        return
    from localstripe import resources as r

    r.Store.dump_to_disk = lambda self: None
    create = r.Invoice._api_create.__func__

    def invoice_create(cls: Any, currency: str | None = None, auto_advance: Any = None, collection_method: Any = None,
                       pending_invoice_items_behavior: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("subscription") is None and pending_invoice_items_behavior == "exclude":
            invoice = r.Invoice(customer=kwargs.get("customer"), metadata=kwargs.get("metadata"),
                                description=kwargs.get("description"))  # a one-off draft invoice
        else:
            invoice = create(cls, pending_invoice_items_behavior=pending_invoice_items_behavior, **kwargs)
        if currency:
            invoice.currency = currency
        return invoice

    item_init = r.InvoiceItem.__init__

    def item_new(self: Any, **kwargs: Any) -> None:
        item_init(self, **kwargs)
        if self.invoice is not None:
            r.Invoice._api_retrieve(self.invoice).lines._list.append(r.InvoiceLineItem(self))

    r.Invoice._api_create = classmethod(invoice_create)
    r.InvoiceItem.__init__ = item_new
    _patched = True


class LocalStripe:
    def __init__(self) -> None:
        _patch_localstripe()
        from aiohttp import web
        from localstripe.server import app

        self._web, self._app = web, app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="localstripe", daemon=True)
        self.thread.start()
        self._runner: Any = None
        self._site: Any = None
        self._call(self._setup())
        self.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _setup(self) -> None:
        self._runner = self._web.AppRunner(self._app, access_log=None)
        await self._runner.setup()

    async def _start(self) -> None:
        self._site = self._web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    def start(self) -> None:
        if self._site is None:
            self._call(self._start())

    def stop(self) -> None:
        """An outage: nothing listens on the port until start()."""
        if self._site is not None:
            self._call(self._site.stop())
            self._site = None

    def reset(self) -> None:
        from localstripe import resources, webhooks

        async def clear() -> None:
            resources.store.clear()
            webhooks._webhooks.clear()

        self._call(clear())

    def objects(self, kind: str) -> list[Any]:
        from localstripe import resources

        async def collect() -> list[Any]:
            return [v for k, v in resources.store.items() if k.startswith(kind + ":")]

        return list(self._call(collect()))

    def close(self) -> None:
        self._call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header, computed as Stripe does (HMAC-SHA256 of ``t.payload``)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"
