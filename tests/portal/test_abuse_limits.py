"""Abuse limits: failed logins are throttled per address and username (and per address) on both login pages,
unauthenticated API traffic is rate limited per address, and adding a dashboard login says nothing about
another tenant's login names."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from billing.common import degraded
from billing.customers.models import CustomerUser
from portal import throttle

pytestmark = pytest.mark.django_db
LOGIN_PAGES = ("/accounts/login/", "/admin/login/")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    throttle._suspects.clear()


@pytest.fixture
def limits(settings: Any) -> Any:
    settings.TOLLGATE_LOGIN_FAILURES_PER_ACCOUNT = 3
    settings.TOLLGATE_LOGIN_FAILURES_PER_IP = 6
    settings.TOLLGATE_LOGIN_WINDOW_SECONDS = 900
    settings.TOLLGATE_ANON_RATE_LIMIT_PER_MINUTE = 5
    return settings


@pytest.fixture
def ops() -> User:
    return User.objects.create_user("ops", password="right-pw-123", is_staff=True, is_superuser=True)


def _login(client: Client, page: str, username: str, password: str, address: str = "10.0.0.1") -> Any:
    return client.post(page, {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_failed_logins_beyond_the_limit_are_429_even_with_the_right_password(client, limits, ops, page):
    tries = [_login(client, page, "ops", "wrong").status_code for _ in range(3)]

    refused = _login(client, page, "ops", "right-pw-123")

    assert tries == [200, 200, 200]  # the form again, with its error
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 900
    assert b"rate_limited" in refused.content
    assert "_auth_user_id" not in client.session


def test_the_count_is_per_address_and_username_so_nobody_locks_a_user_out_from_elsewhere(client, limits, ops):
    for _ in range(3):
        _login(client, "/accounts/login/", "ops", "wrong", address="10.0.0.66")

    elsewhere = _login(Client(), "/accounts/login/", "ops", "right-pw-123", address="10.0.0.2")

    assert elsewhere.status_code == 302


def test_an_address_trying_many_usernames_is_throttled_too(client, limits, ops):
    statuses = [_login(client, "/accounts/login/", f"user{i}", "wrong").status_code for i in range(6)]

    assert statuses == [200] * 6
    assert _login(client, "/accounts/login/", "ops", "right-pw-123").status_code == 429


def test_a_success_clears_the_count_of_that_address_and_username(client, limits, ops):
    for _ in range(2):
        _login(client, "/admin/login/", "ops", "wrong")
    assert _login(client, "/admin/login/", "ops", "right-pw-123").status_code == 302
    client.logout()

    statuses = [_login(client, "/admin/login/", "ops", "wrong").status_code for _ in range(3)]

    assert statuses == [200, 200, 200]


def test_with_the_cache_down_logins_fail_open(client, limits, ops, settings, caplog):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:9/0"}}
    degraded._last_logged.clear()
    caplog.set_level(logging.WARNING, logger="tollgate.degraded")

    for _ in range(4):
        _login(client, "/accounts/login/", "ops", "wrong")

    assert _login(client, "/accounts/login/", "ops", "right-pw-123").status_code == 302
    assert any("login_throttle_cache unavailable" in r.getMessage() for r in caplog.records)


def test_unauthenticated_api_requests_are_rate_limited_per_address(client, limits):
    statuses = [client.get("/api/v1/customers", REMOTE_ADDR="10.0.0.9").status_code for _ in range(7)]
    other = client.get("/api/v1/customers", REMOTE_ADDR="10.0.0.10")

    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]
    assert other.status_code == 401
    refused = client.get("/api/v1/customers", REMOTE_ADDR="10.0.0.9")
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused["Retry-After"]) <= 60


def test_guessing_keys_is_rate_limited_and_then_even_a_right_key_waits(client, limits, acme, make_client):
    good = make_client("admin")
    statuses = [client.get("/api/v1/customers", HTTP_AUTHORIZATION=f"Bearer tg_{i:012x}_guess",
                           REMOTE_ADDR="10.0.0.7").status_code for i in range(7)]

    right = client.get("/api/v1/customers", HTTP_AUTHORIZATION=f"Bearer {good.raw_key}", REMOTE_ADDR="10.0.0.7")

    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    assert right.status_code == 429  # the address is refused, whatever it sends: guessing learns nothing


def test_authenticated_clients_are_not_counted(client, limits, acme, make_client):
    good = make_client("admin")

    statuses = [client.get("/api/v1/customers", HTTP_AUTHORIZATION=f"Bearer {good.raw_key}",
                           REMOTE_ADDR="10.0.0.8").status_code for _ in range(12)]

    assert statuses == [200] * 12


def test_a_dashboard_user_adds_logins_in_their_own_namespace(client, acme, globex):
    # given another tenant's user named "bob", and a dashboard user of acme
    User.objects.create_user("bob", password="x-123456789")
    User.objects.create_user("carol@globex", password="x-123456789")
    ann = User.objects.create_user("ann@acme-co", password="pw-ann-12345")
    CustomerUser.objects.create(user=ann, customer=acme)
    client.force_login(ann)

    # when ann adds "bob" and "carol"
    bob = client.post("/dashboard/acme-co/settings/users", {"username": "bob", "password": "pw-bob-1234"})
    carol = client.post("/dashboard/acme-co/settings/users", {"username": "carol", "password": "pw-carol-1234"})
    again = client.post("/dashboard/acme-co/settings/users", {"username": "bob", "password": "pw-bob-1234"})

    # then both are created in acme's namespace: nothing says that another tenant has a "bob" or a "carol"
    assert bob.status_code == 302 and carol.status_code == 302
    assert set(CustomerUser.objects.filter(customer=acme).values_list("user__username", flat=True)) == {
        "ann@acme-co", "bob@acme-co", "carol@acme-co"}
    assert again.status_code == 422
    assert "bob@acme-co exists already" in again.content.decode()
    assert b"taken" not in again.content
