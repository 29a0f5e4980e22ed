"""Issue 25: endpoint keys (hashed) for private endpoints, and the gateways the plane pushes
its route table to."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0010_endpoint_settings"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="EndpointKey",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=100)),
                ("prefix", models.CharField(max_length=11)),
                ("secret_hash", models.CharField(editable=False, max_length=64, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                 related_name="+", to=settings.AUTH_USER_MODEL)),
                ("deployment", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                                 related_name="endpoint_keys", to="deployments.deployment")),
            ],
            options={
                "ordering": ["created_at", "id"],
                "indexes": [models.Index(condition=models.Q(("revoked_at__isnull", True)),
                                         fields=["deployment", "created_at"], name="endpointkey_live_idx")],
            },
        ),
        migrations.CreateModel(
            name="Gateway",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.SlugField(max_length=63, unique=True)),
                ("control_url", models.CharField(help_text="The gateway's control address, e.g. http://10.0.0.5:9180",
                                                max_length=300)),
                ("token_encrypted", models.TextField(editable=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("last_push_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("last_success_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("last_digest", models.CharField(blank=True, editable=False, max_length=64)),
                ("last_error", models.TextField(blank=True, editable=False)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
    ]
