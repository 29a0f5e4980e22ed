"""`Replica.booted_at`: when the incarnation's VM process started. Billing meters from there
(issue 23: start-up holds the GPUs as much as running does), no longer from `running`.

Incarnations that already ran were metered from `started_at`, so that is their `booted_at`:
what was billed before stays what the API shows as billed. Ones that never ran were never
metered, and are not charged now either (their `booted_at` stays empty).
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0006_log_lines_without_fk_checks"),
    ]

    operations = [
        migrations.AddField(
            model_name="replica",
            name="booted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(
            "UPDATE deployments_replica SET booted_at = started_at WHERE started_at IS NOT NULL",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
