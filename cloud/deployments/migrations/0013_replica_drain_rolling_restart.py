"""Issue 25: a serving replica drains before its VM stops (`drain_until`), and a deployment
remembers when its rolling restart began (`rolling_restart_at`). Both null on existing rows:
nothing drains and nothing rolls until the next stop or restart."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0012_health_check_path"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="rolling_restart_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="replica",
            name="drain_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
