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

# The test process runs many tests' worker threads (Channels' database threads, the funds-race
# threads), each holding its pooled connection until it closes it; a larger pool than a web
# process's keeps a test that needs 17 at once from waiting on connections earlier tests' threads
# still hold. Processes the tests start set their own (most run with DB_POOL=0).
os.environ.setdefault("DB_POOL_MAX", "60")
