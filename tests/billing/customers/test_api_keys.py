"""API keys: shown once, stored hashed, revocable, scoped, optionally bound to one customer."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from billing.customers.models import ApiKey
from billing.customers.services import api_key_authenticate, api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db


def test_stored_key_is_not_recoverable_from_the_database(acme):
    _, raw = api_key_create(name="k", scope="admin")

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM customers_apikey")
        dump = " ".join(str(value) for row in cursor.fetchall() for value in row)
    secret = raw.split("_", 2)[2]
    assert raw not in dump
    assert secret not in dump
    assert secret[:8] not in dump
    # what is stored is a digest of the whole key, nothing reversible
    assert ApiKey.objects.get().key_hash == hashlib.sha256(raw.encode()).hexdigest()


def test_key_authenticates_only_with_its_exact_secret(acme):
    key, raw = api_key_create(name="k", scope="read", customer=acme)

    principal = api_key_authenticate(raw_key=raw)
    assert principal is not None
    assert principal.scopes == frozenset({"read"}) and principal.customer_id == acme.pk
    tampered = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert api_key_authenticate(raw_key=tampered) is None
    assert api_key_authenticate(raw_key=f"tg_{key.prefix}_") is None


def test_revoked_key_no_longer_authenticates():
    key, raw = api_key_create(name="k", scope="ingest")
    api_key_revoke(key=key)

    assert api_key_authenticate(raw_key=raw) is None


def test_last_used_at_is_recorded():
    key, raw = api_key_create(name="k", scope="ingest")
    assert key.last_used_at is None

    api_key_authenticate(raw_key=raw)

    key.refresh_from_db()
    assert key.last_used_at is not None


def test_apikey_command_prints_a_working_key_once(acme):
    out = StringIO()
    call_command("apikey", "create", "--name", "ci", "--scope", "read", "--customer", "acme-co", stdout=out)
    raw = out.getvalue().strip()

    principal = api_key_authenticate(raw_key=raw)
    assert principal is not None and principal.customer_id == acme.pk
    listing = StringIO()
    call_command("apikey", "list", stdout=listing)
    assert raw not in listing.getvalue()
    assert ApiKey.objects.get().prefix in listing.getvalue()


def test_apikey_command_revokes_by_prefix():
    key, raw = api_key_create(name="k", scope="ingest")

    call_command("apikey", "revoke", key.prefix, stdout=StringIO())

    assert api_key_authenticate(raw_key=raw) is None


# --- tenant isolation ---------------------------------------------------------------------------------

@pytest.fixture
def globex_events(globex, tokens_meter, event, make_client):
    from tests.conftest import post_json

    admin = make_client("admin")
    assert post_json(admin, "/api/v1/events", event("g-1", customer="globex", quantity="7")).status_code == 201
    assert post_json(admin, "/api/v1/events", event("a-1", customer="acme-co", quantity="5")).status_code == 201


@pytest.mark.parametrize("path", [
    "/api/v1/customers/globex",
    "/api/v1/customers/globex/usage",
    "/api/v1/customers/globex/projects",
    "/api/v1/events?customer=globex",
])
def test_key_restricted_to_a_cannot_read_b_and_gets_the_same_404_as_for_a_missing_customer(
    make_client, acme, globex_events, path
):
    acme_reader = make_client("read", customer=acme)

    response = acme_reader.get(path)
    missing = acme_reader.get(path.replace("globex", "no-such-customer"))

    assert response.status_code == 404
    assert missing.status_code == 404
    assert response.json() == missing.json()
    assert b"7" not in response.content


def test_restricted_key_lists_only_its_own_customer_and_events(make_client, acme, globex_events):
    acme_reader = make_client("read", customer=acme)

    customers = acme_reader.get("/api/v1/customers").json()["data"]
    events = acme_reader.get("/api/v1/events").json()["data"]

    assert [c["id"] for c in customers] == ["acme-co"]
    assert {e["customer"] for e in events} == {"acme-co"}


def test_restricted_key_cannot_create_customers_or_change_another(make_client, acme, globex):
    acme_admin = make_client("admin", customer=acme)

    assert acme_admin.post("/api/v1/customers", {"id": "new"}, format="json").status_code == 403
    assert acme_admin.patch("/api/v1/customers/globex", {"name": "pwned"}, format="json").status_code == 404
    globex.refresh_from_db()
    assert globex.name == "Globex"


@pytest.mark.parametrize(("scope", "method", "path", "expected"), [
    ("ingest", "get", "/api/v1/customers/acme-co/usage", 403),
    ("read", "post", "/api/v1/customers", 403),
    ("read", "post", "/api/v1/meters", 403),
    ("ingest", "post", "/api/v1/customers/acme-co/projects", 403),
    ("read", "get", "/api/v1/customers/acme-co/usage", 200),
    ("ingest", "get", "/api/v1/meters", 200),
])
def test_scopes_gate_each_operation(make_client, acme, tokens_meter, scope, method, path, expected):
    client = make_client(scope)

    response = getattr(client, method)(path, {"id": "x", "key": "m", "aggregation": "sum"}
                                       if method == "post" else None, format="json")

    assert response.status_code == expected


def test_customer_user_session_sees_only_its_customer(client, acme, globex, globex_events):
    from billing.customers.services import customer_user_create

    customer_user_create(customer=acme, username="dev", password="pw-123456")
    client.login(username="dev", password="pw-123456")

    assert client.get("/api/v1/customers/acme-co/usage").status_code == 200
    assert client.get("/api/v1/customers/globex/usage").status_code == 404
    assert client.post("/api/v1/events", {}, content_type="application/json").status_code == 403
