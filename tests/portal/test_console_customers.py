"""The console's customer set-up: create and edit customers, projects, dashboard users and API keys. Each
flow is proved by what it stored, its error beside the input (once, and listed once above the form), its
audit entry with the staff user as actor, and a customer user's 403."""

from __future__ import annotations

from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.audit.models import AuditEntry
from billing.customers.models import ApiKey, Customer, CustomerUser
from billing.customers.services import api_key_authenticate, customer_user_create

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def ops(db: None) -> Any:
    return get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True)


@pytest.fixture
def staff(client: Any, ops: Any) -> Any:
    client.force_login(ops)
    return client


def page(response: Any) -> str:
    return unescape(response.content.decode())


def entry(action: str, **filters: Any) -> AuditEntry:
    found = AuditEntry.objects.filter(action=action, **filters).order_by("-id").first()
    assert found is not None, (action, list(AuditEntry.objects.values_list("action", flat=True)))
    return found


def assert_by(found: AuditEntry, user: Any) -> None:
    assert (found.actor_type, found.actor_id, found.actor_label) == ("user", str(user.pk), user.get_username())


def error_beside(html: str, field: str, text: str) -> None:
    """The message is beside its input, said once, and the summary above the form links to the input."""
    assert f'data-error-for="{field}">{text}' in html, html[:3000]
    assert html.count(text) == 1, html.count(text)
    assert "data-error-summary" in html


def test_a_customer_is_created_with_its_contact_and_metadata(staff: Any, ops: Any) -> None:
    response = staff.post("/console/customers/", {
        "external_id": "acme-co", "name": "Acme", "email": "ops@acme.test", "invoice_email": "ap@acme.test",
        "billing_address": "1 Main St\nSpringfield", "tax_id": "DE123456789", "tax_rate": "19",
        "metadata": '{"crm": "42"}'})

    assert response.status_code == 302 and response["Location"] == "/console/customers/acme-co/?saved=created"
    acme = Customer.objects.get(external_id="acme-co")
    assert (acme.name, acme.email, acme.invoice_email, acme.metadata) == ("Acme", "ops@acme.test", "ap@acme.test",
                                                                          {"crm": "42"})
    assert (acme.billing_address, acme.tax_id, acme.tax_rate, acme.tax_reverse_charge) == (
        "1 Main St\nSpringfield", "DE123456789", Decimal("19"), False)
    assert_by(entry("customer.created", object_id=str(acme.pk)), ops)
    listing = page(staff.get("/console/customers/"))
    assert 'data-customer="acme-co"' in listing and "ap@acme.test" in listing
    assert "Customer created" in page(staff.get(response["Location"]))


def test_a_bad_customer_id_is_refused_beside_its_input(staff: Any) -> None:
    response = staff.post("/console/customers/", {"external_id": "-bad id", "name": "X", "metadata": "[1]"})

    html = page(response)
    assert response.status_code == 422
    error_beside(html, "external_id", "Use 1-128 letters, digits")
    error_beside(html, "metadata", 'A JSON object, e.g. {"crm_id": "42"}.')
    assert not Customer.objects.exists()


def test_a_taken_customer_id_is_refused_beside_its_input(staff: Any, acme: Customer) -> None:
    response = staff.post("/console/customers/", {"external_id": "acme-co", "name": "Again"})

    assert response.status_code == 422
    error_beside(page(response), "external_id", "A customer 'acme-co' already exists.")


def test_details_are_edited_as_a_fragment(staff: Any, ops: Any, acme: Customer) -> None:
    response = staff.post("/console/customers/acme-co/details", {
        "name": "Acme Corp", "email": "billing@acme.test", "tax_id": "GB999", "tax_reverse_charge": "on",
        "metadata": ""}, **HTMX)
    bad = staff.post("/console/customers/acme-co/details", {"name": "", "email": "nope", "tax_rate": "250",
                                                             "metadata": ""}, **HTMX)

    assert response.status_code == 200 and "<html" not in page(response) and "Details saved." in page(response)
    acme.refresh_from_db()
    assert (acme.name, acme.email, acme.tax_id, acme.tax_reverse_charge) == ("Acme Corp", "billing@acme.test", "GB999",
                                                                             True)
    updated = entry("customer.updated", object_id=str(acme.pk))
    assert_by(updated, ops)
    assert updated.before is not None and updated.after is not None
    assert updated.before["name"] == "Acme" and updated.after["name"] == "Acme Corp"
    error_beside(page(bad), "email", "Enter a valid email address.")
    error_beside(page(bad), "name", "This field is required.")
    error_beside(page(bad), "tax_rate", "Ensure this value is less than or equal to 100.")


def test_projects_are_added_and_a_duplicate_is_refused(staff: Any, ops: Any, acme: Customer) -> None:
    added = staff.post("/console/customers/acme-co/projects", {"key": "chatbot", "name": "Chat bot"}, **HTMX)
    again = staff.post("/console/customers/acme-co/projects", {"key": "chatbot"}, **HTMX)

    assert 'data-project="chatbot"' in page(added)
    assert_by(entry("project.created"), ops)
    error_beside(page(again), "key", "Customer 'acme-co' already has a project 'chatbot'.")
    # the input names its message for assistive technology
    assert 'aria-invalid="true" aria-describedby="project-key_helptext project-key_error"' in page(again)
    assert '<div id="project-key_error"><p class="error" data-error-for="key">' in page(again)
    assert acme.projects.count() == 1


def test_dashboard_users_are_created_reset_and_deactivated(staff: Any, ops: Any, acme: Customer) -> None:
    ann = Client()
    created = staff.post("/console/customers/acme-co/users", {"username": "ann", "email": "ann@acme.test",
                                                               "password": "pw-ann-123456"}, **HTMX)
    binding = CustomerUser.objects.get(user__username="ann")
    weak = staff.post(f"/console/customers/acme-co/users/{binding.user_id}/password", {"password": "short"}, **HTMX)
    reset = staff.post(f"/console/customers/acme-co/users/{binding.user_id}/password", {"password": "new-pw-98765"},
                       **HTMX)
    taken = staff.post("/console/customers/acme-co/users", {"username": "ann", "password": "pw-ann-123456"}, **HTMX)

    assert 'data-user="ann"' in page(created)
    assert_by(entry("customer_user.created"), ops)
    error_beside(page(weak), "password", "This password is too short.")
    assert "New password of ann set." in page(reset)
    assert_by(entry("customer_user.password_reset", object_id=str(binding.pk)), ops)
    assert "password" not in str(entry("customer_user.password_reset").after)  # never the hash
    error_beside(page(taken), "username", "This username is taken.")
    assert ann.login(username="ann", password="new-pw-98765")

    off = staff.post(f"/console/customers/acme-co/users/{binding.user_id}/active", {"active": "0"}, **HTMX)

    assert 'data-active="0"' in page(off)
    deactivated = entry("customer_user.deactivated")
    assert_by(deactivated, ops)
    assert deactivated.before is not None and deactivated.after is not None
    assert (deactivated.before["is_active"], deactivated.after["is_active"]) == (True, False)
    assert not ann.login(username="ann", password="new-pw-98765")


def test_a_key_is_shown_once_works_and_is_revoked(staff: Any, ops: Any, acme: Customer) -> None:
    created = page(staff.post("/console/customers/acme-co/keys", {"name": "prod ingest", "scope": "ingest"}, **HTMX))

    raw = created.split('id="new-key"')[1].split("<code>")[1].split("</code>")[0]
    key = ApiKey.objects.get(name="prod ingest")
    assert key.customer == acme and raw.startswith(f"tg_{key.prefix}_")
    assert api_key_authenticate(raw_key=raw) is not None
    assert_by(entry("api_key.created", object_id=str(key.pk)), ops)
    shown_again = page(staff.get("/console/customers/acme-co/"))
    key.refresh_from_db()
    assert key.last_used_at is not None  # the authentication above used it
    assert raw not in shown_again and f"tg_{key.prefix}_…" in shown_again
    assert f"<td>{key.last_used_at:%Y-%m-%d %H:%M}</td>" in shown_again

    revoked = page(staff.post(f"/console/customers/acme-co/keys/{key.prefix}/revoke", **HTMX))

    assert f'data-prefix="{key.prefix}" data-active="0"' in revoked
    assert api_key_authenticate(raw_key=raw) is None
    assert_by(entry("api_key.revoked", object_id=str(key.pk)), ops)


def test_a_key_without_a_name_is_refused_beside_its_input(staff: Any, acme: Customer) -> None:
    response = staff.post("/console/customers/acme-co/keys", {"name": "", "scope": "ingest"})

    assert response.status_code == 422
    error_beside(page(response), "name", "This field is required.")
    assert not ApiKey.objects.exists()


def test_operator_keys_have_no_customer_and_a_gateway_key_needs_one(staff: Any, ops: Any) -> None:
    created = page(staff.post("/console/api-keys/", {"name": "etl", "scope": "read"}, **HTMX))
    gateway = staff.post("/console/api-keys/", {"name": "llm", "scope": "gateway"})

    key = ApiKey.objects.get(name="etl")
    assert key.customer is None and 'id="new-key"' in created
    assert_by(entry("api_key.created", object_id=str(key.pk)), ops)
    assert gateway.status_code == 422
    assert 'data-error-for="key">A gateway key belongs to one customer: name it.' in page(gateway)
    staff.post(f"/console/api-keys/{key.prefix}/revoke")
    key.refresh_from_db()
    assert key.revoked_at is not None


URLS = ["/console/customers/", "/console/customers/acme-co/", "/console/api-keys/"]
POSTS = ["/console/customers/", "/console/customers/acme-co/details", "/console/customers/acme-co/projects",
         "/console/customers/acme-co/users", "/console/customers/acme-co/keys", "/console/api-keys/",
         "/console/customers/acme-co/subscription", "/console/customers/acme-co/subscription/cancel",
         "/console/customers/acme-co/credits", "/console/invoices/prepare", "/console/invoices/1/finalize"]


def test_customer_users_get_403_and_anonymous_users_the_login(client: Any, acme: Customer) -> None:
    for url in URLS:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    customer_user_create(customer=acme, username="dev", password="pw-123456")
    client.login(username="dev", password="pw-123456")
    for url in URLS:
        assert client.get(url).status_code == 403, url
    before = AuditEntry.objects.count()
    for url in POSTS:
        assert client.post(url, {"external_id": "x", "name": "x", "key": "x", "scope": "admin"}).status_code == 403, url
    assert AuditEntry.objects.count() == before and not ApiKey.objects.exists()


def test_the_console_navigation_links_every_operator_page(staff: Any) -> None:
    nav = page(staff.get("/console/customers/")).split('<nav aria-label="Console">')[1].split("</nav>")[0]

    for url in ("/console/", "/console/customers/", "/console/invoices/", "/console/api-keys/", "/console/anomalies/",
                "/console/webhooks/", "/console/audit/"):
        assert f'href="{url}"' in nav, url
        if url.startswith("/console/"):
            assert staff.get(url).status_code == 200, url
