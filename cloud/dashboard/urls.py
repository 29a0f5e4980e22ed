from django.urls import path

from cloud.dashboard.views import billing, create, deployments, home, team, volumes

app_name = "dashboard"

urlpatterns = [
    path("", home.landing, name="landing"),
    path("tenant/", home.switch_tenant, name="switch-tenant"),
    path("deployments/", deployments.deployment_list, name="deployments"),
    path("deployments/new/", create.deployment_new, name="deployment-new"),
    path("deployments/estimate/", create.deployment_estimate_partial, name="deployment-estimate"),
    path("deployments/<uuid:deployment_id>/", deployments.deployment_detail, name="deployment"),
    path("deployments/<uuid:deployment_id>/requests/", deployments.deployment_requests, name="deployment-requests"),
    path("deployments/<uuid:deployment_id>/keys/", deployments.endpoint_key_create, name="endpoint-key-create"),
    path("deployments/<uuid:deployment_id>/keys/<str:key_id>/revoke/", deployments.endpoint_key_revoke,
         name="endpoint-key-revoke"),
    # After the paths above: "requests" and "keys" are not actions.
    path("deployments/<uuid:deployment_id>/<str:action>/", deployments.deployment_action, name="deployment-action"),
    path("volumes/", volumes.volume_list, name="volumes"),
    path("volumes/<uuid:volume_id>/delete/", volumes.volume_delete, name="volume-delete"),
    path("billing/", billing.billing, name="billing"),
    path("billing/statements/<int:year>-<int:month>.csv", billing.statement_csv, name="statement"),
    path("members/", team.members, name="members"),
    path("members/<int:membership_id>/remove/", team.member_remove, name="member-remove"),
    path("members/invitations/<int:invitation_id>/revoke/", team.invitation_revoke, name="invitation-revoke"),
    path("invitations/<str:token>/", team.invitation, name="invitation"),
    path("api-access/", team.api_access, name="api-access"),
    path("api-access/<int:service_account_id>/revoke/", team.api_client_revoke, name="api-client-revoke"),
]
