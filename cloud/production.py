"""What the plane refuses to run with outside development, and where `make up` keeps its secrets.

Outside development (DEBUG off) the web process (cloud/asgi.py), Celery workers and beat
(cloud/celery.py) and `manage.py` commands (manage.py) stop before doing anything when a
setting below is unsafe, with one line per variable on stderr and no traceback; `manage.py
check --deploy` reports the same problems as errors (gantry.E001-E004), whatever DEBUG says,
since it asks whether this environment may be deployed.

Django's own check (security.W009) misses our development key: it is long and varied, and does
not start with "django-insecure-". Every key this repository ever published is listed here.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

# The fallback when SECRET_KEY is unset or empty: usable with DEBUG on, refused everywhere else.
DEVELOPMENT_SECRET_KEY = "gantry-local-development-key-not-for-production-use-0123456789"
# Keys that appeared in this repository (settings.py, docker-compose.yml): public, so never secret.
REFUSED_SECRET_KEYS = frozenset({DEVELOPMENT_SECRET_KEY, "change-me-in-production", ""})

# Commands that neither serve, sign nor encrypt anything, so they may run without the
# production secrets: `check` must, to report them; the image build runs `collectstatic`.
EXEMPT_COMMANDS = frozenset({"check", "collectstatic", "makemigrations", "help", "version", "--help", "--version"})

_HOW_SECRET_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
_HOW_FERNET_KEY = "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


def _secret_key(settings) -> str:
    try:
        return settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        return ""


def _is_fernet_key(key: str) -> bool:
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except (ValueError, TypeError):
        return False
    return True


def problems(settings=None) -> list[tuple[str, str, str]]:
    """(check id, variable, what is wrong and how to fix it) for each unsafe setting."""
    if settings is None:
        from django.conf import settings
    found = []
    key = _secret_key(settings)
    if key in REFUSED_SECRET_KEYS or key.startswith("django-insecure-"):
        found.append(("gantry.E001", "SECRET_KEY",
                      "SECRET_KEY is unset, empty or a published development key; set it to 50 or more random "
                      f"characters ({_HOW_SECRET_KEY})"))
    fernet_keys = list(getattr(settings, "FERNET_KEYS", []) or [])
    if not fernet_keys:
        found.append(("gantry.E002", "FERNET_KEYS",
                      "FERNET_KEYS is unset or empty (secrets at rest would be encrypted with a key derived from "
                      f"SECRET_KEY); set it to a Fernet key ({_HOW_FERNET_KEY})"))
    elif not all(_is_fernet_key(k) for k in fernet_keys):
        found.append(("gantry.E003", "FERNET_KEYS",
                      "FERNET_KEYS holds a value that is not a Fernet key (32 url-safe base64-encoded bytes); "
                      f"make one with {_HOW_FERNET_KEY}"))
    if "*" in list(getattr(settings, "ALLOWED_HOSTS", [])):
        found.append(("gantry.E004", "ALLOWED_HOSTS",
                      "ALLOWED_HOSTS contains '*', which answers any Host header (password-reset links and "
                      "absolute URLs would name the attacker's host); list the plane's host names"))
    return found


def refuse_unsafe(process: str) -> None:
    """Exit (status 2) with one line per unsafe setting, unless DEBUG is on. `process` names who refuses."""
    from django.conf import settings

    if settings.DEBUG:
        return
    found = problems(settings)
    if not found:
        return
    for _, _, message in found:
        print(f"{process}: refusing to start with DEBUG off: {message}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(2)


@checks.register(checks.Tags.security, deploy=True)
def check_production_settings(app_configs=None, **kwargs):
    return [checks.Error(message, id=check_id, hint="See docs/operations.md, \"Production\".")
            for check_id, _, message in problems()]


def state_dir(base: Path) -> Path:
    """Where `make up` keeps what it generated: STATE_DIR (the Makefile exports it), else .state/."""
    return Path(os.environ.get("STATE_DIR") or base / ".state")


def ensure_state_secrets(directory: Path) -> Path:
    """`make up`'s keys: made once in `directory`/secrets.env (0600), kept across runs so sessions
    and encrypted secrets stay valid. Only for this checkout, never for production."""
    from cryptography.fernet import Fernet

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "secrets.env"
    if not path.exists() or path.stat().st_size == 0:
        text = ("# made by `make up` (scripts/up.sh) for this checkout only; never copy it to production\n"
                f"SECRET_KEY={secrets.token_urlsafe(50)}\nFERNET_KEYS={Fernet.generate_key().decode()}\n")
        fresh = path.with_name(f".secrets.env.{os.getpid()}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(fresh, path)
    os.chmod(path, 0o600)
    return path


def load_state_secrets(base: Path) -> None:
    """Fills in, from `make up`'s `<state dir>/secrets.env`, the variables the environment lacks
    (unset or empty): `manage.py` by hand in that checkout then uses the keys the running plane
    uses. A checkout without the file is left as it is, and still refuses."""
    path = state_dir(base) / "secrets.env"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    except OSError as exc:
        print(f"manage.py: cannot read {path}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#") and not os.environ.get(name):
            os.environ[name] = value
