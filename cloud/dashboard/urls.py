from django.urls import path

from cloud.dashboard.views import create, deployments, home

app_name = "dashboard"

urlpatterns = [
    path("", home.landing, name="landing"),
    path("tenant/", home.switch_tenant, name="switch-tenant"),
    path("deployments/", deployments.deployment_list, name="deployments"),
    path("deployments/new/", create.deployment_new, name="deployment-new"),
    path("deployments/estimate/", create.deployment_estimate_partial, name="deployment-estimate"),
    path("deployments/<uuid:deployment_id>/", deployments.deployment_detail, name="deployment"),
    path("deployments/<uuid:deployment_id>/<str:action>/", deployments.deployment_action, name="deployment-action"),
]
