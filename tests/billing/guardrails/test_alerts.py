"""Soft-limit alerts: thresholds (default, plan, customer), crossing detection, one email per threshold,
customer and period (a real SMTP server in the delivery tests), the API and its tenancy."""

from __future__ import annotations

import email
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection

from billing.catalog.models import Plan
from billing.common import mail as mail_delivery
from billing.common.auth import Principal
from billing.common.calendar import period_bounds
from billing.customers.models import Customer, CustomerUser
from billing.guardrails import alerts as alerts_service
from billing.guardrails import tasks
from billing.guardrails.alerts import AlertSendDeferred, alert_threshold_create, alerts_check, alerts_sweep
from billing.guardrails.models import Alert
from billing.guardrails.selectors import alert_thresholds_effective, alerts_list
from billing.usage.services import events_ingest
from portal.email_url import email_settings_from_url
from tests import factories
from tests.conftest import post_json

pytestmark = pytest.mark.ledger
ADMIN = Principal(scopes=frozenset({"admin"}))
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def subscribe(customer: Customer, hard: str | None = "1000", cap: str | None = None, price: str = "0.01",
              soft: str | None = None) -> Plan:
    text = factories.metered(price=price, hard=hard, soft=soft, cap=cap, extra_meters=(factories.CALLS,))
    return factories.subscribe(customer, "metered", start=START, now=datetime.now(timezone.utc), catalog_text=text).plan


def use(quantity: str, at: datetime | None = None, event_id: str | None = None, customer: str = "acme-co") -> None:
    """Ingest one event of ``quantity`` tokens at ``at`` (default: a few seconds ago), as the API does."""
    at = at or datetime.now(timezone.utc) - timedelta(seconds=5)
    event_id = event_id or f"e-{at.timestamp()}-{quantity}-{threading.get_ident()}"
    raw = json.dumps({"event_id": event_id, "customer": customer, "meter": "llm_tokens", "quantity": quantity,
                      "timestamp": at.isoformat()}).encode()
    [result] = events_ingest(principal=ADMIN, raw_events=[raw], now=at + timedelta(seconds=1))
    assert result.status == "accepted", result.as_dict()


@pytest.fixture(autouse=True)
def _no_queued_checks() -> None:
    alerts_service._QUEUED.clear()  # per process; database ids repeat across tests


@pytest.fixture
def acme_mail(acme: Customer) -> Customer:
    acme.email = "billing@acme.example"
    acme.save()
    user = User.objects.create_user("acme-dev", email="dev@acme.example", password="x" * 12)
    CustomerUser.objects.create(user=user, customer=acme)
    return acme


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler: keeps every message the server accepted; can refuse the next RCPTs."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[Any] = []
        self.refuse_rcpt = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        with self.lock:
            if self.refuse_rcpt:
                self.refuse_rcpt -= 1
                return "550 5.1.1 mailbox unavailable (test)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.envelopes.append(envelope)
            self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp(settings: Any) -> Any:
    """A real SMTP server on 127.0.0.1 (aiosmtpd), and Django's SMTP backend pointed at it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 10
    inbox.start = controller.start  # type: ignore[attr-defined]
    yield inbox
    if getattr(controller, "_thread", None) is not None:
        controller.stop()


# --- thresholds -------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_default_threshold_is_80_percent_of_each_hard_limit_and_of_the_spend_cap(acme):
    subscribe(acme, hard="1000", cap="10.00")

    effective = [t.as_dict() for t in alert_thresholds_effective(customer=acme)]

    assert [(t["target"], t["percent"], t["source"], t["threshold"], t["unit"]) for t in effective] == [
        ("meter:llm_tokens", "80", "default", "800", "token"),
        ("spend_cap", "80", "default", "8", "USD"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("soft, percent", [("75%", "75"), ("600", "60"), ("333.333", "33.33")])
def test_the_rate_cards_soft_limit_replaces_the_80_percent_default_of_its_meter(acme, soft, percent):
    subscribe(acme, hard="1000", soft=soft)

    [threshold] = alert_thresholds_effective(customer=acme)

    assert (threshold.target, threshold.source, threshold.as_dict()["percent"]) == ("meter:llm_tokens", "rate_card", percent)


@pytest.mark.django_db
def test_no_limits_means_no_thresholds(acme):
    subscribe(acme, hard=None, cap=None)

    assert alert_thresholds_effective(customer=acme) == []


@pytest.mark.django_db
def test_plan_thresholds_replace_the_default_and_the_customers_own_come_on_top(acme, make_client):
    plan = subscribe(acme, hard="1000", cap="10.00")
    alerts_service.plan_alert_threshold_set(plan=plan, target="meter:llm_tokens", percent=Decimal("50"))
    alerts_service.plan_alert_threshold_set(plan=plan, target="meter:llm_tokens", percent=Decimal("90"))
    own = make_client("read", customer=acme)

    created = post_json(own, "/api/v1/customers/acme-co/alert-thresholds", {"target": "meter:llm_tokens", "percent": "95.5"})
    again = post_json(own, "/api/v1/customers/acme-co/alert-thresholds", {"target": "meter:llm_tokens", "percent": "95.50"})
    listed = own.get("/api/v1/customers/acme-co/alert-thresholds").json()["data"]

    assert (created.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == created.json()["id"]
    assert [(t["target"], t["percent"], t["source"], t["threshold"]) for t in listed] == [
        ("meter:llm_tokens", "50", "plan", "500"),
        ("meter:llm_tokens", "90", "plan", "900"),
        ("meter:llm_tokens", "95.5", "customer", "955"),
        ("spend_cap", "80", "default", "8"),
    ]


@pytest.mark.django_db
def test_customer_threshold_on_an_unlimited_meter_is_listed_inactive_and_can_be_deleted(acme, make_client):
    subscribe(acme, hard="1000")
    own = make_client("read", customer=acme)
    assert post_json(own, "/api/v1/customers/acme-co/alert-thresholds",
                     {"target": "meter:api_calls", "percent": "10"}).status_code == 201

    listed = own.get("/api/v1/customers/acme-co/alert-thresholds").json()["data"]
    deleted = own.delete("/api/v1/customers/acme-co/alert-thresholds?target=meter:api_calls&percent=10.0")
    gone = own.delete("/api/v1/customers/acme-co/alert-thresholds?target=meter:api_calls&percent=10")

    assert [(t["target"], t["active"], t["limit"]) for t in listed] == [
        ("meter:api_calls", False, None), ("meter:llm_tokens", True, "1000")]
    assert (deleted.status_code, gone.status_code) == (204, 404)


@pytest.mark.django_db
@pytest.mark.parametrize("body, field", [
    ({"target": "meter:nope", "percent": "50"}, "target"),
    ({"target": "tokens", "percent": "50"}, "target"),
    ({"target": "spend_cap", "percent": "0"}, "percent"),
    ({"target": "spend_cap", "percent": "100.01"}, "percent"),
    ({"target": "spend_cap", "percent": "33.333"}, "percent"),
])
def test_invalid_thresholds_are_422_by_field(acme, admin, body, field):
    subscribe(acme)

    response = post_json(admin, "/api/v1/customers/acme-co/alert-thresholds", body)

    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]


@pytest.mark.django_db
def test_plan_thresholds_cannot_be_deleted_by_the_customer(acme, make_client):
    plan = subscribe(acme)
    row, _ = alerts_service.plan_alert_threshold_set(plan=plan, target="meter:llm_tokens", percent=Decimal("50"))

    response = make_client("read", customer=acme).delete(f"/api/v1/customers/acme-co/alert-thresholds?id={row.pk}")

    assert response.status_code == 404


# --- tenancy ----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_customer_key_cannot_read_or_change_another_customers_alerts_or_thresholds(acme, globex, make_client):
    subscribe(acme)
    use("900")
    alerts_check(customer_pk=acme.pk)
    theirs = alert_threshold_create(customer=acme, target="meter:llm_tokens", percent=Decimal("10"))[0]
    globex_key = make_client("read", customer=globex)

    answers = [
        globex_key.get("/api/v1/customers/acme-co/alerts"),
        globex_key.get("/api/v1/customers/acme-co/alert-thresholds"),
        post_json(globex_key, "/api/v1/customers/acme-co/alert-thresholds", {"target": "spend_cap", "percent": "5"}),
        globex_key.delete(f"/api/v1/customers/acme-co/alert-thresholds?id={theirs.pk}"),
        globex_key.delete(f"/api/v1/customers/globex/alert-thresholds?id={theirs.pk}"),  # own path, foreign id
    ]

    assert [r.status_code for r in answers] == [404, 404, 404, 404, 404]
    assert answers[0].json() == {"error": {"code": "not_found", "message": "No such customer."}}
    assert Alert.objects.filter(customer=acme).count() == 1
    assert acme.alert_thresholds.filter(pk=theirs.pk).exists()
    own = make_client("read", customer=acme).get("/api/v1/customers/acme-co/alerts")
    assert own.status_code == 200 and len(own.json()["data"]) == 1


@pytest.mark.django_db
def test_only_admin_keys_or_the_customers_own_principals_change_thresholds(acme, make_client):
    subscribe(acme)
    body = {"target": "meter:llm_tokens", "percent": "50"}

    unrestricted_read = post_json(make_client("read"), "/api/v1/customers/acme-co/alert-thresholds", body)
    ingest = post_json(make_client("ingest", customer=acme), "/api/v1/customers/acme-co/alert-thresholds", body)
    admin = post_json(make_client("admin"), "/api/v1/customers/acme-co/alert-thresholds", body)

    assert (unrestricted_read.status_code, ingest.status_code, admin.status_code) == (403, 403, 201)


@pytest.mark.django_db
def test_a_dashboard_user_manages_their_own_thresholds_through_the_session(acme_mail, client):
    subscribe(acme_mail)
    client.force_login(User.objects.get(username="acme-dev"))

    created = client.post("/api/v1/customers/acme-co/alert-thresholds", {"target": "spend_cap", "percent": "60"},
                          content_type="application/json")
    foreign = client.get("/api/v1/customers/globex/alert-thresholds")

    assert created.status_code == 201
    assert foreign.status_code == 404


# --- detection and one email ------------------------------------------------------------------------

@pytest.mark.django_db
def test_no_alert_below_the_threshold(acme_mail):
    subscribe(acme_mail, hard="1000")
    use("799")

    sent = alerts_check(customer_pk=acme_mail.pk)

    assert sent == 0 and mail.outbox == []
    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_crossing_sends_exactly_one_email_with_the_figures_and_the_dashboard_link(acme_mail, settings):
    settings.TOLLGATE_BASE_URL = "https://billing.example.com"
    subscribe(acme_mail, hard="1000")
    use("799")
    use("1")

    first = alerts_check(customer_pk=acme_mail.pk)
    again = [alerts_check(customer_pk=acme_mail.pk) for _ in range(5)]
    use("50")
    later = alerts_check(customer_pk=acme_mail.pk)

    assert (first, again, later) == (1, [0] * 5, 0)
    [message] = mail.outbox
    assert sorted(message.to) == ["billing@acme.example", "dev@acme.example"]
    assert "80% of your limit for llm_tokens" in message.subject
    _, end = period_bounds(datetime.now(timezone.utc))
    assert "Used so far:   800 token (80% of the limit)" in message.body
    assert "Limit:         1000 token" in message.body
    assert f"{end:%Y-%m-%d} 00:00 UTC" in message.body
    assert "https://billing.example.com/dashboard/" in message.body
    [alert] = Alert.objects.all()
    assert (alert.state, alert.used, alert.attempts, alert.sent_at is not None) == ("sent", Decimal(800), 1, True)


@pytest.mark.django_db
def test_each_crossed_threshold_sends_its_own_email_once(acme_mail):
    subscribe(acme_mail, hard="1000", cap="10.00", price="0.01")
    alert_threshold_create(customer=acme_mail, target="meter:llm_tokens", percent=Decimal("50"))
    use("600")
    alerts_check(customer_pk=acme_mail.pk)
    use("250")  # 850 tokens, 8.50 USD: 80% of the limit and of the cap now

    alerts_check(customer_pk=acme_mail.pk)
    alerts_check(customer_pk=acme_mail.pk)

    assert sorted((a.target, str(a.percent)) for a in Alert.objects.all()) == [
        ("meter:llm_tokens", "50"), ("meter:llm_tokens", "80"), ("spend_cap", "80")]
    assert len(mail.outbox) == 3


@pytest.mark.django_db
def test_a_new_period_alerts_again(acme_mail):
    subscribe(acme_mail, hard="1000")
    march, april = datetime(2026, 3, 10, tzinfo=timezone.utc), datetime(2026, 4, 2, tzinfo=timezone.utc)
    use("900", at=march)
    alerts_check(customer_pk=acme_mail.pk, now=march + timedelta(hours=1))
    alerts_check(customer_pk=acme_mail.pk, now=march + timedelta(days=5))
    use("100", at=april)
    alerts_check(customer_pk=acme_mail.pk, now=april + timedelta(hours=1))  # 100 of 1000 in April: nothing

    use("800", at=april + timedelta(hours=2))
    alerts_check(customer_pk=acme_mail.pk, now=april + timedelta(hours=3))

    assert [(a.period_start.month, a.used) for a in Alert.objects.order_by("period_start")] == [
        (3, Decimal(900)), (4, Decimal(900))]
    assert len(mail.outbox) == 2
    assert alerts_list(customer=acme_mail, period_start=datetime(2026, 4, 1, tzinfo=timezone.utc)).count() == 1


@pytest.mark.django_db
def test_an_alert_deferred_at_the_end_of_a_period_is_sent_the_next_day_but_not_later(acme_mail, monkeypatch):
    subscribe(acme_mail, hard="1000")
    march_end = datetime(2026, 3, 31, 23, 0, tzinfo=timezone.utc)
    use("900", at=march_end)

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("mail server down")

    with monkeypatch.context() as m:
        m.setattr(mail_delivery, "get_connection", down)
        with pytest.raises(AlertSendDeferred):
            alerts_check(customer_pk=acme_mail.pk, now=march_end)
    too_late = alerts_check(customer_pk=acme_mail.pk, now=datetime(2026, 4, 2, 1, tzinfo=timezone.utc))
    next_day = alerts_check(customer_pk=acme_mail.pk, now=datetime(2026, 4, 1, 8, tzinfo=timezone.utc))

    assert (too_late, next_day) == (0, 1)
    assert "2026-03-01 to 2026-04-01 00:00 UTC" in mail.outbox[0].body


@pytest.mark.django_db
def test_alerts_api_lists_the_open_period_or_a_named_one(acme_mail, make_client):
    subscribe(acme_mail, hard="1000")
    march = datetime(2026, 3, 10, tzinfo=timezone.utc)
    use("900", at=march)
    alerts_check(customer_pk=acme_mail.pk, now=march)
    key = make_client("read", customer=acme_mail)

    current = key.get("/api/v1/customers/acme-co/alerts").json()
    named = key.get("/api/v1/customers/acme-co/alerts?period=2026-03").json()
    bad = key.get("/api/v1/customers/acme-co/alerts?period=March")

    assert current["data"] == []
    assert (named["period_start"], named["period_end"]) == ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    assert [(a["target"], a["percent"], a["used"], a["limit"], a["unit"], a["status"]) for a in named["data"]] == [
        ("meter:llm_tokens", "80", "900", "1000", "token", "sent")]
    assert bad.status_code == 422


@pytest.mark.django_db
def test_alert_without_any_recipient_is_recorded_and_shown_but_not_mailed(acme):
    subscribe(acme, hard="100")
    use("100")

    alerts_check(customer_pk=acme.pk)

    assert [a.state for a in Alert.objects.all()] == ["no_recipients"]
    assert mail.outbox == []


# --- after ingest and the sweep -----------------------------------------------------------------------

@pytest.mark.django_db
def test_ingest_queues_one_delayed_check_per_customer_and_burst(acme, monkeypatch, django_capture_on_commit_callbacks):
    subscribe(acme, hard="1000")
    queued: list[tuple[Any, Any]] = []
    monkeypatch.setattr(tasks.alerts_check_task, "apply_async", lambda args, countdown: queued.append((args, countdown)))

    with django_capture_on_commit_callbacks(execute=True):
        for i in range(20):
            use("1", event_id=f"burst-{i}")
    queued_once = list(queued)
    alerts_service.cache.delete(alerts_service._mark(acme.pk))  # what the check does first,
    with django_capture_on_commit_callbacks(execute=True):
        use("1", event_id="within-the-countdown")  # but this process knows its check has not started yet
    alerts_service._QUEUED.clear()  # the countdown is over
    with django_capture_on_commit_callbacks(execute=True):
        use("1", event_id="after-the-check")

    assert queued_once == [([acme.pk], alerts_service.CHECK_DELAY_SECONDS)]
    assert queued == [([acme.pk], alerts_service.CHECK_DELAY_SECONDS)] * 2


@pytest.mark.django_db
def test_without_a_shared_cache_each_burst_after_a_countdown_queues_its_check(acme, monkeypatch, settings,
                                                                             django_capture_on_commit_callbacks):
    """The embedded default (no Redis): the worker's check cannot clear a mark in the web process's own
    cache, so none is set there; the process's countdown alone debounces."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "t"}}
    subscribe(acme, hard="1000")
    queued: list[tuple[Any, Any]] = []
    monkeypatch.setattr(tasks.alerts_check_task, "apply_async", lambda args, countdown: queued.append((args, countdown)))

    with django_capture_on_commit_callbacks(execute=True):
        use("1", event_id="first")
        use("1", event_id="same-burst")
    alerts_service._QUEUED.clear()  # the countdown is over; the check ran in the worker (its own cache)
    with django_capture_on_commit_callbacks(execute=True):
        use("1", event_id="next-burst")

    assert queued == [([acme.pk], alerts_service.CHECK_DELAY_SECONDS)] * 2


@pytest.mark.django_db
def test_a_broker_outage_never_fails_the_ingest(acme, monkeypatch, django_capture_on_commit_callbacks):
    subscribe(acme, hard="1000")

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.alerts_check_task, "apply_async", down)
    with django_capture_on_commit_callbacks(execute=True):
        use("900")  # asserts "accepted"

    assert alerts_service.cache.get(alerts_service._mark(acme.pk)) is None  # the next batch tries again
    assert acme.pk not in alerts_service._QUEUED


@pytest.mark.django_db
def test_end_to_end_events_through_the_api_to_the_email(acme_mail, ingest, django_capture_on_commit_callbacks,
                                                        celery_eager):
    subscribe(acme_mail, hard="1000")
    at = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()

    with django_capture_on_commit_callbacks(execute=True):  # the worker's job, run inline
        ok = post_json(ingest, "/api/v1/events", {"event_id": "big", "customer": "acme-co", "meter": "llm_tokens",
                                                  "quantity": "850", "timestamp": at})

    assert ok.status_code == 201
    assert len(mail.outbox) == 1 and "80%" in mail.outbox[0].subject


@pytest.mark.django_db
def test_sweep_catches_a_lost_check_and_reports_stale_claims(acme_mail, globex):
    subscribe(acme_mail, hard="1000")
    use("900")
    stuck = Alert.objects.create(customer=globex, period_start=START, period_end=START, target="spend_cap",
                                 percent=Decimal(80), limit=Decimal(1), used=Decimal(1), crossed_at=START,
                                 state=Alert.State.SENDING, claimed_at=datetime.now(timezone.utc) - timedelta(hours=1))

    sent = alerts_sweep()

    assert sent == 1 and len(mail.outbox) == 1
    stuck.refresh_from_db()
    assert stuck.state == "unknown"


# --- never twice: a real SMTP server, retries, crashes, concurrent workers ------------------------------

@pytest.mark.django_db
def test_real_smtp_server_receives_the_alert_once_across_a_retry_storm(acme_mail, smtp):
    subscribe(acme_mail, hard="1000")
    use("800")

    # the mail server is down: nothing is sent, the alert stays pending and the task would retry
    with pytest.raises(AlertSendDeferred):
        tasks.alerts_check_task(acme_mail.pk)
    assert Alert.objects.get().state == "pending"
    smtp.start()
    # it refuses the recipients once (550): still nothing delivered, still pending
    smtp.refuse_rcpt = 2
    with pytest.raises(AlertSendDeferred):
        tasks.alerts_check_task(acme_mail.pk)
    # the retry storm: the task again and again, the sweep too
    results = [tasks.alerts_check_task(acme_mail.pk) for _ in range(25)] + [tasks.alerts_sweep_task() for _ in range(3)]

    assert sum(results) == 1
    [message] = smtp.messages
    assert sorted(smtp.envelopes[0].rcpt_tos) == ["billing@acme.example", "dev@acme.example"]
    assert message["X-Tollgate-Alert"].startswith("acme-co/") and "/dashboard/" in message.get_payload()
    alert = Alert.objects.get()
    assert (alert.state, alert.attempts) == ("sent", 3)


@pytest.mark.django_db
def test_a_crash_after_the_claim_never_sends_a_second_email(acme_mail, smtp, monkeypatch):
    subscribe(acme_mail, hard="1000")
    use("800")
    smtp.start()

    def crash(*args: Any, **kwargs: Any) -> None:  # the worker dies after the claim, around the send
        raise SystemExit("worker killed")

    monkeypatch.setattr(mail_delivery, "get_connection", crash)
    with pytest.raises(SystemExit):
        tasks.alerts_check_task(acme_mail.pk)
    monkeypatch.undo()
    retried = [tasks.alerts_check_task(acme_mail.pk) for _ in range(5)]
    alerts_sweep(now=datetime.now(timezone.utc) + timedelta(hours=1))

    assert retried == [0] * 5 and smtp.messages == []
    assert Alert.objects.get().state == "unknown"  # at most once: reported, not resent


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_on_postgresql_deliver_one_email_to_a_real_smtp_server(acme_mail, smtp):
    subscribe(acme_mail, hard="1000")
    use("999")
    smtp.start()
    threads, rounds = 16, 5
    barrier = threading.Barrier(threads)

    def worker(_: int) -> int:
        try:
            barrier.wait()
            return sum(tasks.alerts_check_task(acme_mail.pk) for _ in range(rounds))
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        sent = list(pool.map(worker, range(threads)))

    assert sum(sent) == 1
    assert len(smtp.messages) == 1
    assert Alert.objects.get().attempts == 1


# --- EMAIL_URL --------------------------------------------------------------------------------------

def test_email_url_smtp_with_starttls_and_encoded_credentials():
    assert email_settings_from_url("smtp+tls://me%40example.com:p%2Fw@mail.example.com:2525?timeout=7") == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "mail.example.com",
        "EMAIL_PORT": 2525, "EMAIL_HOST_USER": "me@example.com", "EMAIL_HOST_PASSWORD": "p/w",
        "EMAIL_USE_TLS": True, "EMAIL_USE_SSL": False, "EMAIL_TIMEOUT": 7.0}


@pytest.mark.parametrize("url, expected", [
    ("smtp://relay", {"EMAIL_HOST": "relay", "EMAIL_PORT": 25, "EMAIL_USE_TLS": False, "EMAIL_USE_SSL": False}),
    ("smtp+ssl://relay", {"EMAIL_PORT": 465, "EMAIL_USE_SSL": True}),
    ("console://", {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}),
    ("file:///tmp/mail?from=alerts@x.example", {"EMAIL_FILE_PATH": "/tmp/mail", "DEFAULT_FROM_EMAIL": "alerts@x.example"}),
])
def test_email_url_schemes(url, expected):
    parsed = email_settings_from_url(url)

    assert {k: parsed[k] for k in expected} == expected


def test_email_url_in_the_environment_sets_djangos_email_settings(tmp_path):
    import subprocess
    import sys

    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_USE_TLS, s.DEFAULT_FROM_EMAIL)")
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portal.settings", "TOLLGATE_DATA_DIR": str(tmp_path),
           "EMAIL_URL": "smtp+tls://alerts%40acme.example:secret@smtp.example.com:2525", "EMAIL_HOST": "ignored",
           "DEFAULT_FROM_EMAIL": "billing@acme.example"}

    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout

    assert out.split() == ["django.core.mail.backends.smtp.EmailBackend", "smtp.example.com", "2525",
                           "alerts@acme.example", "True", "billing@acme.example"]


def test_email_url_with_an_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown scheme"):
        email_settings_from_url("mailgun://key@host")



# --- admin ------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_operator_sets_a_plan_threshold_in_the_admin_with_the_api_rules(acme, client):
    plan = subscribe(acme)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))
    url = "/admin/guardrails/alertthreshold/add/"

    bad = client.post(url, {"plan": plan.pk, "target": "meter:llm_tokens", "percent": "150"})
    good = client.post(url, {"plan": plan.pk, "target": "meter:llm_tokens", "percent": "60"})
    neither = client.post(url, {"target": "spend_cap", "percent": "60"})

    assert bad.status_code == 200 and good.status_code == 302 and neither.status_code == 200
    assert [(t.target, t.percent, t.source) for t in alert_thresholds_effective(customer=acme)] == [
        ("meter:llm_tokens", Decimal(60), "plan")]


@pytest.mark.django_db
def test_admin_action_sends_an_unknown_alert_again_only_when_asked(acme_mail, client):
    subscribe(acme_mail, hard="1000")
    use("800")
    alerts_check(customer_pk=acme_mail.pk)
    Alert.objects.update(state=Alert.State.UNKNOWN)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))

    alerts_check(customer_pk=acme_mail.pk)
    client.post("/admin/guardrails/alert/", {"action": "send_again", "_selected_action": [a.pk for a in Alert.objects.all()]})
    alerts_check(customer_pk=acme_mail.pk)

    assert len(mail.outbox) == 2
    assert Alert.objects.get().state == "sent"
