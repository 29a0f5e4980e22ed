"""Issue 25: a deployment's endpoint access, request timeout and body limit at the gateway.

Existing rows become public: their direct endpoints were open to anyone, and a working URL
must not start asking for a key nobody has. New deployments are private (the model's default,
set by the second operation)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0009_endpoint_label_required"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="endpoint_access",
            field=models.CharField(choices=[("private", "Private"), ("public", "Public")], default="public",
                                   max_length=7),
        ),
        migrations.AlterField(
            model_name="deployment",
            name="endpoint_access",
            field=models.CharField(choices=[("private", "Private"), ("public", "Public")], default="private",
                                   max_length=7),
        ),
        migrations.AddField(
            model_name="deployment",
            name="max_request_body_mb",
            field=models.PositiveIntegerField(default=1024),
        ),
        migrations.AddField(
            model_name="deployment",
            name="request_timeout_s",
            field=models.PositiveIntegerField(default=600),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(condition=models.Q(("endpoint_access__in", ("private", "public"))),
                                              name="deployment_endpoint_access"),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(("request_timeout_s__gte", 1), ("request_timeout_s__lte", 86400)),
                name="deployment_request_timeout_range"),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(("max_request_body_mb__gte", 1), ("max_request_body_mb__lte", 1048576)),
                name="deployment_max_request_body_range"),
        ),
    ]
