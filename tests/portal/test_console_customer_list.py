"""The console's customer list pages by 50, ordered by id, with the total count and next/previous links;
each row still shows the plan its customer is on now."""

from __future__ import annotations

from datetime import datetime, timezone
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from billing.customers.models import Customer
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Any, db: None) -> Any:
    client.force_login(get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True))
    return client


def listed(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('<tr data-customer="')[1:]]


@pytest.fixture
def many(db: None) -> list[str]:
    ids = [f"c{n:03d}" for n in range(120)]
    Customer.objects.bulk_create([Customer(external_id=i, name=f"Customer {i}") for i in reversed(ids)])
    return ids


def test_the_list_pages_by_fifty_with_the_count_and_links(staff: Any, many: list[str]) -> None:
    first = unescape(staff.get("/console/customers/").content.decode())
    assert listed(first) == many[:50]
    assert "120 customers: 1 to 50 shown, page 1 of 3" in first
    assert 'href="?page=2" rel="next"' in first and 'rel="prev"' not in first

    second = unescape(staff.get("/console/customers/?page=2").content.decode())
    assert listed(second) == many[50:100]
    assert 'href="?page=1" rel="prev"' in second and 'href="?page=3" rel="next"' in second

    last = unescape(staff.get("/console/customers/?page=3").content.decode())
    assert listed(last) == many[100:] and "101 to 120 shown, page 3 of 3" in last
    assert 'href="?page=2" rel="prev"' in last and 'rel="next"' not in last


def test_a_page_out_of_range_or_not_a_number_gives_the_nearest(staff: Any, many: list[str]) -> None:
    assert listed(staff.get("/console/customers/?page=99").content.decode()) == many[100:]
    assert listed(staff.get("/console/customers/?page=x").content.decode()) == many[:50]


def test_a_short_list_has_no_pager_and_shows_each_plan(staff: Any, acme: Customer) -> None:
    charge = {"meter": "llm_tokens", "model": "per_unit", "unit_price": "0.01"}
    text = factories.catalog(factories.plan("starter", [charge]), meters=(factories.TOKENS,))
    factories.subscribe(acme, "starter", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        now=datetime.now(timezone.utc), catalog_text=text)

    html = unescape(staff.get("/console/customers/").content.decode())

    assert listed(html) == ["acme-co"] and "1 customer</p>" in html and 'id="customer-pages"' not in html
    assert "Starter" in html.split('data-customer="acme-co"')[1].split("</tr>")[0]


def test_the_subscriptions_are_read_in_one_query_for_the_page(staff: Any, many: list[str],
                                                                django_assert_max_num_queries: Any) -> None:
    with django_assert_max_num_queries(8):
        assert staff.get("/console/customers/?page=2").status_code == 200
