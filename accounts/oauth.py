"""django-oauth-toolkit wiring: which scopes exist and who may be granted which.

Token introspection (RFC 7662) for a resource server: create a confidential client
(`manage.py create_api_client <tenant>`), then

    curl -u CLIENT_ID:CLIENT_SECRET -d token=THE_TOKEN http://127.0.0.1:8000/o/introspect/

answers {"active": true, "scope", "exp", "client_id", "username"} or {"active": false}. DOT
accepts the credentials of any confidential client (or a bearer token carrying an
`introspection` scope, which Gantry does not offer): a caller learns only about a token it
already holds, and tokens are too long to guess.
"""

from __future__ import annotations

from django.conf import settings
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import SettingsScopes


class GantryScopes(SettingsScopes):
    """`nodes:admin` is offered only to staff: a customer's token can never carry it, whatever
    the client asks for."""

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        scopes = list(settings.SCOPES)
        user = getattr(request, "user", None) if request is not None else None
        if user is None and application is not None:
            user = application.user
        if not (user is not None and getattr(user, "is_staff", False)):
            scopes.remove("nodes:admin")
        return scopes


class GantryOAuth2Validator(OAuth2Validator):
    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs):
        # For client credentials the requesting "user" is the application's owner (usually none):
        # only customer scopes, unless a staff member owns the client.
        available = set(GantryScopes().get_available_scopes(application=client, request=None))
        account = getattr(client, "service_account", None) if client is not None else None
        if account is not None and account.scopes:
            available &= set(account.scopes.split())
        return set(scopes).issubset(available)

    def get_default_scopes(self, client_id, request, *args, **kwargs):
        # A client asking for no scope gets the defaults, which must then pass validate_scopes:
        # for a service account restricted to a few scopes, the defaults are those few, not
        # every customer scope (which it could never be granted, so the request would fail).
        client = getattr(request, "client", None)
        account = getattr(client, "service_account", None) if client is not None else None
        if account is not None and account.scopes:
            return account.scopes.split()
        return super().get_default_scopes(client_id, request, *args, **kwargs)
