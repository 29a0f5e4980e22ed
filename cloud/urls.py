from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

import cloud.openapi  # noqa: F401  (registers the scoped OAuth2 security scheme)
from accounts.throttle import guarded
from cloud import health

api_v1 = [
    path("", include("cloud.deployments.urls")),
    path("", include("templates.urls")),
    path("", include("nodes.urls")),
    path("", include("billing.urls")),
    path("", include("volumes.urls")),
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
    # The staff login is a front door like the customers' one (accounts/throttle.py); it comes
    # first so it answers for the admin's own login URL.
    path("admin/login/", guarded("login")(admin.site.login)),
    path("admin/", admin.site.urls),
    # The customer dashboard owns `/` and the rest of the root (cloud/dashboard/urls.py).
    path("", include("cloud.dashboard.urls")),
]
