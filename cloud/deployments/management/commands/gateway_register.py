"""`manage.py gateway_register NAME --url URL --token-file FILE`

Registers a gateway the plane pushes the route table to, or changes an existing one's control
URL and token (the gateway was started with `--token-file FILE`: the same file, or a copy).
The token is read from a file, never the command line, so it stays out of shell history and
`ps`; it is stored encrypted. Prints one JSON line: {"name", "control_url", "created"}.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from cloud.deployments.services import gateway_register
from cloud.exceptions import ApplicationError

MAX_TOKEN_FILE_BYTES = 64 * 1024


class Command(BaseCommand):
    help = "Register a gateway (or update its URL and token) for the plane to push routes to."

    def add_arguments(self, parser):
        parser.add_argument("name", help="a name for it, e.g. gw-1 (a-z, 0-9, '-')")
        parser.add_argument("--url", required=True, help="its control address, e.g. http://10.0.0.5:9180")
        parser.add_argument("--token-file", required=True, help="the file holding the token it was started with")

    def handle(self, *args, name, url, token_file, **options):
        try:
            with open(token_file, "rb") as handle:
                raw = handle.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise CommandError(f"Cannot read the token file: {exc.strerror} ({token_file}).") from None
        if len(raw) > MAX_TOKEN_FILE_BYTES:
            raise CommandError("The token file is too large to hold a token.")
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CommandError("The token file does not hold ASCII text.") from None
        try:
            gateway, created = gateway_register(name=name, control_url=url, token=token)
        except ApplicationError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(json.dumps({"name": gateway.name, "control_url": gateway.control_url, "created": created}))
