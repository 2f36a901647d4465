"""Reserve, then settle: holds count against limits, settle posts what was used, the rest is released."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from billing.guardrails.models import Reservation
from billing.guardrails.reservations import reservations_expire
from billing.usage.models import UsageEvent
from tests.billing.guardrails.test_limits_at_ingest import body, catalog, subscribe
from tests.conftest import post_json

pytestmark = [pytest.mark.django_db, pytest.mark.ledger]
AT = datetime.now(timezone.utc) - timedelta(seconds=5)


def reserve(client, rid: str, quantity: str, ttl: int = 60, **extra: object):
    return post_json(client, "/api/v1/reservations", {"reservation_id": rid, "customer": "acme-co", "meter": "llm_tokens",
                                                      "quantity": quantity, "ttl_seconds": ttl, **extra})


def quota(admin) -> dict:
    return admin.get("/api/v1/customers/acme-co/balance").json()["quotas"][0]


def test_a_reservation_holds_quota_that_other_usage_cannot_take(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))

    held = reserve(ingest, "r1", "70")
    blocked = post_json(ingest, "/api/v1/events", json.loads(body("other", "31")))
    fits = post_json(ingest, "/api/v1/events", json.loads(body("small", "30")))

    assert held.status_code == 201 and held.json()["status"] == "pending" and held.json()["held"]["quota"]
    assert blocked.status_code == 402 and blocked.json()["error"]["remaining"] == "30"
    assert fits.status_code == 201
    assert (quota(admin)["used"], quota(admin)["reserved"], quota(admin)["remaining"]) == ("30", "70", "0")


def test_a_reservation_that_does_not_fit_is_402_and_holds_nothing(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))

    response = reserve(ingest, "big", "101")

    assert response.status_code == 402
    assert response.json()["error"]["code"] == "quota_exceeded" and response.json()["error"]["remaining"] == "100"
    assert not Reservation.objects.exists()
    assert quota(admin)["reserved"] == "0"


def test_reservation_ids_are_idempotent(acme, ingest):
    subscribe(acme, catalog(hard="100"))

    first, again, other = reserve(ingest, "r", "10"), reserve(ingest, "r", "10"), reserve(ingest, "r", "11")

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)


def test_settle_posts_what_was_used_and_releases_the_rest(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "r1", "50")

    settled = post_json(ingest, "/api/v1/reservations/r1/settle",
                        {"events": [json.loads(body("s1", "20")), json.loads(body("s2", "10"))]})
    again = post_json(ingest, "/api/v1/reservations/r1/settle",
                      {"events": [json.loads(body("s1", "20")), json.loads(body("s2", "10"))]})

    assert settled.status_code == 200, settled.content
    assert settled.json()["status"] == "settled" and settled.json()["accepted"] == 2
    assert again.json()["duplicates"] == 2
    assert (quota(admin)["used"], quota(admin)["reserved"], quota(admin)["remaining"]) == ("30", "0", "70")


def test_settle_whose_only_event_is_invalid_answers_it_rejected_and_releases(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "r1", "50")

    settled = post_json(ingest, "/api/v1/reservations/r1/settle", {"events": [json.loads(body("bad", "5", meter="nope"))]})

    assert settled.status_code == 200, settled.content  # no row to insert: nothing breaks
    assert settled.json()["rejected"] == 1 and settled.json()["results"][0]["error"]["code"] == "unknown_meter"
    assert (quota(admin)["used"], quota(admin)["reserved"]) == ("0", "0")


def test_settle_above_the_reservation_respects_the_hard_limit(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "r1", "50")
    assert post_json(ingest, "/api/v1/events", json.loads(body("other", "40"))).status_code == 201

    within = post_json(ingest, "/api/v1/reservations/r1/settle", {"events": [json.loads(body("big", "70"))]})

    result = within.json()["results"][0]
    assert result["status"] == "rejected" and result["error"]["code"] == "quota_exceeded"
    assert UsageEvent.objects.get(event_id="big").billable is False
    # the refused event consumed nothing: only the other 40 are used, and nothing stays held
    assert (quota(admin)["used"], quota(admin)["reserved"], quota(admin)["remaining"]) == ("40", "0", "60")


def test_settle_a_little_above_the_reservation_charges_the_excess(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "r1", "50")

    response = post_json(ingest, "/api/v1/reservations/r1/settle", {"events": [json.loads(body("s", "60"))]})

    assert response.json()["results"][0]["status"] == "accepted"
    assert (quota(admin)["used"], quota(admin)["reserved"]) == ("60", "0")


def test_release_gives_the_hold_back(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "r1", "80")

    released = post_json(ingest, "/api/v1/reservations/r1/release", {})

    assert released.status_code == 200 and released.json()["status"] == "released"
    assert quota(admin)["reserved"] == "0" and quota(admin)["remaining"] == "100"


def test_an_expired_reservation_gives_its_amount_back(acme, ingest, admin):
    subscribe(acme, catalog(hard="100"))
    reserve(ingest, "short", "90", ttl=1)
    assert quota(admin)["remaining"] == "10"

    time.sleep(1.2)
    reservations_expire()

    assert quota(admin)["reserved"] == "0" and quota(admin)["remaining"] == "100"
    assert Reservation.objects.get().state == "expired"
    assert post_json(ingest, "/api/v1/events", json.loads(body("after", "100"))).status_code == 201


def test_reserved_money_counts_against_the_spend_cap(acme, ingest):
    subscribe(acme, catalog(cap="1.00", price="0.01"))

    held = reserve(ingest, "r", "90")
    refused = post_json(ingest, "/api/v1/events", json.loads(body("e", "11")))
    fits = post_json(ingest, "/api/v1/events", json.loads(body("f", "10")))

    assert held.status_code == 201
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "spend_cap_exceeded"
    assert fits.status_code == 201


def test_reservations_without_limits_hold_nothing_and_settle(acme, ingest):
    subscribe(acme, catalog())

    assert reserve(ingest, "r", "5").json()["held"] == {}
    settled = post_json(ingest, "/api/v1/reservations/r/settle", {"events": [json.loads(body("x", "5"))]})
    assert settled.json()["accepted"] == 1


def test_another_customers_reservation_is_not_found(acme, globex, make_client):
    subscribe(acme, catalog(hard="100"))
    reserve(make_client("ingest"), "r", "5")

    other = make_client("ingest", customer=globex)

    assert post_json(other, "/api/v1/reservations/r/release", {}).status_code == 404
    assert reserve(other, "x", "5").status_code == 403
