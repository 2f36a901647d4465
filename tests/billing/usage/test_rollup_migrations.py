"""Migrations of the derived rollup tables that move data: nothing of it is lost, forwards or back."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from billing.usage.rollups import dims_key

BEFORE = [("usage", "0010_rollup_one_key_each")]
AFTER = [("usage", "0011_dimension_sets")]
HOUR = datetime(2026, 10, 1, 5, tzinfo=timezone.utc)


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_dimension_sets_move_out_of_the_hourly_rows_and_back(acme, tokens_meter):
    sets = [{"model": "x"}, {"model": "é 漢字", "region": "eu"}, {}]
    try:
        apps = migrate(BEFORE)
        hourly = apps.get_model("usage", "HourlyRollup")
        for index, dims in enumerate(sets):
            for slot in (0, 1):  # a set on several rows is stored once
                hourly.objects.create(customer_id=acme.pk, project_slot=slot, meter_id=tokens_meter.pk,
                                      dims_key=dims_key(dims), dimensions=dims, hour=HOUR, total=Decimal(index + 1),
                                      events=1)

        apps = migrate(AFTER)
        stored = dict(apps.get_model("usage", "DimensionSet").objects.values_list("key", "dimensions"))
        assert stored == {dims_key(d): d for d in sets}
        assert apps.get_model("usage", "HourlyRollup").objects.count() == 6

        apps = migrate(BEFORE)  # reversed: every row gets its set back
        rows = apps.get_model("usage", "HourlyRollup").objects.values_list("dims_key", "dimensions")
        assert sorted(rows, key=repr) == sorted([(dims_key(d), d) for d in sets for _ in (0, 1)], key=repr)
    finally:  # every migration again, not only AFTER: the tests after this one run on the latest schema
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
