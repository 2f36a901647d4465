"""Corrections are bounded (contract: "Corrections are bounded"): a correction that would take its original's
corrected quantity below zero is ``422 correction_exceeds_original``, in one request, in one batch, and
across concurrent requests; a retried correction stays a duplicate."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection

from billing.usage.models import UsageEvent
from tests.conftest import post_json

EVENTS, BATCH = "/api/v1/events", "/api/v1/events/batch"


@pytest.fixture(autouse=True)
def _catalog(acme, tokens_meter):
    pass


@pytest.mark.django_db
def test_a_correction_below_zero_is_refused_and_one_down_to_zero_is_not(ingest, event):
    post_json(ingest, EVENTS, event("orig", quantity="4001"))

    too_much = post_json(ingest, EVENTS, event("c1", quantity="-50000", corrects="orig"))
    exact = post_json(ingest, EVENTS, event("c2", quantity="-4001", corrects="orig"))
    one_more = post_json(ingest, EVENTS, event("c3", quantity="-1", corrects="orig"))
    retry = post_json(ingest, EVENTS, event("c2", quantity="-4001", corrects="orig"))

    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "correction_exceeds_original"
    assert exact.status_code == 201
    assert one_more.status_code == 422
    assert retry.status_code == 200 and retry.json()["status"] == "duplicate"
    assert sum(e.quantity for e in UsageEvent.objects.all()) == 0


@pytest.mark.django_db
def test_positive_corrections_raise_the_bound_once_stored_and_a_batch_counts_its_own(ingest, event):
    post_json(ingest, EVENTS, event("orig", quantity="10"))
    assert post_json(ingest, EVENTS, event("up", quantity="5", corrects="orig")).status_code == 201

    response = post_json(ingest, BATCH, {"events": [
        event("down1", quantity="-9", corrects="orig"), event("down2", quantity="-6", corrects="orig"),
        event("down3", quantity="-1", corrects="orig")]})

    assert [r.get("error", {}).get("code", r["status"]) for r in response.json()["results"]] == [
        "accepted", "accepted", "correction_exceeds_original"]
    assert sum(e.quantity for e in UsageEvent.objects.all()) == 0


@pytest.mark.django_db
def test_a_correction_of_an_original_in_the_same_batch_is_bounded_by_it(ingest, event):
    response = post_json(ingest, BATCH, {"events": [event("o", quantity="3"),
                                                    event("c", quantity="-4", corrects="o")]})

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected"]
    assert response.json()["results"][1]["error"]["code"] == "correction_exceeds_original"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_corrections_never_take_an_original_below_zero(ingest, event):
    # given an original of 500 and eight clients each correcting it by -100 at once
    post_json(ingest, EVENTS, event("orig", quantity="500"))
    barrier = threading.Barrier(8)

    def correct(n: int) -> int:
        barrier.wait()
        try:
            return post_json(ingest, EVENTS, event(f"fix-{n}", quantity="-100", corrects="orig")).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(correct, range(8)))

    # then exactly five are accepted and the corrected quantity is exactly zero
    assert sorted(statuses) == [201] * 5 + [422] * 3
    assert sum(e.quantity for e in UsageEvent.objects.all()) == Decimal(0)
