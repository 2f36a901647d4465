"""Indexes the rollup rebuild and invoices read by.

- A BRIN index on ``usage_event.received_at`` (PostgreSQL): events arrive in ``received_at`` order, so a
  block-range index of a few pages finds the first event still inside the rollup lag without a full scan,
  at almost no cost to ingest.
- A partial index on corrections per customer and ``usage_at``: invoices list a period's corrections
  (a handful) without reading the period's events.

Rollups are keyed by a new ``dims_key`` (the md5 of the dimensions as PostgreSQL prints them, so the SQL
rebuild computes it too): existing rollups are derived data, so they are dropped and the watermark reset;
the next beat run (or ``manage.py rollup``) rebuilds them, and until then readers use the raw events.
"""

from django.db import migrations, models


def brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE INDEX IF NOT EXISTS usage_event_received_brin ON usage_event "
                              "USING brin (received_at)", params=None)


def unbrin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS usage_event_received_brin", params=None)


def rekey(apps, schema_editor):
    apps.get_model("usage", "HourlyRollup").objects.all().delete()
    apps.get_model("usage", "RollupWatermark").objects.update(last_event_id=0)


class Migration(migrations.Migration):
    dependencies = [("usage", "0003_hourly_rollups")]
    operations = [
        migrations.RunPython(brin, unbrin),
        migrations.RunPython(rekey, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(fields=["customer", "usage_at"], condition=~models.Q(corrects=""),
                               name="usage_event_corrections"),
        ),
    ]
