from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

pytestmark = pytest.mark.django_db
OURS = ("portal", "customers", "catalog", "usage", "guardrails", "ledger")
# Django's admin cannot list a model with a composite primary key; an event's key is shown with its event
NOT_IN_ADMIN = {"EventKey"}


def test_every_tollgate_model_is_in_the_admin_and_its_list_opens(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client.force_login(user)
    models = [m for m in apps.get_models() if m._meta.app_label in OURS and m.__name__ not in NOT_IN_ADMIN]

    missing = [m.__name__ for m in models if m not in admin.site._registry]
    assert missing == []
    for model in models:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url
