"""/api/v1/webhook-endpoints: admin only and operator-wide, the secret shown once, deliveries listed,
resend, and the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import pytest

from billing.notify.event_types import EVENT_TYPES
from billing.notify.models import WebhookDelivery, WebhookEndpoint
from billing.notify.services import event_emit
from tests.conftest import post_json

URL = "/api/v1/webhook-endpoints"
CONTRACT_TYPES = ["alert.soft_limit", "budget.alert", "circuit.tripped", "run.killed", "customer.paused",
                  "anomaly.opened", "anomaly.resolved", "invoice.finalized", "invoice.paid", "invoice.voided"]


def create(client: Any, **body: Any) -> Any:
    return post_json(client, URL, {"url": "https://ops.example/hooks", "events": ["invoice.paid"], **body})


@pytest.mark.django_db
def test_the_secret_is_shown_once_at_creation_and_never_again(admin):
    created = create(admin, events=["invoice.paid", "alert.soft_limit"], description="ops pager")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert body["id"].startswith("we_") and body["events"] == ["invoice.paid", "alert.soft_limit"]
    assert body["description"] == "ops pager" and body["active"] is True

    detail = admin.get(f"{URL}/{body['id']}")
    listed = admin.get(URL)
    assert detail.status_code == 200 and listed.status_code == 200
    assert "secret" not in detail.json() and body["secret"] not in detail.content.decode()
    assert [e["id"] for e in listed.json()["data"]] == [body["id"]]
    assert body["secret"] not in listed.content.decode()
    second = create(admin)
    assert second.json()["secret"] != body["secret"]  # one secret per endpoint


@pytest.mark.django_db
def test_every_contract_event_type_can_be_subscribed_to(admin):
    assert set(CONTRACT_TYPES) <= set(EVENT_TYPES)
    response = create(admin, events=CONTRACT_TYPES)
    assert response.status_code == 201, response.content
    assert response.json()["events"] == CONTRACT_TYPES


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://ops.example/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"events": []}, "events"),
    ({"events": ["invoice.paid", "invoice.exploded"]}, "events"),
])
def test_a_bad_url_or_event_type_is_422_by_field(admin, body, field):
    response = create(admin, **body)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "validation_error"
    assert field in response.json()["error"]["fields"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
def test_only_unrestricted_admin_keys_manage_endpoints(admin, make_client, acme):
    endpoint_id = create(admin).json()["id"]
    callers = {"read": make_client("read"), "ingest": make_client("ingest"),
               "read of acme": make_client("read", customer=acme), "admin of acme": make_client("admin", customer=acme)}
    for name, client in callers.items():
        answers = [client.get(URL), create(client), client.get(f"{URL}/{endpoint_id}"),
                   client.get(f"{URL}/{endpoint_id}/deliveries"), client.delete(f"{URL}/{endpoint_id}")]
        assert [a.status_code for a in answers] == [403] * 5, name
        assert all(a.json()["error"]["code"] == "forbidden" for a in answers)
        assert all(endpoint_id not in a.content.decode() for a in answers), name
    anonymous = post_json(type(admin)(), URL, {"url": "https://x.example", "events": ["invoice.paid"]})
    assert anonymous.status_code == 401
    assert WebhookEndpoint.objects.count() == 1 and WebhookEndpoint.objects.get().deleted_at is None


@pytest.mark.django_db
def test_a_deleted_endpoint_is_gone_and_its_pending_deliveries_are_cancelled(admin):
    endpoint_id = create(admin).json()["id"]
    event_emit(type="invoice.paid", key="invoice.paid:1", data={"invoice": {"id": 1}})
    assert WebhookDelivery.objects.get().state == "pending"

    deleted = admin.delete(f"{URL}/{endpoint_id}")
    assert deleted.status_code == 204
    assert admin.get(f"{URL}/{endpoint_id}").status_code == 404
    assert admin.delete(f"{URL}/{endpoint_id}").status_code == 404
    assert admin.get(URL).json()["data"] == []
    assert WebhookDelivery.objects.get().state == "cancelled"
    assert event_emit(type="invoice.paid", key="invoice.paid:2", data={}) is None  # nobody subscribes any more


@pytest.mark.django_db
def test_deliveries_are_listed_newest_first_and_filtered_by_status(admin):
    endpoint_id = create(admin).json()["id"]
    for n in (1, 2, 3):
        event_emit(type="invoice.paid", key=f"invoice.paid:{n}", data={"invoice": {"id": n}})
    WebhookDelivery.objects.filter(event__key="invoice.paid:1").update(state="delivered")

    listed = admin.get(f"{URL}/{endpoint_id}/deliveries").json()["data"]
    pending = admin.get(f"{URL}/{endpoint_id}/deliveries?status=pending&limit=1").json()["data"]
    assert [d["event"]["type"] for d in listed] == ["invoice.paid"] * 3
    assert [d["status"] for d in listed] == ["pending", "pending", "delivered"]
    assert listed[0]["event"]["id"].startswith("evt_") and listed[0]["attempts"] == 0
    assert len(pending) == 1 and pending[0]["id"] == listed[0]["id"]
    assert admin.get(f"{URL}/{endpoint_id}/deliveries?status=lost").status_code == 422
    assert admin.get(f"{URL}/we_unknown/deliveries").status_code == 404


@pytest.mark.django_db
def test_a_delivery_of_another_endpoint_cannot_be_resent_through_this_one(admin):
    first = create(admin).json()["id"]
    second = create(admin).json()["id"]
    event_emit(type="invoice.paid", key="invoice.paid:1", data={})
    delivery = WebhookDelivery.objects.get(endpoint__public_id=first)
    assert admin.post(f"{URL}/{second}/deliveries/{delivery.pk}/resend").status_code == 404
    assert admin.post(f"{URL}/{second}/deliveries/nope/resend").status_code == 404
    assert admin.post(f"{URL}/{first}/deliveries/{delivery.pk}/resend").status_code == 202


@pytest.mark.django_db
def test_the_openapi_schema_documents_the_webhook_endpoints(client):
    schema = client.get("/api/v1/schema?format=json").json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/webhook-endpoints"])
    assert {"get", "delete"} <= set(paths["/api/v1/webhook-endpoints/{endpoint_id}"])
    assert "get" in paths["/api/v1/webhook-endpoints/{endpoint_id}/deliveries"]
    assert "post" in paths["/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/resend"]
