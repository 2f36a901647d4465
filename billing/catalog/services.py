from __future__ import annotations

from django.db import IntegrityError, transaction

from billing.catalog.models import Meter
from billing.common.errors import ApiError


def meter_create(*, key: str, name: str, aggregation: str, unit: str = "unit", unique_by: str = "") -> tuple[Meter, bool]:
    """Create a meter. The same definition again returns the existing one (created=False): a
    retried POST is harmless. A different definition under an existing key is a 409: a meter's
    aggregation cannot change under events already recorded."""
    meter = Meter(key=key, name=name or key, aggregation=aggregation, unit=unit or "unit", unique_by=unique_by or "")
    meter.full_clean(validate_unique=False, validate_constraints=False)
    if aggregation == Meter.Aggregation.UNIQUE_COUNT and not unique_by:
        raise ApiError(422, "validation_error", "unique_count needs unique_by.",
                       fields={"unique_by": ["Required for unique_count."]})
    existing = Meter.objects.filter(key=key).first()
    if existing is not None:
        return _same_or_conflict(existing, meter), False
    try:
        with transaction.atomic():
            meter.save()
    except IntegrityError:
        return _same_or_conflict(Meter.objects.get(key=key), meter), False
    return meter, True


def _same_or_conflict(existing: Meter, wanted: Meter) -> Meter:
    fields = ("name", "aggregation", "unit", "unique_by")
    if all(getattr(existing, f) == getattr(wanted, f) for f in fields):
        return existing
    raise ApiError(409, "already_exists", f"Meter '{existing.key}' exists with another definition.")
