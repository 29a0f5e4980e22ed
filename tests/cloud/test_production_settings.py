"""Production settings refuse to start unsafe (issue 23), each in a process of its own with an
environment made here, as an operator's would be: nothing of this test run's own (its keys,
DEBUG, hosts) leaks in.

With DEBUG off, the web process (daphne loading cloud.asgi), a Celery worker and beat stop at
once, with one line naming the variable and no traceback, on the development SECRET_KEY, an
empty one, no FERNET_KEYS, or ALLOWED_HOSTS=*; `manage.py check --deploy` reports each as an
error, and is clean with the production environment of docs/operations.md (read from the doc,
so the two cannot drift). HTTPS settings come only from that environment. `manage.py` finds
`make up`'s keys in the state dir; without them it refuses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from django.db import connection

from cloud.production import DEVELOPMENT_SECRET_KEY, ensure_state_secrets

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPERATIONS = REPO / "docs" / "operations.md"
TIMEOUT_S = 60  # a refusal takes a second or two; this only keeps a hung process from hanging the run


def _new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def _new_fernet_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def test_db_url(django_db_setup, django_db_blocker) -> str:
    """The test database (made, migrated): no process here writes, but none may find another."""
    with django_db_blocker.unblock():
        db = connection.settings_dict
        return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def base_env(tmp_path, test_db_url) -> dict[str, str]:
    """What any process needs to run here, and nothing that decides safety: no SECRET_KEY,
    FERNET_KEYS, DEBUG, ALLOWED_HOSTS or HTTPS setting, and a state dir of its own (empty), so
    a `make up` in this checkout cannot lend its keys."""
    state = tmp_path / "state"
    state.mkdir()
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "REDIS_URL", "CHANNELS_PREFIX")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update({"DJANGO_SETTINGS_MODULE": "cloud.settings", "PYTHONPATH": str(REPO), "STATE_DIR": str(state),
                "DATABASE_URL": test_db_url, "DB_POOL": "0",
                "CACHE_PREFIX": f"prodsettings-{secrets.token_hex(4)}", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


@pytest.fixture
def safe_env(base_env) -> dict[str, str]:
    return {**base_env, "SECRET_KEY": _new_secret_key(), "FERNET_KEYS": _new_fernet_key()}


def _documented_production_env() -> dict[str, str]:
    """The `NAME=value` lines of the one code block under "The production environment" in
    docs/operations.md; `<…>` values (how to make a secret) filled with one made here."""
    text = OPERATIONS.read_text()
    section = text.split("### The production environment", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    makers = {"SECRET_KEY": _new_secret_key, "FERNET_KEYS": _new_fernet_key}
    env = {}
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"not a NAME=value line in the doc's block: {line!r}"
        if value.startswith("<") and value.endswith(">"):
            assert name in makers, f"the doc leaves {name} for the reader to fill; this test cannot make one"
            value = makers[name]()
        env[name] = value
    return env


# (case, what changes in a safe environment, the variable the refusal names, our check's id)
UNSAFE = [
    ("the development key", {"SECRET_KEY": DEVELOPMENT_SECRET_KEY}, "SECRET_KEY", "gantry.E001"),
    ("an empty key", {"SECRET_KEY": ""}, "SECRET_KEY", "gantry.E001"),
    ("no key", {"SECRET_KEY": None}, "SECRET_KEY", "gantry.E001"),
    ("no FERNET_KEYS", {"FERNET_KEYS": None}, "FERNET_KEYS", "gantry.E002"),
    ("an empty FERNET_KEYS", {"FERNET_KEYS": ""}, "FERNET_KEYS", "gantry.E002"),
    ("ALLOWED_HOSTS=*", {"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS", "gantry.E004"),
]
CORE_UNSAFE = [case for case in UNSAFE if case[0] in
               ("the development key", "an empty key", "no FERNET_KEYS", "ALLOWED_HOSTS=*")]


def _with(env: dict[str, str], change: dict[str, str | None]) -> dict[str, str]:
    env = dict(env)
    for name, value in change.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run_all(commands: dict[str, list[str]], env: dict[str, str], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Starts every command at once (each in a session of its own) and waits for all; whatever
    still runs after TIMEOUT_S is killed with its children, so no worker outlives the test."""
    procs = {name: subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
             for name, argv in commands.items()}
    done = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                err += f"\n[killed after {TIMEOUT_S}s: it did not refuse]"
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return done


def _start_commands(tmp_path: Path) -> dict[str, list[str]]:
    queue = f"refused-{secrets.token_hex(4)}"  # were a worker to start anyway, it would take nobody's tasks
    return {
        "web": [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", "0", "cloud.asgi:application"],
        "worker": [str(BIN / "celery"), "-A", "cloud", "worker", "-Q", queue, "--concurrency", "1",
                   "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        "beat": [str(BIN / "celery"), "-A", "cloud", "beat", "--schedule", str(tmp_path / "beat-schedule"),
                 "--loglevel", "INFO"],
    }


@pytest.mark.parametrize(("change", "variable"), [(c[1], c[2]) for c in CORE_UNSAFE], ids=[c[0] for c in CORE_UNSAFE])
def test_web_worker_and_beat_refuse_to_start_with_one_line_naming_the_variable(safe_env, tmp_path, change, variable):
    results = _run_all(_start_commands(tmp_path), _with(safe_env, change), cwd=tmp_path)
    for name, result in results.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, f"{name} did not refuse (status {result.returncode}): {result.stderr[-2000:]}"
        assert len(lines) == 1 and variable in lines[0] and "refusing to start" in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, (name, result.stderr)
        # Refused before serving or scheduling anything.
        assert "Listening on" not in result.stderr and " ready." not in result.stdout + result.stderr, name
    assert not (tmp_path / "beat-schedule").exists() and not list(tmp_path.glob("beat-schedule*"))


MORE_UNSAFE = [case for case in UNSAFE if case not in CORE_UNSAFE]


@pytest.mark.parametrize(("change", "variable"), [(c[1], c[2]) for c in MORE_UNSAFE], ids=[c[0] for c in MORE_UNSAFE])
def test_loading_the_asgi_application_refuses_each_unsafe_setting(safe_env, change, variable):
    """The other spellings of the same mistakes (daphne loads the application just so)."""
    result = subprocess.run([sys.executable, "-c", "import cloud.asgi"], env=_with(safe_env, change), cwd=REPO,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("web (cloud.asgi): refusing to start") and variable in lines[0]


def test_each_problem_gets_its_own_line_and_nothing_else_refuses(safe_env, base_env):
    unsafe = _with(safe_env, {"SECRET_KEY": None, "FERNET_KEYS": None, "ALLOWED_HOSTS": "*"})
    result = subprocess.run([sys.executable, "-c", "import cloud.asgi"], env=unsafe, cwd=REPO,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 3, result.stderr
    assert [v for line, v in zip(lines, ("SECRET_KEY", "FERNET_KEYS", "ALLOWED_HOSTS")) if v in line] == \
        ["SECRET_KEY", "FERNET_KEYS", "ALLOWED_HOSTS"]
    # The control: the same application loads with safe settings, and in development (DEBUG on)
    # with the development key; what the refusals change is the one variable.
    for env in (safe_env, {**base_env, "DEBUG": "1"}):
        result = subprocess.run([sys.executable, "-c", "import cloud.asgi; print('loaded')"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_the_documented_production_environment_passes_check_deploy(base_env):
    result = _check_deploy({**base_env, **_documented_production_env()})
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(("change", "variable", "check_id"), [c[1:] for c in UNSAFE], ids=[c[0] for c in UNSAFE])
def test_check_deploy_reports_each_unsafe_setting_as_an_error(base_env, change, variable, check_id):
    result = _check_deploy(_with({**base_env, **_documented_production_env()}, change))
    assert result.returncode == 1
    errors = result.stderr.split("WARNINGS:")[0]
    assert f"({check_id}) {variable}" in errors, result.stderr
    assert "Traceback" not in result.stderr


def test_check_deploy_catches_the_development_key_that_djangos_own_check_misses(base_env):
    result = _check_deploy({**base_env, **_documented_production_env(), "SECRET_KEY": DEVELOPMENT_SECRET_KEY})
    assert "security.W009" not in result.stderr  # Django finds it long and varied enough
    assert "(gantry.E001) SECRET_KEY" in result.stderr.split("WARNINGS:")[0]


def test_check_deploy_reports_a_malformed_fernet_key(base_env):
    result = _check_deploy({**base_env, **_documented_production_env(), "FERNET_KEYS": f"{_new_fernet_key()},hunter2"})
    assert result.returncode == 1 and "(gantry.E003) FERNET_KEYS" in result.stderr
    assert "hunter2" not in result.stderr  # a key, even a bad one, is not printed


# A request through the whole middleware stack in a process with the given environment.
_PROBE = r"""
import json, django
django.setup()
from django.test import Client
host = __import__("os").environ.get("PROBE_HOST", "testserver")
out = {}
for name, path, extra in [("login", "/accounts/login/", {}),
                          ("login_https", "/accounts/login/", {"HTTP_X_FORWARDED_PROTO": "https"}),
                          ("healthz", "/healthz", {})]:
    r = Client().get(path, HTTP_HOST=host, **extra)
    cookie = r.cookies.get("csrftoken")
    out[name] = {"status": r.status_code, "location": r.get("Location"), "hsts": r.get("Strict-Transport-Security"),
                 "csrf_cookie_secure": bool(cookie and cookie["secure"]) if cookie else None}
print(json.dumps(out))
"""


def _probe(env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_https_settings_come_only_from_the_environment(safe_env, base_env):
    # Unset, DEBUG off serves plain HTTP: no redirect, no HSTS, cookies sent over HTTP too.
    plain = _probe(safe_env)
    assert plain["login"]["status"] == 200 and plain["login"]["hsts"] is None
    assert plain["login"]["csrf_cookie_secure"] is False
    assert plain["login_https"]["status"] == 200 and plain["login_https"]["hsts"] is None  # the header is not trusted
    # The documented environment: plain HTTP is redirected, HTTPS (as the proxy says) gets HSTS
    # and secure cookies, and the load balancer's probes still answer over HTTP.
    production = _probe({**base_env, **_documented_production_env(), "PROBE_HOST": "plane.example.net"})
    assert production["login"]["status"] == 301
    assert production["login"]["location"] == "https://plane.example.net/accounts/login/"
    assert production["login_https"]["status"] == 200
    assert production["login_https"]["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert production["login_https"]["csrf_cookie_secure"] is True
    assert production["healthz"]["status"] == 200


@pytest.mark.parametrize(("value", "expected"), [
    ("HTTP_X_FORWARDED_PROTO,https", ("HTTP_X_FORWARDED_PROTO", "https")),
    ("X-Forwarded-Proto, https", ("HTTP_X_FORWARDED_PROTO", "https")),
    ("", None),
])
def test_the_proxy_header_is_read_in_either_spelling(monkeypatch, value, expected):
    from cloud.settings import env_header_pair

    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", value)
    assert env_header_pair("SECURE_PROXY_SSL_HEADER") == expected


def test_a_malformed_proxy_header_setting_is_an_error_not_a_guess(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from cloud.settings import env_header_pair

    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto")
    with pytest.raises(ImproperlyConfigured, match="HEADER,value"):
        env_header_pair("SECURE_PROXY_SSL_HEADER")


def _manage(argv: list[str], env: dict[str, str], manage: Path = REPO / "manage.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(manage), *argv], env=env, cwd=manage.parent, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


_SHOW_KEYS = ["shell", "-v", "0", "-c",
              "from django.conf import settings; print(settings.SECRET_KEY); print(','.join(settings.FERNET_KEYS))"]


def test_manage_py_finds_make_ups_secrets_in_the_state_dir_when_the_environment_lacks_them(base_env):
    state = Path(base_env["STATE_DIR"])
    written = ensure_state_secrets(state)  # what scripts/up.sh runs
    assert written == state / "secrets.env" and (written.stat().st_mode & 0o777) == 0o600
    assert ensure_state_secrets(state).read_text() == written.read_text()  # made once, kept
    values = dict(line.split("=", 1) for line in written.read_text().splitlines() if not line.startswith("#"))

    result = _manage(_SHOW_KEYS, base_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [values["SECRET_KEY"], values["FERNET_KEYS"]]

    # The environment wins over the file.
    own = _new_secret_key()
    result = _manage(_SHOW_KEYS, {**base_env, "SECRET_KEY": own})
    assert result.returncode == 0 and result.stdout.split() == [own, values["FERNET_KEYS"]], result.stderr


def test_manage_py_in_a_checkout_finds_its_own_state_dir(base_env, tmp_path):
    """Without STATE_DIR, `.state/` beside manage.py: a copy of manage.py stands for a checkout."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(REPO / "manage.py", checkout / "manage.py")
    env = {k: v for k, v in base_env.items() if k != "STATE_DIR"}
    refused = _manage(_SHOW_KEYS, env, checkout / "manage.py")
    assert refused.returncode == 2 and "SECRET_KEY" in refused.stderr and "Traceback" not in refused.stderr
    ensure_state_secrets(checkout / ".state")
    result = _manage(_SHOW_KEYS, env, checkout / "manage.py")
    assert result.returncode == 0, result.stderr


def test_manage_py_without_the_state_dir_refuses(base_env):
    result = _manage(_SHOW_KEYS, base_env)  # an empty state dir: no secrets.env
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert "manage.py shell: refusing to start" in lines[0] and "SECRET_KEY" in lines[0]
    assert "FERNET_KEYS" in lines[1] and "Traceback" not in result.stderr
    # The commands that neither serve, sign nor encrypt still run: check reports instead.
    assert _manage(["check"], base_env).returncode == 0


def test_docker_compose_has_no_default_secrets_and_names_what_is_missing():
    text = (REPO / "docker-compose.yml").read_text()
    environment = yaml.safe_load(text)["x-app"]["environment"]
    for name in ("SECRET_KEY", "FERNET_KEYS"):
        # `${VAR:?message}`: compose stops with the message when VAR is unset or empty.
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]*{name}[^}}]*\}}", environment[name]), environment[name]
        assert not re.search(rf"\$\{{{name}:?[-+=]", text), f"{name} has a default somewhere"
    assert "*" not in environment["ALLOWED_HOSTS"]


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0, reason="docker compose is not installed")
def test_docker_compose_stops_with_a_message_when_a_secret_is_missing(base_env, tmp_path):
    for missing, present in (("SECRET_KEY", "FERNET_KEYS"), ("FERNET_KEYS", "SECRET_KEY")):
        env = {**{k: v for k, v in base_env.items() if k not in ("SECRET_KEY", "FERNET_KEYS")}, present: "x"}
        result = subprocess.run(["docker", "compose", "--project-directory", str(tmp_path), "-f",
                                 str(REPO / "docker-compose.yml"), "config"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        assert result.returncode != 0 and f"set {missing}" in result.stderr, result.stderr
