"""The catalog's audit trail becomes the audit log: each old entry is copied, oldest first (so the ids keep
their order), its actor string split into type and id, its ``target`` (``plan:pro``, ``plan:pro:v2``,
``customer:acme``, ``invoice:7``, ``run:3:r1``) into the object's type and primary key where the object still
exists (its natural key otherwise), its ``data`` kept as ``after``. The catalog's table is then dropped."""

from django.db import migrations


def _actor(users, text):
    text = (text or "").strip()
    if text in ("", "system"):
        return "system", "", "system"
    kind, _, ident = text.partition(":")
    if kind in ("api_key", "user", "system") and ident:
        return kind, ident, text
    pk = users.filter(username=text).values_list("pk", flat=True).first()
    return ("user", str(pk), text) if pk is not None else ("system", text, text)


def _object(apps, target):
    kind, _, rest = target.partition(":")
    found = None
    if kind == "plan" and rest.count(":") == 1:
        key, _, number = rest.partition(":v")
        found = apps.get_model("catalog", "RateCardVersion").objects.filter(
            plan__key=key, number=int(number) if number.isdigit() else -1).values_list("pk", flat=True).first()
        kind = "rate_card_version"
    elif kind == "plan":
        found = apps.get_model("catalog", "Plan").objects.filter(key=rest).values_list("pk", flat=True).first()
    elif kind == "customer":
        found = apps.get_model("customers", "Customer").objects.filter(external_id=rest).values_list("pk", flat=True).first()
    elif kind == "run" and rest.count(":") == 1:
        customer_pk, _, run_id = rest.partition(":")
        found = apps.get_model("guardrails", "Run").objects.filter(
            customer_id=int(customer_pk) if customer_pk.isdigit() else -1, run_id=run_id).values_list("pk", flat=True).first()
    return kind, str(found) if found is not None else rest


def forwards(apps, schema_editor):
    old = apps.get_model("catalog", "AuditEntry")
    new = apps.get_model("audit", "AuditEntry")
    users = apps.get_model("auth", "User").objects
    for entry in old.objects.order_by("at", "id").iterator():
        actor_type, actor_id, label = _actor(users, entry.actor)
        object_type, object_id = _object(apps, entry.target)
        row = new.objects.create(actor_type=actor_type, actor_id=actor_id, actor_label=label[:150],
                                 action=entry.action, object_type=object_type[:64], object_id=object_id[:200],
                                 before=None, after={**(entry.data or {}), "target": entry.target})
        new.objects.filter(pk=row.pk).update(at=entry.at)  # auto_now_add set it to now


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("catalog", "0002_plans_ratecards_subscriptions"),
        ("customers", "0002_guard_revision"),
        ("guardrails", "0004_overrides_pauses_runs_budgets"),
    ]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
