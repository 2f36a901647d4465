"""On PostgreSQL, usage_event becomes a table partitioned by month of ``usage_at`` (declarative range
partitioning), its rows copied over in the migration's transaction: the months that hold events, this
month and the next ones (``TOLLGATE_EVENT_PARTITIONS_AHEAD``), and a default partition for any other
instant. Its primary key is (id, usage_at): PostgreSQL wants the partition key in every unique index,
so the unique (customer, event_id) is dropped here and kept by ``usage_event_key`` (migration 0013).
Its other indexes are recreated from their own definitions (on the parent: every partition gets
them), the id sequence carries on, and the append-only trigger is created on the parent, which clones it
onto every partition, present and future. On SQLite the table stays a plain one: the unique constraint
is dropped, the key table guards instead.

The copy takes the time of rewriting the table and its indexes (docs/scaling.md); nothing else can
read or write the events meanwhile."""

from datetime import datetime, timezone

from django.conf import settings
from django.db import migrations, models

KEEP = ("usage_event_pkey", "usage_event_unique_per_customer")
# SQLite remakes the table to drop a constraint, which its trigger on catalog_meter (migration 0012) names:
# dropped for the remake and created again, as it was.
SQLITE_METER_TRIGGER = (
    "CREATE TRIGGER meter_definition_frozen BEFORE UPDATE ON catalog_meter WHEN "
    "(NEW.aggregation IS NOT OLD.aggregation OR NEW.unit IS NOT OLD.unit OR NEW.unique_by IS NOT OLD.unique_by) "
    "AND EXISTS (SELECT 1 FROM usage_event WHERE meter_id = OLD.id) "
    "BEGIN SELECT RAISE(ABORT, 'meter has usage events: its aggregation, unit and unique_by cannot change'); END"
)


def _months_sql(cursor, ahead):
    """(name, FROM, TO) of every month to create: those holding events, this month and ``ahead`` more."""
    cursor.execute("SELECT DISTINCT date_trunc('month', usage_at, 'UTC') FROM usage_event")
    months = {m.replace(tzinfo=timezone.utc) for (m,) in cursor.fetchall()}
    now = datetime.now(timezone.utc)
    first = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    for n in range(ahead + 1):
        months.add(datetime(first.year + (first.month - 1 + n) // 12, (first.month - 1 + n) % 12 + 1, 1,
                            tzinfo=timezone.utc))
    for month in sorted(months):
        after = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=timezone.utc)
        yield f"usage_event_y{month:%Y}m{month:%m}", month.isoformat(), after.isoformat()


def _indexes(cursor, table, keep):
    cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
                   [table])
    return [(name, sql) for name, sql in cursor.fetchall() if name not in keep]


def _rebuild(cursor, *, partitioned, months=None):
    """usage_event renamed aside, the new one created (partitioned or plain), the rows copied, the old dropped."""
    old = "usage_event_plain" if partitioned else "usage_event_parted"
    cursor.execute("LOCK TABLE usage_event IN ACCESS EXCLUSIVE MODE")
    indexes = _indexes(cursor, "usage_event", KEEP)
    cursor.execute(f"ALTER TABLE usage_event RENAME TO {old}")
    cursor.execute(f"ALTER TABLE {old} RENAME CONSTRAINT usage_event_pkey TO {old}_pkey")
    cursor.execute(f"DROP TRIGGER usage_event_append_only ON {old}")
    if partitioned:
        cursor.execute(f"ALTER TABLE {old} DROP CONSTRAINT usage_event_unique_per_customer")
    for name, _sql in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    # The ids carry on from the old sequence, now a plain one owned by the new table.
    cursor.execute(f"SELECT greatest(coalesce(max(id), 0), (SELECT CASE WHEN is_called THEN last_value ELSE "
                   f"last_value - 1 END FROM usage_event_id_seq)) FROM {old}")
    (last,) = cursor.fetchone()
    cursor.execute("SELECT attidentity <> '' FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'id'", [old])
    if cursor.fetchone()[0]:  # Django's identity column (as created): its sequence goes with it
        cursor.execute(f"ALTER TABLE {old} ALTER COLUMN id DROP IDENTITY")
        cursor.execute("CREATE SEQUENCE usage_event_id_seq")
    else:  # a sequence of ours, from an earlier run of this migration
        cursor.execute(f"ALTER TABLE {old} ALTER COLUMN id DROP DEFAULT")
        cursor.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    cursor.execute(f"CREATE TABLE usage_event (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                   + (" PARTITION BY RANGE (usage_at)" if partitioned else ""))
    cursor.execute("ALTER TABLE usage_event ALTER COLUMN id SET DEFAULT nextval('usage_event_id_seq')")
    cursor.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_event.id")
    if last:
        cursor.execute("SELECT setval('usage_event_id_seq', %s)", [last])
    cursor.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY "
                   + ("(id, usage_at)" if partitioned else "(id)"))
    if partitioned:
        for name, start, end in months:
            cursor.execute(f"CREATE TABLE {name} PARTITION OF usage_event FOR VALUES FROM (%s) TO (%s)", [start, end])
        cursor.execute("CREATE TABLE usage_event_default PARTITION OF usage_event DEFAULT")
    cursor.execute(f"INSERT INTO usage_event SELECT * FROM {old}")  # noqa: S608 - constant names
    if not partitioned:
        cursor.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_unique_per_customer UNIQUE (customer_id, event_id)")
    for _name, sql in indexes:
        cursor.execute(sql)
    cursor.execute("CREATE TRIGGER usage_event_append_only BEFORE UPDATE OR DELETE ON usage_event "
                   "FOR EACH ROW EXECUTE FUNCTION usage_event_append_only()")
    cursor.execute(f"DROP TABLE {old}")
    cursor.execute("ANALYZE usage_event")


def _sqlite(schema_editor, change):
    schema_editor.execute("DROP TRIGGER IF EXISTS meter_definition_frozen", params=None)
    change()
    schema_editor.execute(SQLITE_METER_TRIGGER, params=None)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        model = apps.get_model("usage", "UsageEvent")
        _sqlite(schema_editor, lambda: schema_editor.remove_constraint(model, model._meta.constraints[0]))
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("LOCK TABLE usage_event IN ACCESS EXCLUSIVE MODE")
        months = list(_months_sql(cursor, getattr(settings, "TOLLGATE_EVENT_PARTITIONS_AHEAD", 3)))
        _rebuild(cursor, partitioned=True, months=months)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        _sqlite(schema_editor, lambda: schema_editor.add_constraint(apps.get_model("usage", "UsageEvent"),
                models.UniqueConstraint(fields=["customer", "event_id"], name="usage_event_unique_per_customer")))
        return
    with schema_editor.connection.cursor() as cursor:
        _rebuild(cursor, partitioned=False)


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ('usage', '0013_event_key'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name='usageevent', name='usage_event_unique_per_customer'),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
