"""The database itself (PostgreSQL and SQLite triggers) refuses to change a finalized invoice's figures or any line of a
non-draft invoice, and refuses to delete either (the model refuses too: billing/invoicing/models.py).
Status moves (finalized -> paid/void/uncollectible) stay possible; TRUNCATE too, for the test flush.
On SQLite, DELETE is refused by the model and queryset only (Django's test flush deletes rows there).
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


FROZEN = ("customer_id", "plan_id", "kind", "period_start", "period_end", "currency", "number", "subtotal_minor",
          "credits_minor", "total_minor", "versions", "events_hash", "events_count", "rollup_watermark", "corrects_id",
          "finalized_at")
SQLITE = [
    "CREATE TRIGGER invoice_frozen BEFORE UPDATE ON invoicing_invoice WHEN OLD.status <> 'draft' AND ("
    + " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in FROZEN) + " OR NEW.status = 'draft') "
    "BEGIN SELECT RAISE(ABORT, 'invoice is finalized and cannot change'); END",
    *[f"CREATE TRIGGER invoice_line_frozen_{op.lower()} BEFORE {op} ON invoicing_invoiceline "
      f"WHEN (SELECT status FROM invoicing_invoice WHERE id = {ref}.invoice_id) <> 'draft' "
      "BEGIN SELECT RAISE(ABORT, 'lines of a finalized invoice cannot change'); END"
      for op, ref in (("INSERT", "NEW"), ("UPDATE", "OLD"))],
]
SQLITE_DROP = ["DROP TRIGGER IF EXISTS invoice_frozen",
               *[f"DROP TRIGGER IF EXISTS invoice_line_frozen_{op}" for op in ("insert", "update")]]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
