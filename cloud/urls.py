from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

import cloud.openapi  # noqa: F401  (registers the scoped OAuth2 security scheme)
from cloud import health

api_v1 = [
    path("", include("cloud.deployments.urls")),
    path("", include("templates.urls")),
    path("", include("nodes.urls")),
    path("", include("billing.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/", include(api_v1)),
    # Only the protocol endpoints, guarded; no client-management pages (accounts/oauth_urls.py).
    path("o/", include("accounts.oauth_urls", namespace="oauth2_provider")),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    # The customer dashboard owns `/` and the rest of the root (cloud/dashboard/urls.py).
    path("", include("cloud.dashboard.urls")),
]
