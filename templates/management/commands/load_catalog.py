"""`manage.py load_catalog`: install or refresh the default catalog (templates/catalog.py).

Idempotent: rows are matched by slug and only written when a field differs, so running it
twice changes nothing and says so. It never deletes: a location, hardware type or template an
operator added in the admin stays.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand
from django.db import transaction

from cloud.upsert import OUTCOMES
from nodes.services import hardware_type_upsert, location_upsert
from templates import catalog
from templates.services import template_upsert_global


class Command(BaseCommand):
    help = "Create or update the default locations, hardware types and global templates (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON summary instead of a line per row")

    @transaction.atomic
    def handle(self, *args, **options):
        summary: dict[str, dict[str, list[str]]] = {}

        def record(kind: str, slug: str, outcome: str) -> None:
            summary.setdefault(kind, {name: [] for name in OUTCOMES})[outcome].append(slug)
            if not options["json"]:
                self.stdout.write(f"{kind[:-1]} {slug}: {outcome}")

        for spec in catalog.LOCATIONS:
            spec = dict(spec)
            record("locations", spec["slug"], location_upsert(slug=spec.pop("slug"), defaults=spec))
        for spec in catalog.HARDWARE_TYPES:
            spec = dict(spec)
            # A new type starts at the catalog's list price; after that its price is the billing
            # price book's (admin: Billing > Prices), which a re-run must not overwrite.
            record("hardware_types", spec["slug"], hardware_type_upsert(slug=spec.pop("slug"), defaults=spec,
                                                                        on_create_only=("price_per_gpu_hour",)))
        for spec in catalog.TEMPLATES:
            spec = dict(spec)
            slug = spec.pop("slug")
            _, outcome = template_upsert_global(slug=slug, defaults=spec)
            record("templates", slug, outcome)

        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            totals = {
                outcome: sum(len(kinds[outcome]) for kinds in summary.values())
                for outcome in OUTCOMES
            }
            self.stdout.write(
                f"catalog: {totals['created']} created, {totals['updated']} updated, {totals['unchanged']} unchanged"
            )
