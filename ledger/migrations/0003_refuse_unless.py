"""``tollgate_refuse_unless(ok, message)``: lets one statement that writes several tables (ingest's
event insert together with its batch's ledger booking, billing.usage.services) undo all of it when a
check computed from its own results fails: the function raises SQLSTATE TG001 unless ``ok``, and an
error aborts the whole statement. PostgreSQL only; SQLite runs those writes in a transaction instead."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION tollgate_refuse_unless(ok boolean, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN
    RAISE EXCEPTION USING ERRCODE = 'TG001', MESSAGE = message;
  END IF;
  RETURN true;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS tollgate_refuse_unless(boolean, text)"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0002_pending_index_partial'),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
