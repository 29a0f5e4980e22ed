"""`Meter.metered_from`: where an incarnation's billed interval starts (the API shows it as the
replica's `billed_from`). Existing meters start where their first record does, or where they
stand if they have none yet."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0006_meter_fillfactor"),
    ]

    operations = [
        migrations.AddField(
            model_name="meter",
            name="metered_from",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunSQL(
            """UPDATE billing_meter AS m SET metered_from = COALESCE(
                   (SELECT min(r.period_start) FROM billing_usagerecord AS r WHERE r.replica_id = m.replica_id),
                   m.metered_to)""",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="meter",
            name="metered_from",
            field=models.DateTimeField(),
        ),
    ]
