"""Log lines and events become cursors (issue 16).

- LogLine: paged by id within a deployment (index on (deployment, id)), aged out by a BRIN index
  on ts; `seq` may be null for a line the plane writes itself; `continued` marks a piece of a
  line over 64 KiB.
- Event: the tenant's SSE feed reads (tenant, id); and ids follow commit order. An event is
  inserted with an id drawn at insert time, but transactions commit in another order than they
  drew ids, so a follower that has read up to id N could later miss N-1. A deferred constraint
  trigger runs at each writing transaction's commit, takes one advisory lock (held until the
  commit is visible) and gives each of its events a fresh id, so ids grow in commit order.
"""

import django.contrib.postgres.indexes
from django.db import migrations, models

# Any fixed number, unique among the project's advisory locks: the events commit-order lock.
EVENTS_LOCK = 1_601_600_016

TRIGGER = f"""
CREATE FUNCTION deployments_event_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Held from here to the end of the commit, after which the rows are visible: the next
    -- transaction to commit events draws greater ids only once these can be read.
    PERFORM pg_advisory_xact_lock({EVENTS_LOCK});
    UPDATE deployments_event SET id = nextval(pg_get_serial_sequence('deployments_event', 'id'))
        WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER deployments_event_commit_order AFTER INSERT ON deployments_event
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION deployments_event_commit_order();
"""

DROP_TRIGGER = """
DROP TRIGGER IF EXISTS deployments_event_commit_order ON deployments_event;
DROP FUNCTION IF EXISTS deployments_event_commit_order();
"""


class Migration(migrations.Migration):
    dependencies = [("deployments", "0004_incarnations")]

    operations = [
        migrations.AlterModelOptions(name="logline", options={"ordering": ["id"]}),
        migrations.RemoveIndex(model_name="logline", name="logline_deployment_ts_idx"),
        migrations.AlterField(
            model_name="logline", name="seq", field=models.PositiveBigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(model_name="logline", name="continued", field=models.BooleanField(default=False)),
        migrations.AddIndex(
            model_name="logline",
            index=models.Index(fields=["deployment", "id"], name="logline_deployment_cursor_idx"),
        ),
        migrations.AddIndex(
            model_name="logline",
            index=django.contrib.postgres.indexes.BrinIndex(fields=["ts"], name="logline_ts_brin"),
        ),
        migrations.AddIndex(
            model_name="event", index=models.Index(fields=["tenant", "id"], name="event_tenant_cursor_idx"),
        ),
        migrations.RunSQL(TRIGGER, DROP_TRIGGER),
    ]
