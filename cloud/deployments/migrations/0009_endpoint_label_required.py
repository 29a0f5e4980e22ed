"""Every row has its endpoint label now (0008): required and unique from here on."""

from django.db import migrations, models

import cloud.deployments.models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0008_endpoint_labels"),
    ]

    operations = [
        migrations.AlterField(
            model_name="deployment",
            name="endpoint_label",
            field=cloud.deployments.models.EndpointLabelField(editable=False, max_length=63),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.UniqueConstraint(fields=("endpoint_label",), name="deployment_unique_endpoint_label"),
        ),
    ]
