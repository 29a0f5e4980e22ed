"""Issue 25: every deployment gets its endpoint label, existing ones included (deleted rows too:
a label is never reused), and a replica records whether its node's health check fails. The
column becomes unique and required in 0009, once every row has one."""

from django.db import migrations, models

import cloud.deployments.models
from cloud.deployments.labels import endpoint_label

BATCH = 1000


def labels_fill(apps, schema_editor):
    """Give every row without a label one made from its name, as a create would."""
    Deployment = apps.get_model("deployments", "Deployment")
    taken = set(Deployment.objects.exclude(endpoint_label=None).values_list("endpoint_label", flat=True))
    missing = Deployment.objects.filter(endpoint_label=None).only("pk", "name").order_by("pk")
    batch = []
    for row in missing.iterator(chunk_size=BATCH):
        label = endpoint_label(row.name)
        while label in taken:
            label = endpoint_label(row.name)
        taken.add(label)
        row.endpoint_label = label
        batch.append(row)
        if len(batch) == BATCH:
            Deployment.objects.bulk_update(batch, ["endpoint_label"])
            batch = []
    Deployment.objects.bulk_update(batch, ["endpoint_label"])


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0007_replica_booted_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="endpoint_label",
            field=cloud.deployments.models.EndpointLabelField(editable=False, max_length=63, null=True),
        ),
        migrations.AddField(
            model_name="replica",
            name="health",
            field=models.CharField(blank=True, choices=[("", "passing"), ("failing", "failing")], default="", max_length=7),
        ),
        migrations.RunPython(labels_fill, migrations.RunPython.noop),
    ]
