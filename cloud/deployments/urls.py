from django.urls import path
from rest_framework.routers import SimpleRouter

from cloud.deployments.api import DeploymentViewSet
from cloud.deployments.sse import EventStreamView
from cloud.deployments.system import SystemStatusView

router = SimpleRouter(trailing_slash=False)
router.register("deployments", DeploymentViewSet, basename="deployment")

urlpatterns = [
    *router.urls,
    path("events", EventStreamView.as_view(), name="event-stream"),
    path("system/status", SystemStatusView.as_view(), name="system-status"),
]
