#!/usr/bin/env bash
# Makes DATABASE_URL and REDIS_URL answer. When they point at this machine and nothing answers,
# the local Debian servers are started (installed first if missing), and the role and database
# in DATABASE_URL are created. A remote URL that does not answer is an error, not a guess.
set -euo pipefail
cd "$(dirname "$0")/.."
PYBIN=${PYBIN:-.venv/bin/python}
db_url=${DATABASE_URL:-postgres://gantry:gantry@127.0.0.1:5432/gantry}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}

read -r db_user db_pass db_host db_port db_name < <("$PYBIN" - "$db_url" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(p.username or "postgres", p.password or "-", p.hostname or "127.0.0.1", p.port or 5432, p.path.lstrip("/") or "gantry")
PY
)
is_local() { case "$1" in 127.*|localhost|::1|"") return 0;; *) return 1;; esac; }

pg_up() { "$PYBIN" - "$db_host" "$db_port" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}
db_ok() { "$PYBIN" - "$db_url" <<'PY'
import sys, psycopg
try:
    psycopg.connect(sys.argv[1], connect_timeout=3).close()
except Exception as exc:
    sys.exit(1)
PY
}

if ! db_ok; then
  if ! pg_up; then
    is_local "$db_host" || { echo "PostgreSQL at $db_host:$db_port does not answer" >&2; exit 1; }
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then scripts/apt-install.sh postgresql; fi
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster "$ver" main start
    for _ in $(seq 30); do pg_up && break; sleep 0.5; done
  fi
  # Create the role and database as the superuser: over the local socket as the postgres OS
  # user where there is one, else over TCP as postgres (trust-auth development servers).
  scripts/apt-install.sh postgresql-client >/dev/null 2>&1 || true
  if id postgres >/dev/null 2>&1 && [ -S /var/run/postgresql/.s.PGSQL.$db_port ]; then
    psql_admin() { runuser -u postgres -- psql -p "$db_port" -v ON_ERROR_STOP=1 -qtA "$@"; }
  else
    psql_admin() { psql -h "$db_host" -p "$db_port" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
  fi
  pass=$db_pass; [ "$pass" = "-" ] && pass=$db_user
  if [ "$(psql_admin -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname='$db_user'")" != 1 ]; then
    psql_admin -d postgres -c "CREATE ROLE \"$db_user\" LOGIN CREATEDB PASSWORD '$pass'"
  fi
  if [ "$(psql_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$db_name'")" != 1 ]; then
    psql_admin -d postgres -c "CREATE DATABASE \"$db_name\" OWNER \"$db_user\""
  fi
  db_ok || { echo "cannot connect to $db_url after setting it up" >&2; exit 1; }
fi

redis_ok() { "$PYBIN" - "$redis_url" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()
except Exception:
    sys.exit(1)
PY
}
if ! redis_ok; then
  redis_host=$("$PYBIN" -c 'import sys,urllib.parse as u; print(u.urlsplit(sys.argv[1]).hostname or "127.0.0.1")' "$redis_url")
  is_local "$redis_host" || { echo "Redis at $redis_url does not answer" >&2; exit 1; }
  command -v redis-server >/dev/null || scripts/apt-install.sh redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/gantry-redis.log
  for _ in $(seq 20); do redis_ok && break; sleep 0.25; done
  redis_ok || { echo "Redis did not start; see /tmp/gantry-redis.log" >&2; exit 1; }
fi
echo "services: PostgreSQL ($db_host:$db_port/$db_name) and Redis ($redis_url) answer"
