"""Fill ``usage_daily_rollup`` from the hourly rollups already there (invoices read whole days from it: an
empty table on a database with rollups would drop that usage from drafts). The watermark row is locked
for the copy, so an incremental run waits and then maintains both tables. Self-contained on purpose: the
same aggregates as billing/usage/rollups.py at the time of writing."""

from collections import defaultdict

from django.db import migrations

BACKFILL_SQL = """
INSERT INTO usage_daily_rollup (customer_id, meter_id, dims_key, day, total, events, maximum, uniques, latest_value,
                                latest_at, latest_event)
SELECT r.customer_id, r.meter_id, r.dims_key, date_trunc('day', r.hour, 'UTC'),
       sum(r.total) FILTER (WHERE u.n IS NULL OR u.n = 1), sum(r.events) FILTER (WHERE u.n IS NULL OR u.n = 1),
       max(r.maximum),
       COALESCE(jsonb_agg(DISTINCT u.value COLLATE "C") FILTER (WHERE u.value IS NOT NULL), '[]'::jsonb),
       (array_agg(r.latest_value ORDER BY r.latest_at DESC, r.latest_event DESC) FILTER (WHERE r.latest_at IS NOT NULL))[1],
       (array_agg(r.latest_at ORDER BY r.latest_at DESC, r.latest_event DESC) FILTER (WHERE r.latest_at IS NOT NULL))[1],
       (array_agg(r.latest_event ORDER BY r.latest_at DESC, r.latest_event DESC) FILTER (WHERE r.latest_at IS NOT NULL))[1]
FROM usage_hourly_rollup r LEFT JOIN LATERAL jsonb_array_elements_text(r.uniques) WITH ORDINALITY u(value, n) ON true
GROUP BY r.customer_id, r.meter_id, r.dims_key, date_trunc('day', r.hour, 'UTC')
"""


def backfill(apps, schema_editor):
    connection = schema_editor.connection
    Watermark = apps.get_model("usage", "RollupWatermark")
    Hourly = apps.get_model("usage", "HourlyRollup")
    Daily = apps.get_model("usage", "DailyRollup")
    list(Watermark.objects.select_for_update().all())
    Daily.objects.all().delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(BACKFILL_SQL)
        return
    days = defaultdict(lambda: {"total": 0, "events": 0, "maximum": None, "uniques": set(), "latest": None})
    for row in Hourly.objects.order_by().iterator(chunk_size=5000):
        day = row.hour.replace(hour=0, minute=0, second=0, microsecond=0)
        agg = days[(row.customer_id, row.meter_id, row.dims_key, day)]
        agg["total"] += row.total
        agg["events"] += row.events
        if row.maximum is not None:
            agg["maximum"] = row.maximum if agg["maximum"] is None else max(agg["maximum"], row.maximum)
        agg["uniques"] |= set(row.uniques or [])
        if row.latest_at is not None and (agg["latest"] is None or (row.latest_at, row.latest_event) > agg["latest"][:2]):
            agg["latest"] = (row.latest_at, row.latest_event, row.latest_value)
    rows = []
    for (customer_id, meter_id, dims_key, day), agg in days.items():
        latest = agg["latest"] or (None, None, None)
        rows.append(Daily(customer_id=customer_id, meter_id=meter_id, dims_key=dims_key, day=day, total=agg["total"],
                          events=agg["events"], maximum=agg["maximum"], uniques=sorted(agg["uniques"]),
                          latest_at=latest[0], latest_event=latest[1], latest_value=latest[2]))
    Daily.objects.bulk_create(rows, batch_size=2000)


class Migration(migrations.Migration):

    dependencies = [("usage", "0007_daily_rollup")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
