from django.urls import path

from nodes.api import HardwareListView, LocationListView

# No trailing slash, like /api/v1/deployments and /api/v1/templates.
urlpatterns = [
    path("hardware", HardwareListView.as_view(), name="hardware-list"),
    path("locations", LocationListView.as_view(), name="location-list"),
]
