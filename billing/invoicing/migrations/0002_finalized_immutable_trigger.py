"""On PostgreSQL the database itself refuses to change a finalized invoice's figures or any line of a
non-draft invoice, and refuses to delete either (the model refuses too: billing/invoicing/models.py).
Status moves (finalized -> paid/void/uncollectible) stay possible; TRUNCATE too, for the test flush.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION invoice_frozen() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoices are never deleted (void them)' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'draft' AND (
        NEW.customer_id, NEW.plan_id, NEW.kind, NEW.period_start, NEW.period_end, NEW.currency, NEW.number,
        NEW.subtotal_minor, NEW.credits_minor, NEW.total_minor, NEW.versions::text, NEW.events_hash,
        NEW.events_count, NEW.rollup_watermark, NEW.corrects_id, NEW.finalized_at
    ) IS DISTINCT FROM (
        OLD.customer_id, OLD.plan_id, OLD.kind, OLD.period_start, OLD.period_end, OLD.currency, OLD.number,
        OLD.subtotal_minor, OLD.credits_minor, OLD.total_minor, OLD.versions::text, OLD.events_hash,
        OLD.events_count, OLD.rollup_watermark, OLD.corrects_id, OLD.finalized_at
    ) THEN
        RAISE EXCEPTION 'invoice % is finalized and cannot change', OLD.number USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'draft' AND NEW.status = 'draft' THEN
        RAISE EXCEPTION 'invoice % cannot go back to draft', OLD.number USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION invoice_line_frozen() RETURNS trigger AS $$
DECLARE
    state text;
BEGIN
    SELECT status INTO state FROM invoicing_invoice WHERE id = COALESCE(NEW.invoice_id, OLD.invoice_id);
    IF state IS NOT NULL AND state <> 'draft' THEN
        RAISE EXCEPTION 'lines of a finalized invoice cannot change' USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS invoice_frozen ON invoicing_invoice;
CREATE TRIGGER invoice_frozen BEFORE UPDATE OR DELETE ON invoicing_invoice
    FOR EACH ROW EXECUTE FUNCTION invoice_frozen();
DROP TRIGGER IF EXISTS invoice_line_frozen ON invoicing_invoiceline;
CREATE TRIGGER invoice_line_frozen BEFORE INSERT OR UPDATE OR DELETE ON invoicing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION invoice_line_frozen();
"""
DROP = """
DROP TRIGGER IF EXISTS invoice_frozen ON invoicing_invoice;
DROP TRIGGER IF EXISTS invoice_line_frozen ON invoicing_invoiceline;
DROP FUNCTION IF EXISTS invoice_frozen();
DROP FUNCTION IF EXISTS invoice_line_frozen();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
