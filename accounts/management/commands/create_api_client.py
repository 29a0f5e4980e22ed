"""`manage.py create_api_client SLUG [--name N] [--scopes "deployments:read deployments:write"]`

Creates a confidential client-credentials OAuth2 client acting for tenant SLUG and prints
exactly one JSON object on stdout, `{"client_id": ..., "client_secret": ...}`, so a script can
`| jq -r .client_secret`. The secret is shown this once: only its hash is stored.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from accounts.services import service_account_create


def parse_scopes(raw: str | None) -> list[str]:
    """Space- or comma-separated customer scopes; empty means every customer scope."""
    scopes = [s for s in (raw or "").replace(",", " ").split() if s]
    unknown = [s for s in scopes if s not in settings.SCOPES]
    if unknown:
        raise CommandError(f"Unknown scope(s): {', '.join(unknown)}. Choose from: {' '.join(settings.CUSTOMER_SCOPES)}.")
    operator_only = [s for s in scopes if s not in settings.CUSTOMER_SCOPES]
    if operator_only:
        raise CommandError(f"Scope(s) {', '.join(operator_only)} are for operators and cannot be given to a tenant's client.")
    return list(dict.fromkeys(scopes))


class Command(BaseCommand):
    help = "Create a client-credentials API client for a tenant; prints {client_id, client_secret} as JSON."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the tenant the client acts for")
        parser.add_argument("--name", default=None, help="a label shown in the admin")
        parser.add_argument("--scopes", default=None, help='space-separated, e.g. "deployments:read deployments:write"')

    def handle(self, *args, slug: str, name: str | None, scopes: str | None, **options):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"No tenant '{slug}'.")
        application, secret = service_account_create(
            tenant=tenant, name=name or f"{slug} API client", scopes=parse_scopes(scopes)
        )
        self.stdout.write(json.dumps({"client_id": application.client_id, "client_secret": secret}))
