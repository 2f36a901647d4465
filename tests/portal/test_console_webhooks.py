"""The console's webhook endpoints: created through ``endpoint_create`` with the secret shown once, listed
with their last delivery, disabled, enabled and deleted; each write audited with the staff user; a refusal
beside its input and in the summary; customer users refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.audit.models import AuditEntry
from billing.customers.models import Customer
from billing.customers.services import customer_user_create
from billing.notify.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from billing.notify.services import endpoint_create, event_emit
from tests.portal.test_console_customers import assert_by, entry, error_beside, page

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops(db: None) -> Any:
    return get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)


@pytest.fixture
def staff(client: Any, ops: Any) -> Any:
    client.force_login(ops)
    return client


def test_an_endpoint_is_created_and_its_secret_shown_once(staff: Any, ops: Any) -> None:
    response = staff.post("/console/webhooks/", {"url": "https://hooks.acme.test/tg", "description": "ops",
                                                 "events": ["invoice.paid", "run.killed"]})

    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.url, endpoint.events, endpoint.active) == ("https://hooks.acme.test/tg",
                                                                ["invoice.paid", "run.killed"], True)
    html = page(response)
    assert endpoint.secret in html and f'data-endpoint="{endpoint.public_id}"' in html
    assert endpoint.secret not in page(staff.get("/console/webhooks/"))
    found = entry("webhook_endpoint.created", object_id=str(endpoint.pk))
    assert_by(found, ops)
    assert "secret" not in (found.after or {})


def test_a_bad_url_and_no_events_are_refused_beside_their_inputs(staff: Any) -> None:
    response = staff.post("/console/webhooks/", {"url": "ftp://nowhere"})

    assert response.status_code == 422
    html = page(response)
    error_beside(html, "url", "An absolute http:// or https:// URL.")
    error_beside(html, "events", "At least one event type.")
    assert 'href="#endpoint-url"' in html and 'href="#endpoint-events"' in html
    assert not WebhookEndpoint.objects.exists()


def test_an_unknown_event_type_is_refused(staff: Any) -> None:
    response = staff.post("/console/webhooks/", {"url": "https://x.test/", "events": ["invoice.eaten"]})

    assert response.status_code == 422
    assert 'data-error-for="events">Select a valid choice.' in page(response)
    assert not WebhookEndpoint.objects.exists()


def test_an_endpoint_is_disabled_enabled_and_deleted(staff: Any, ops: Any) -> None:
    endpoint = endpoint_create(url="https://x.test/", events=["invoice.paid"])

    response = staff.post(f"/console/webhooks/{endpoint.public_id}/active", {"active": "0"})
    assert response.status_code == 302 and response["Location"] == "/console/webhooks/?saved=disabled"
    endpoint.refresh_from_db()
    assert not endpoint.active
    assert event_emit(type="invoice.paid", key="invoice.paid:1", data={}) is None  # a disabled endpoint gets nothing
    assert_by(entry("webhook_endpoint.disabled", object_id=str(endpoint.pk)), ops)
    html = page(staff.get(response["Location"]))
    assert f'data-endpoint="{endpoint.public_id}" data-active="0"' in html and "Endpoint disabled" in html

    staff.post(f"/console/webhooks/{endpoint.public_id}/active", {"active": "1"})
    endpoint.refresh_from_db()
    assert endpoint.active
    assert_by(entry("webhook_endpoint.enabled", object_id=str(endpoint.pk)), ops)

    response = staff.post(f"/console/webhooks/{endpoint.public_id}/delete")
    assert response["Location"] == "/console/webhooks/?saved=deleted"
    endpoint.refresh_from_db()
    assert endpoint.deleted_at is not None and not endpoint.active
    assert_by(entry("webhook_endpoint.deleted", object_id=str(endpoint.pk)), ops)
    assert endpoint.public_id not in page(staff.get("/console/webhooks/"))
    assert staff.post(f"/console/webhooks/{endpoint.public_id}/delete").status_code == 404


def test_the_list_shows_each_endpoints_last_delivery(staff: Any) -> None:
    endpoint = endpoint_create(url="https://x.test/", events=["invoice.paid"])
    quiet = endpoint_create(url="https://y.test/", events=["invoice.paid"])
    now = datetime.now(timezone.utc)
    for n, (state, status) in enumerate([("delivered", 200), ("failed", 503)]):
        event = WebhookEvent.objects.create(public_id=f"evt_{n}", key=f"k{n}", type="invoice.paid", created=now)
        WebhookDelivery.objects.create(event=event, endpoint=endpoint, state=state, last_status=status,
                                       last_attempt_at=now, retry_until=now + timedelta(hours=1))

    html = page(staff.get("/console/webhooks/"))

    row = html.split(f'data-endpoint="{endpoint.public_id}"')[1].split("</tr>")[0]
    assert 'data-last="failed"' in row and "HTTP 503" in row
    assert "none yet" in html.split(f'data-endpoint="{quiet.public_id}"')[1].split("</tr>")[0]


def test_customer_users_get_403_and_anonymous_users_the_login(client: Any, acme: Customer) -> None:
    endpoint = endpoint_create(url="https://x.test/", events=["invoice.paid"])
    urls = ["/console/webhooks/", f"/console/webhooks/{endpoint.public_id}/active",
            f"/console/webhooks/{endpoint.public_id}/delete"]
    for url in urls:
        response = client.post(url, {"url": "https://z.test/", "events": ["invoice.paid"], "active": "0"})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    customer_user_create(customer=acme, username="dev", password="pw-123456")
    client.login(username="dev", password="pw-123456")
    before = AuditEntry.objects.count()
    assert client.get(urls[0]).status_code == 403
    for url in urls:
        assert client.post(url, {"url": "https://z.test/", "events": ["invoice.paid"], "active": "0"}).status_code == 403
    endpoint.refresh_from_db()
    assert endpoint.active and endpoint.deleted_at is None and WebhookEndpoint.objects.count() == 1
    assert AuditEntry.objects.count() == before
