"""`manage.py create_node HOSTNAME --hardware-type SLUG|ID --location SLUG|ID [--public-address IP]`

Registers a node in `joining` and prints exactly one JSON object on one line: the node id and a
one-time join token (valid 1 h) for `gantry-agent join --url BASE --token T`. Only the token's
hash is stored. `--reissue` gives an existing node a fresh token (a rebuilt host re-joining).
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from cloud.exceptions import ApplicationError
from nodes import services
from nodes.models import Node


class Command(BaseCommand):
    help = "Register a node and print its one-time join token as one JSON line."

    def add_arguments(self, parser):
        parser.add_argument("hostname")
        parser.add_argument("--hardware-type", help="hardware type slug or id (see GET /api/v1/hardware)")
        parser.add_argument("--location", help="location slug or id")
        parser.add_argument("--public-address", default=None,
                            help="address customers reach endpoints on (any IP, loopback included)")
        parser.add_argument("--reissue", action="store_true", help="a new join token for an existing node")

    def handle(self, *args, hostname, hardware_type, location, public_address, reissue, **options):
        try:
            if reissue:
                node = Node.objects.filter(hostname=hostname).first()
                if node is None:
                    raise CommandError(f"No node '{hostname}'.")
                made = services.join_token_reissue(node=node)
            else:
                if not hardware_type or not location:
                    raise CommandError("--hardware-type and --location are required for a new node.")
                made = services.node_create(hostname=hostname, hardware_type=hardware_type, location=location,
                                            public_address=public_address)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(json.dumps(made.as_json()))
