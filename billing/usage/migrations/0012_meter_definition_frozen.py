"""The database refuses to change a meter's aggregation, unit or unique_by once it has usage events: the
events were recorded, rolled up and invoiced under that definition (a new definition is a new meter). The
service and the admin refuse too (billing.catalog.services.meter_update). Events are probed per customer
through the (customer, meter, usage_at) index, and only when one of the three fields moves."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION meter_definition_frozen() RETURNS trigger AS $$
BEGIN
    IF (NEW.aggregation, NEW.unit, NEW.unique_by) IS DISTINCT FROM (OLD.aggregation, OLD.unit, OLD.unique_by)
       AND EXISTS (SELECT 1 FROM customers_customer c
                   WHERE EXISTS (SELECT 1 FROM usage_event e WHERE e.customer_id = c.id AND e.meter_id = OLD.id)) THEN
        RAISE EXCEPTION 'meter % has usage events: its aggregation, unit and unique_by cannot change (create a new meter)',
            OLD.key USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS meter_definition_frozen ON catalog_meter;
CREATE TRIGGER meter_definition_frozen BEFORE UPDATE ON catalog_meter
    FOR EACH ROW EXECUTE FUNCTION meter_definition_frozen();
"""
DROP = """
DROP TRIGGER IF EXISTS meter_definition_frozen ON catalog_meter;
DROP FUNCTION IF EXISTS meter_definition_frozen();
"""
SQLITE = (
    "CREATE TRIGGER meter_definition_frozen BEFORE UPDATE ON catalog_meter WHEN "
    "(NEW.aggregation IS NOT OLD.aggregation OR NEW.unit IS NOT OLD.unit OR NEW.unique_by IS NOT OLD.unique_by) "
    "AND EXISTS (SELECT 1 FROM usage_event WHERE meter_id = OLD.id) "
    "BEGIN SELECT RAISE(ABORT, 'meter has usage events: its aggregation, unit and unique_by cannot change'); END"
)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS meter_definition_frozen", params=None)


class Migration(migrations.Migration):
    dependencies = [("usage", "0011_dimension_sets"), ("catalog", "0003_audit_entries_moved")]
    operations = [migrations.RunPython(forwards, backwards)]
