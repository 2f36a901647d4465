"""Onboarding: a Tollgate customer gets its Stripe customer from a task after commit; updates follow."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.customers.models import Customer
from billing.customers.services import customer_create, customer_update
from billing.payments.models import StripeCustomer, SyncState
from billing.payments.services import stripe_customer_sync
from billing.payments.sweep import stripe_sync_pending
from tests.billing.payments.conftest import after_backoff
from tests.conftest import post_json

pytestmark = pytest.mark.django_db


def test_creating_a_customer_creates_its_stripe_customer_after_commit(stripe_on, localstripe, celery_eager, admin,
                                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_json(admin, "/api/v1/customers", {"id": "initech", "name": "Initech", "email": "ap@initech.test"})
        assert response.status_code == 201
        # nothing has been sent before the commit
        assert stripe_on.requests == []
    for callback in callbacks:
        callback()
    customer = Customer.objects.get(external_id="initech")
    row = StripeCustomer.objects.get(customer=customer)
    assert row.state == SyncState.SYNCED and row.stripe_customer_id
    [remote] = localstripe.objects("customer")
    assert (remote.id, remote.name, remote.email, remote.metadata) == (
        row.stripe_customer_id, "Initech", "ap@initech.test", {"tollgate_installation": "inst-a", "tollgate_customer": "initech"})
    [call] = stripe_on.calls("post", "/v1/customers")
    assert call.idempotency_key == f"tg-inst-a-customer-{customer.pk}"


def test_a_customer_update_is_synced_to_stripe(stripe_on, localstripe, celery_eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        customer = customer_create(external_id="hooli", name="Hooli")
    with django_capture_on_commit_callbacks(execute=True):
        customer_update(customer=customer, data={"name": "Hooli XYZ", "email": "billing@hooli.test"})
    [remote] = localstripe.objects("customer")
    assert (remote.name, remote.email) == ("Hooli XYZ", "billing@hooli.test")
    [update] = stripe_on.calls("post", r"/v1/customers/cus_\w+")
    customer.refresh_from_db()
    assert update.idempotency_key == f"tg-inst-a-customer-{customer.pk}-update-{customer.updated_at.timestamp():.6f}"
    assert StripeCustomer.objects.get(customer=customer).state == SyncState.SYNCED


def test_an_outage_at_onboarding_leaves_it_pending_and_the_sweep_completes_it_once(stripe_on, localstripe):
    customer = customer_create(external_id="umbrella", name="Umbrella")
    localstripe.stop()
    row = stripe_customer_sync(customer_pk=customer.pk)
    assert row.state == SyncState.PENDING and row.attempts == 1 and row.last_error
    localstripe.start()
    assert stripe_sync_pending(now=after_backoff(row))["customers"] == 1
    row.refresh_from_db()
    assert row.state == SyncState.SYNCED
    assert len(localstripe.objects("customer")) == 1


def test_a_customer_made_before_stripe_was_configured_is_onboarded_by_the_sweep(stripe_on, localstripe):
    customer = customer_create(external_id="early", name="Early")
    StripeCustomer.objects.filter(customer=customer).delete()  # as if created before this app existed
    assert stripe_sync_pending()["customers"] == 1
    assert StripeCustomer.objects.get(customer=customer).state == SyncState.SYNCED


def test_the_onboarding_task_retries_an_outage_then_leaves_the_row_to_the_sweep(stripe_on, localstripe, celery_eager):
    from billing.payments.tasks import MAX_RETRIES, stripe_customer_sync_task

    customer = customer_create(external_id="flaky", name="Flaky")
    localstripe.stop()
    result = stripe_customer_sync_task.delay(customer.pk)  # eager: the retries run at once
    assert result.get(propagate=False) == SyncState.PENDING
    row = StripeCustomer.objects.get(customer=customer)
    assert row.attempts == MAX_RETRIES + 1 and row.state == SyncState.PENDING
    localstripe.start()
    assert stripe_sync_pending(now=after_backoff(row))["customers"] == 1
    assert len(localstripe.objects("customer")) == 1


def test_an_update_made_while_the_customer_was_being_pushed_is_not_lost(stripe_on, localstripe, monkeypatch):
    from billing.payments import services

    customer = customer_create(external_id="racy", name="Racy")
    real_push = services._customer_push

    def push_then_update(row, gateway):
        pushed = real_push(row, gateway)
        Customer.objects.filter(pk=customer.pk).update(name="Racy 2", updated_at=customer.updated_at + timedelta(seconds=1))
        return pushed

    with monkeypatch.context() as patch:
        patch.setattr(services, "_customer_push", push_then_update)
        row = stripe_customer_sync(customer_pk=customer.pk)
        assert row.state == SyncState.PENDING and row.next_attempt_at is None
    assert stripe_customer_sync(customer_pk=customer.pk).state == SyncState.SYNCED
    [remote] = localstripe.objects("customer")
    assert remote.name == "Racy 2"


def test_the_sweep_goes_past_a_row_that_fails_unexpectedly(settings, acme, globex, monkeypatch, caplog):
    """A row whose sync raises something other than Stripe's errors (a bug, bad data) is logged, and the
    rows after it are still pushed: it cannot hold back the whole sweep, run after run."""
    from types import SimpleNamespace

    from billing.payments import sweep

    settings.STRIPE_SECRET_KEY = "sk_test_tollgate"
    pushed: list[int] = []

    def sync(*, customer_pk: int, now: object) -> SimpleNamespace:
        if customer_pk == acme.pk:
            raise ValueError("bad data in this customer's row")
        pushed.append(customer_pk)
        return SimpleNamespace(state=SyncState.SYNCED)

    monkeypatch.setattr(sweep, "stripe_customer_sync", sync)

    assert stripe_sync_pending()["customers"] == 1
    assert pushed == [globex.pk]
    failed = [r for r in caplog.records if r.levelname == "ERROR" and "customer sync" in r.getMessage()]
    assert len(failed) == 1 and "bad data" in str(failed[0].exc_info[1])
