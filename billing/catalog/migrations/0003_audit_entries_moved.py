"""The audit trail now lives in billing.audit (its migration 0002 copied the rows first)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0002_plans_ratecards_subscriptions"),
        ("audit", "0002_from_catalog_audit"),
    ]
    operations = [migrations.DeleteModel(name="AuditEntry")]
