#!/usr/bin/env bash
# `make up`: the whole control plane on 127.0.0.1:8000 — daphne (HTTP + WebSocket), a Celery
# worker and Celery beat — against the PostgreSQL and Redis that `make services` made answer.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE_DIR=${STATE_DIR:-$PWD/.state}
mkdir -p "$STATE_DIR/log"
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

$BIN/python manage.py migrate --noinput
$BIN/python manage.py load_catalog

# An operator account to log in with: created once, its password kept in the state dir so a
# second `make up` prints the same one.
pwfile="$STATE_DIR/admin-password"
[ -s "$pwfile" ] || $BIN/python -c 'import secrets; print(secrets.token_urlsafe(12))' > "$pwfile"
chmod 600 "$pwfile"
ADMIN_EMAIL=${ADMIN_EMAIL:-admin@gantry.local}
$BIN/python manage.py shell -c "
import sys
from django.contrib.auth import get_user_model
from accounts.services import user_signup
User = get_user_model()
email, password = '$ADMIN_EMAIL', open('$pwfile').read().strip()
user = User.objects.filter(username=email).first()
if user is None:
    user, _ = user_signup(email=email, password=password)
user.is_staff = user.is_superuser = True
user.set_password(password)
user.save()
"

pids=()
cleanup() { trap - EXIT INT TERM; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; }
trap cleanup EXIT INT TERM

$BIN/celery -A cloud worker --loglevel=INFO --concurrency=2 >"$STATE_DIR/log/worker.log" 2>&1 & pids+=($!)
$BIN/celery -A cloud beat --loglevel=INFO --schedule "$STATE_DIR/celerybeat-schedule" >"$STATE_DIR/log/beat.log" 2>&1 & pids+=($!)
$BIN/daphne -b "$HOST" -p "$PORT" cloud.asgi:application >"$STATE_DIR/log/web.log" 2>&1 & pids+=($!)

for _ in $(seq 60); do curl -fsS "http://$HOST:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
cat <<MSG

Gantry is up on http://$HOST:$PORT
  admin (operators):   http://$HOST:$PORT/admin/   user: $ADMIN_EMAIL   password: $(cat "$pwfile")
  sign up (customers): http://$HOST:$PORT/accounts/signup/
  API docs:            http://$HOST:$PORT/api/v1/docs/   (schema: /api/v1/schema/)
  health:              http://$HOST:$PORT/healthz  http://$HOST:$PORT/readyz
  an API client:       .venv/bin/python manage.py create_api_client <tenant-slug>
  logs:                $STATE_DIR/log/{web,worker,beat}.log
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
echo "a Gantry process exited; see $STATE_DIR/log/" >&2
exit 1
