"""Issue 25: per gateway, deployment and minute, the requests the gateway counted (for
`GET /api/v1/deployments/{id}/metrics/requests`)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('deployments', '0013_replica_drain_rolling_restart'),
    ]

    operations = [
        migrations.CreateModel(
            name='RequestMinute',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('minute', models.DateTimeField(help_text="The minute's start (UTC)")),
                ('requests', models.PositiveBigIntegerField()),
                ('errors', models.PositiveBigIntegerField(help_text="answers of 500-599, the gateway's own 503s included")),
                ('latency_ms', models.JSONField()),
                ('collected_at', models.DateTimeField()),
                ('deployment', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='deployments.deployment')),
                ('gateway', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='deployments.gateway')),
            ],
            options={
                'indexes': [models.Index(fields=['deployment', 'minute'], name='requestminute_deployment_idx'), models.Index(fields=['minute'], name='requestminute_minute_idx')],
                'constraints': [models.UniqueConstraint(fields=('gateway', 'deployment', 'minute'), name='requestminute_unique')],
            },
        ),
    ]
