from __future__ import annotations

from django.db.models import QuerySet

from billing.catalog.models import Meter


def meter_list() -> QuerySet[Meter]:
    return Meter.objects.all()


def meters_by_key(*, keys: set[str]) -> dict[str, Meter]:
    return {meter.key: meter for meter in Meter.objects.filter(key__in=keys)}
