"""`manage.py credit TENANT_SLUG AMOUNT --reason TEXT [--key KEY] [--refund] [--by NAME]`

Adds a credit (or with --refund, a refund) to the tenant's ledger, with who (--by, else the
operating-system login, as `cli:<login>`) and why. With --key the command is idempotent: the
same key again prints the first entry (`"created": false`); the same key with another amount
is an error. Prints one JSON object: tenant, seq, kind, amount, balance, created.
"""

from __future__ import annotations

import getpass
import json
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import tenant_by_slug
from billing.money import money_str
from billing.selectors import tenant_balance
from billing.services import ledger_credit
from cloud.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Credit (or refund) a tenant's balance, with who and why; idempotent with --key."

    def add_arguments(self, parser):
        parser.add_argument("tenant", metavar="TENANT_SLUG")
        parser.add_argument("amount", metavar="AMOUNT", help="USD, e.g. 100 or 12.50")
        parser.add_argument("--reason", required=True, help="why (kept on the ledger entry)")
        parser.add_argument("--key", default=None, help="idempotency key: the same key never credits twice")
        parser.add_argument("--refund", action="store_true", help="record a refund rather than a credit")
        parser.add_argument("--by", default=None, help="who asked for it (default: cli:<your login>)")

    def handle(self, *args, tenant: str, amount: str, reason: str, key, refund: bool, by, **options):
        found = tenant_by_slug(tenant)
        if found is None:
            raise CommandError(f"No tenant '{tenant}'.")
        try:
            value = Decimal(amount)
        except InvalidOperation:
            raise CommandError(f"AMOUNT must be a decimal number of USD, got '{amount}'.") from None
        if not value.is_finite():
            raise CommandError(f"AMOUNT must be a decimal number of USD, got '{amount}'.")
        try:
            entry, created = ledger_credit(tenant=found, amount=value, reason=reason, kind="refund" if refund else "credit",
                                           actor_name=by or f"cli:{getpass.getuser()}", key=key)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(json.dumps({
            "tenant": found.slug, "seq": entry.seq, "kind": entry.kind, "amount": money_str(entry.amount),
            "balance": money_str(tenant_balance(tenant=found)), "created": created,
        }))
