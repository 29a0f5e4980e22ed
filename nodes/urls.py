from django.urls import path

from nodes.api import HardwareListView, LocationListView, NodeActionView, NodeJoinView, NodeVfioValidateView, NodeVfioView

# No trailing slash, like /api/v1/deployments and /api/v1/templates.
urlpatterns = [
    path("hardware", HardwareListView.as_view(), name="hardware-list"),
    path("locations", LocationListView.as_view(), name="location-list"),
    path("nodes/join", NodeJoinView.as_view(), name="node-join"),
    *[
        path(f"nodes/<int:node_id>/{verb}", NodeActionView.as_view(action=verb), name=f"node-{verb}")
        for verb in ("cordon", "drain", "uncordon")
    ],
    path("nodes/<int:node_id>/vfio", NodeVfioView.as_view(), name="node-vfio"),
    path("nodes/<int:node_id>/vfio/validate", NodeVfioValidateView.as_view(), name="node-vfio-validate"),
]
