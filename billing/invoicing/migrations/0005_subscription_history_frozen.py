"""On PostgreSQL the database refuses to rewrite a subscription's billed history: once a customer has a
finalized invoice (paid, void or uncollectible alike) up to some instant, no subscription of that customer
may be inserted, moved, re-planned, ended or deleted before that instant. Changes go forward only (end it
now or later, start a new one). Before that the service refuses anything before its clock's now and the
admin shows a started subscription read-only (billing.catalog.services.subscription_set,
billing/catalog/admin.py). TRUNCATE stays possible, for the test suite's flush."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION subscription_billed_until(customer bigint) RETURNS timestamptz AS $$
    SELECT max(period_end) FROM invoicing_invoice
     WHERE customer_id = customer AND kind = 'invoice' AND status <> 'draft'
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION subscription_history_frozen() RETURNS trigger AS $$
DECLARE
    billed timestamptz;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        billed := subscription_billed_until(OLD.customer_id);
        IF billed IS NOT NULL AND OLD.start < billed AND (TG_OP = 'DELETE'
                OR (NEW.customer_id, NEW.plan_id, NEW.start) IS DISTINCT FROM (OLD.customer_id, OLD.plan_id, OLD.start)
                OR (NEW."end" IS DISTINCT FROM OLD."end"
                    AND LEAST(COALESCE(OLD."end", 'infinity'), COALESCE(NEW."end", 'infinity')) < billed)) THEN
            RAISE EXCEPTION 'subscription % is billed until %: its history cannot change (changes go forward only)',
                OLD.id, billed USING ERRCODE = 'restrict_violation';
        END IF;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
    END IF;
    billed := subscription_billed_until(NEW.customer_id);
    IF billed IS NOT NULL AND NEW.start < billed AND (TG_OP = 'INSERT'
            OR (NEW.customer_id, NEW.start) IS DISTINCT FROM (OLD.customer_id, OLD.start)) THEN
        RAISE EXCEPTION 'customer % is billed until %: a subscription cannot start before it', NEW.customer_id, billed
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS subscription_history_frozen ON catalog_subscription;
CREATE TRIGGER subscription_history_frozen BEFORE INSERT OR UPDATE OR DELETE ON catalog_subscription
    FOR EACH ROW EXECUTE FUNCTION subscription_history_frozen();
"""
DROP = """
DROP TRIGGER IF EXISTS subscription_history_frozen ON catalog_subscription;
DROP FUNCTION IF EXISTS subscription_history_frozen();
DROP FUNCTION IF EXISTS subscription_billed_until(bigint);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0004_lines_digest"), ("catalog", "0003_audit_entries_moved")]
    operations = [migrations.RunPython(forwards, backwards)]
