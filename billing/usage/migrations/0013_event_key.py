"""The idempotency key of every event in a table of its own (``EventKey``), filled from the stored events,
append-only like them: the key that stays unique once the events are partitioned (migration 0014)."""

import django.db.models.deletion
from django.db import migrations, models

FILL = "INSERT INTO usage_event_key (customer_id, event_id, event, usage_at) SELECT customer_id, event_id, id, usage_at FROM usage_event"

# The append-only function names the table it refuses for (a partition's name, or the keys').
APPEND_ONLY = """
CREATE OR REPLACE FUNCTION usage_event_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (send a correction event instead)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER usage_event_key_append_only BEFORE UPDATE OR DELETE ON usage_event_key
    FOR EACH ROW EXECUTE FUNCTION usage_event_append_only();
"""
DROP = "DROP TRIGGER IF EXISTS usage_event_key_append_only ON usage_event_key"


def forwards(apps, schema_editor):
    schema_editor.execute(FILL, params=None)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('customers', '0003_apikey_gateway_scope'),
        ('usage', '0012_meter_definition_frozen'),
    ]

    operations = [
        migrations.CreateModel(
            name='EventKey',
            fields=[
                ('pk', models.CompositePrimaryKey('customer_id', 'event_id', blank=True, editable=False, primary_key=True, serialize=False)),
                ('customer', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='customers.customer')),
                ('event_id', models.CharField(max_length=128)),
                ('event', models.BigIntegerField()),
                ('usage_at', models.DateTimeField()),
            ],
            options={
                'db_table': 'usage_event_key',
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
