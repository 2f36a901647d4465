"""What an operator does in /admin/ is in the audit log: saves, inline rows and deletes, with the operator as
the actor and the object's state before and after (secrets left out)."""

from __future__ import annotations

from typing import Any

import pytest

from billing.audit.models import AuditEntry
from billing.catalog.models import Meter
from billing.customers.models import ApiKey, Customer

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client: Any, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return user


def test_a_customer_added_with_a_project_inline_is_audited_with_its_operator(client: Any, operator: Any) -> None:
    response = client.post("/admin/customers/customer/add/", {
        "external_id": "initech", "name": "Initech", "email": "", "metadata": "{}",
        "projects-TOTAL_FORMS": "1", "projects-INITIAL_FORMS": "0", "projects-0-key": "tps", "projects-0-name": "TPS"})
    assert response.status_code == 302, response.content.decode()[:2000]

    customer = Customer.objects.get(external_id="initech")
    created = AuditEntry.objects.get(action="customer.created", object_id=str(customer.pk))
    assert (created.actor_type, created.actor_id, created.actor_label) == ("user", str(operator.pk), "root")
    assert created.before is None and (created.after or {})["external_id"] == "initech"
    project = AuditEntry.objects.get(action="project.created")
    assert (project.after or {})["key"] == "tps" and project.actor_id == str(operator.pk)


def test_an_admin_change_records_before_and_after(client: Any, operator: Any, tokens_meter: Meter) -> None:
    url = f"/admin/catalog/meter/{tokens_meter.pk}/change/"
    response = client.post(url, {"key": "llm_tokens", "name": "Tokens", "aggregation": "sum", "unit": "token",
                                 "unique_by": ""})
    assert response.status_code == 302

    entry = AuditEntry.objects.get(action="meter.updated")
    assert entry.object_type == "meter" and entry.object_id == str(tokens_meter.pk)
    assert (entry.before or {})["name"] == "LLM tokens" and (entry.after or {})["name"] == "Tokens"


def test_an_admin_delete_records_the_object_as_it_was(client: Any, operator: Any, tokens_meter: Meter) -> None:
    pk = tokens_meter.pk
    response = client.post(f"/admin/catalog/meter/{pk}/delete/", {"post": "yes"})
    assert response.status_code == 302

    entry = AuditEntry.objects.get(action="meter.deleted")
    assert entry.object_id == str(pk) and entry.after is None and (entry.before or {})["key"] == "llm_tokens"


def test_a_key_made_in_the_admin_is_audited_without_its_secret(client: Any, operator: Any) -> None:
    response = client.post("/admin/customers/apikey/add/", {"name": "ci", "scope": "read", "customer": ""})
    assert response.status_code == 302

    key = ApiKey.objects.get(name="ci")
    entry = AuditEntry.objects.get(action="api_key.created", object_id=str(key.pk))
    assert entry.actor_id == str(operator.pk) and "key_hash" not in (entry.after or {})
    client.post("/admin/customers/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert AuditEntry.objects.filter(action="api_key.revoked", object_id=str(key.pk), actor_id=str(operator.pk)).exists()
