"""`/o/`: django-oauth-toolkit's four protocol endpoints, each behind the front-door guard.

Only these are mounted. DOT's application and authorized-token management pages
(`/o/applications/...`, `/o/authorized_tokens/...`) would let any logged-in customer register
a client with any redirect URI and grant type, outside every rule Gantry puts on clients; they
are made by `create_api_client`, the dashboard's API page and staff in the admin instead. The
OIDC endpoints stay off with OIDC.
"""

from django.urls import path
from oauth2_provider import views

from accounts.throttle import guarded

app_name = "oauth2_provider"  # DOT's own views and templates reverse within this namespace

urlpatterns = [
    path("authorize/", guarded("authorize")(views.AuthorizationView.as_view()), name="authorize"),
    path("token/", guarded("token")(views.TokenView.as_view()), name="token"),
    path("revoke_token/", guarded("token")(views.RevokeTokenView.as_view()), name="revoke-token"),
    path("introspect/", guarded("token")(views.IntrospectTokenView.as_view()), name="introspect"),
]
