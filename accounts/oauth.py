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

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models.signals import pre_save
from oauth2_provider.models import (
    AbstractApplication,
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import SettingsScopes
from oauthlib.oauth2 import Server


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

    # A client registered before these rules (or changed in the database behind the model's
    # back) is held to them at use time too.
    def validate_grant_type(self, client_id, grant_type, client, request, *args, **kwargs):
        if grant_type == "password" or _is_password_client(client):
            return False
        return super().validate_grant_type(client_id, grant_type, client, request, *args, **kwargs)

    def validate_user(self, *args, **kwargs):
        return False  # the password grant is off (GantryServer does not route it anyway)

    def validate_redirect_uri(self, client_id, redirect_uri, request, *args, **kwargs):
        if redirect_uri_problem(redirect_uri) is not None:
            return False
        return super().validate_redirect_uri(client_id, redirect_uri, request, *args, **kwargs)

    def get_default_redirect_uri(self, client_id, request, *args, **kwargs):
        uri = super().get_default_redirect_uri(client_id, request, *args, **kwargs)
        return uri if uri and redirect_uri_problem(uri) is None else None

    def validate_bearer_token(self, token, scopes, request):
        valid = super().validate_bearer_token(token, scopes, request)
        access_token = getattr(request, "access_token", None)
        if valid and access_token is not None and _is_password_client(access_token.application):
            return False  # tokens a password client got before the grant was turned off
        return valid


def _is_password_client(client) -> bool:
    return getattr(client, "authorization_grant_type", None) == AbstractApplication.GRANT_PASSWORD


# -- redirect URIs ----------------------------------------------------------------------------

# RFC 8252 7.3: a native app (the CLI) receives its code on a loopback port over plain HTTP; the
# code never leaves the machine. Anywhere else, plain HTTP shows the code to the network.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` may not receive authorization codes, or None when it may."""
    try:
        parts = urlsplit(uri)
        host = (parts.hostname or "").lower()
    except ValueError:
        return f"{uri[:200]!r} is not a valid URI."
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return None
    if parts.scheme == "http":
        return (f"Redirect URI {uri[:200]!r} uses plain HTTP; only loopback addresses (127.0.0.1, [::1], localhost) "
                "may, everything else needs HTTPS.")
    return f"Redirect URI {uri[:200]!r} must be an https:// URI (or http:// to a loopback address)."


def application_problems(application) -> dict[str, list[str]]:
    """What an Application may not be, by field: empty when it is fine."""
    problems: dict[str, list[str]] = {}
    uris = [p for p in (redirect_uri_problem(uri) for uri in (application.redirect_uris or "").split()) if p]
    if uris:
        problems["redirect_uris"] = uris
    if _is_password_client(application):
        problems["authorization_grant_type"] = ["The password grant is turned off: a client never sees a user's "
                                                "password. Use the authorization code grant (with PKCE)."]
    return problems


def _checked_clean(original):
    def clean(self):
        original(self)
        problems = application_problems(self)
        if problems:
            raise ValidationError(problems)
    return clean


def _refuse_unsafe_application(sender, instance, **kwargs):
    # For saves that skip full_clean (objects.create, a shell, a script): the same rules, loudly.
    problems = application_problems(instance)
    if problems:
        raise ValidationError(problems)


def token_prefix(value: str | None) -> str | None:
    """Enough of a token or code to match it against a log line, never enough to use it."""
    return f"{value[:6]}…" if value else None


def _prefix_only(self) -> str:
    return token_prefix(getattr(self, "token", None) or getattr(self, "code", None)) or f"#{self.pk}"


def install() -> None:
    """Called from AccountsConfig.ready(). DOT's models are unswapped (swapping them after their
    first migration is a migration of every token table), so the two rules that must hold for
    every Application and token row are attached here:

    - Application.clean (the admin's form, any full_clean) and pre_save (every other save) refuse
      non-loopback HTTP redirect URIs and the password grant;
    - AccessToken, RefreshToken and Grant print as a short prefix: Django's admin shows str(obj)
      in foreign-key widgets, delete confirmations and its action log, which would otherwise show
      a live token to anyone who can open an admin page."""
    Application = get_application_model()
    if not getattr(Application.clean, "_gantry_checked", False):
        Application.clean = _checked_clean(Application.clean)
        Application.clean._gantry_checked = True
    pre_save.connect(_refuse_unsafe_application, sender=Application, dispatch_uid="gantry-application-rules")
    for model in (get_access_token_model(), get_refresh_token_model(), get_grant_model()):
        model.__str__ = _prefix_only


# -- the password grant is off ----------------------------------------------------------------

class GantryServer(Server):
    """oauthlib's all-in-one server without the resource-owner password grant: a client never
    handles a user's password, and /o/token/ is no password oracle (`unsupported_grant_type`
    comes before any password is checked)."""

    def __init__(self, request_validator, *args, **kwargs):
        super().__init__(request_validator, *args, **kwargs)
        self._grant_types.pop("password", None)
