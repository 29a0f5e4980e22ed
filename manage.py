#!/usr/bin/env python
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")
    from cloud.production import EXEMPT_COMMANDS, load_state_secrets, refuse_unsafe

    # `make up` keeps the keys it generated in .state/secrets.env; a command run by hand in this
    # checkout uses them (the environment wins), so it reads and writes what the plane does.
    load_state_secrets(Path(__file__).resolve().parent)
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    if command not in EXEMPT_COMMANDS:
        refuse_unsafe(f"manage.py {command}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
