import os
import sys

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")

app = Celery("gantry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# With DEBUG off, an unsafe SECRET_KEY, FERNET_KEYS or ALLOWED_HOSTS stops a worker or beat when
# it loads the task modules, before it connects anywhere or schedules anything (celeryd_init
# too, should a worker ever start without loading them first); one line each, no traceback
# (cloud/production.py). Processes that only send tasks (web, manage.py) fire neither signal.
@signals.import_modules.connect
@signals.celeryd_init.connect
def _refuse_unsafe(**_):
    from cloud.production import refuse_unsafe

    command = next((arg for arg in sys.argv[1:] if arg in ("worker", "beat")), None)
    refuse_unsafe(f"celery {command}" if command else "celery")
