"""On PostgreSQL the database itself refuses UPDATE and DELETE of raw usage events.

TRUNCATE stays possible for an operator acting deliberately (and for the test suite's flush); no
application code path issues it. On SQLite the model and queryset refuse instead (models.py).
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION usage_event_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'usage_event is append-only: % refused (send a correction event instead)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS usage_event_append_only ON usage_event;
CREATE TRIGGER usage_event_append_only BEFORE UPDATE OR DELETE ON usage_event
    FOR EACH ROW EXECUTE FUNCTION usage_event_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS usage_event_append_only ON usage_event;
DROP FUNCTION IF EXISTS usage_event_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
