"""The test run's own secrets, set before Django reads its settings (a plugin: pyproject's
addopts load it ahead of pytest-django; a conftest would come too late).

With DEBUG off, cloud.asgi, Celery and manage.py refuse the development key and an empty
FERNET_KEYS (cloud/production.py). The tests import cloud.asgi and start daphne, Celery workers
and agents, all of which read this process's environment: a key made per run here is the same
in every one of them, so what this process encrypts a worker can decrypt. An environment that
already sets them wins.
"""

import os
import secrets

from cryptography.fernet import Fernet

os.environ.setdefault("SECRET_KEY", "tests-" + secrets.token_urlsafe(48))
os.environ.setdefault("FERNET_KEYS", Fernet.generate_key().decode())
