"""`manage.py create_tenant SLUG --owner EMAIL [--password P] [--name NAME]`

Creates an organisation tenant owned by EMAIL, creating that user first (with their personal
tenant, exactly as signup would) if they do not exist. Prints one JSON object on stdout:
{"tenant": SLUG, "owner": EMAIL, "owner_created": bool}. An existing slug is an error (exit 1)
rather than a silent success, so a script never believes it owns a tenant someone else made.

An existing account whose address was never confirmed is refused (exit 1): anyone can sign up
with another person's address, and the tenant would go to whoever did. An account this command
makes is vouched for by the operator and counts as confirmed.
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.selectors import email_confirmed
from accounts.services import tenant_create, user_signup
from cloud.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Create a tenant (organisation) with an owner; creates the owner's account if missing."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="lowercase letters, digits and dashes, e.g. 'acme'")
        parser.add_argument("--owner", required=True, metavar="EMAIL", help="owner's email (their login)")
        parser.add_argument("--password", default=None, help="password for a newly created owner (else none: they reset it)")
        parser.add_argument("--name", default=None, help="display name (defaults to the slug)")

    def handle(self, *args, slug: str, owner: str, password: str | None, name: str | None, **options):
        User = get_user_model()
        email = User.objects.normalize_email(owner).strip().lower()
        if "@" not in email:
            raise CommandError(f"--owner must be an email address, got '{owner}'.")
        try:
            with transaction.atomic():
                user = User.objects.filter(username=email).first()
                created = user is None
                if created:
                    user, _ = user_signup(email=email, password=password)
                elif not email_confirmed(user=user):
                    raise CommandError(
                        f"{email} has an account whose address was never confirmed (anyone can sign up with someone "
                        "else's address), so no tenant is handed to it. Ask them to confirm it (the link mailed at "
                        "signup; log in to resend it) and run this again.")
                elif password:
                    self.stderr.write(f"note: {email} already exists; --password applies only to a new user, left unchanged.")
                tenant = tenant_create(slug=slug, name=name, owner=user)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(json.dumps({"tenant": tenant.slug, "owner": email, "owner_created": created}))
