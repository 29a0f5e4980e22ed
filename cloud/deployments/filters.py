"""`?status=` on the list endpoint. An unknown status is a 400 naming `status`, not an empty list."""

from __future__ import annotations

import django_filters

from cloud.deployments.models import Deployment


class DeploymentFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Deployment.Status.choices, help_text="Only deployments in this status.")

    class Meta:
        model = Deployment
        fields = ["status"]
