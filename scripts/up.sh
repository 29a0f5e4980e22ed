#!/usr/bin/env bash
# `make up`: a whole cloud on one machine. The control plane on 127.0.0.1:8000 — daphne (HTTP +
# WebSocket), a Celery worker and Celery beat — against the PostgreSQL and Redis that `make
# services` made answer; the local registry with gantry/hello (127.0.0.1:5000); and one local
# CPU node (`cpu-small` in `us-east`, scripts/local-node.sh) whose VMs' network lives in a
# namespace of its own (SIMULATE_GPUS=8xH100 adds a simulated GPU node beside it). Run again on
# the same database it reuses the operator account, the node, its credential and its namespace.
# Ctrl-C stops daphne, the worker, beat and the agents; the VMs keep running and the next agent
# adopts them. LOCAL_NODE=none skips the CPU node.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE_DIR=${STATE_DIR:-$PWD/.state}
mkdir -p "$STATE_DIR/log"
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

# The plane refuses the development SECRET_KEY and an empty FERNET_KEYS (DEBUG off): keys made
# once and kept in the state dir (0600), exported here for what this script starts, unless the
# environment sets them. manage.py by hand in this checkout reads the same file.
secrets_file=$($BIN/python -c 'import sys; from pathlib import Path; from cloud.production import ensure_state_secrets
print(ensure_state_secrets(Path(sys.argv[1])))' "$STATE_DIR")
while IFS= read -r line; do
  name=${line%%=*}
  case "$line" in '#'*|"$name") continue ;; esac  # comments, lines without '='
  case "$name" in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac
  [ -n "${!name:-}" ] || export "$line"  # NAME=value, the value whole (Fernet keys end in '=')
done < "$secrets_file"

$BIN/python manage.py migrate --noinput
$BIN/python manage.py load_catalog

# An operator account to log in with: created once, its password kept in the state dir so a
# second `make up` prints the same one.
pwfile="$STATE_DIR/admin-password"
[ -s "$pwfile" ] || $BIN/python -c 'import secrets; print(secrets.token_urlsafe(12))' > "$pwfile"
chmod 600 "$pwfile"
ADMIN_EMAIL=${ADMIN_EMAIL:-admin@gantry.local}
$BIN/python manage.py shell -v 0 -c "
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

# The local registry with gantry/hello: the `hello` template's image. Left alone when it
# already answers; hello is pushed only when the registry lacks that exact manifest.
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
# A registry on loopback is refused to customers and nodes unless trusted (docs/security.md);
# the plane and the local node's agent below read this.
export GANTRY_TRUSTED_REGISTRIES=${GANTRY_TRUSTED_REGISTRIES:-$REGISTRY_ADDR}
registry_ok=1
if ! scripts/ensure-debs.sh; then
  echo "registry and local node: Debian packages missing (above); continuing without them" >&2
  registry_ok=0
elif ! python3 scripts/registry/registry.py up --state-dir "$STATE_DIR" --addr "$REGISTRY_ADDR" ||
     ! python3 scripts/registry/registry.py push-hello --state-dir "$STATE_DIR" --registry "$REGISTRY_ADDR"; then
  echo "registry: could not start it or push gantry/hello (see $STATE_DIR/registry.log); continuing" >&2
  registry_ok=0
fi

# The gateway (docs/gateway.md): HAProxy driven by the plane, HTTPS for every deployment's
# endpoint name under gantry.localhost (names under .localhost reach 127.0.0.1 by themselves).
# A local CA and a wildcard certificate are made once in .state/gateway (never added to the
# system's trust store: curl --cacert .state/gateway/ca.crt). Ports 443/80 need root; as another
# user the gateway listens on 8443/8080 and the API's endpoint URLs say so.
export GANTRY_ENDPOINT_DOMAIN=${GANTRY_ENDPOINT_DOMAIN:-gantry.localhost}
GW_DIR=$STATE_DIR/gateway
GW_CONTROL=${GATEWAY_CONTROL:-127.0.0.1:9180}
if [ "$(id -u)" -eq 0 ]; then GW_HTTPS=${GATEWAY_HTTPS_PORT:-443} GW_HTTP=${GATEWAY_HTTP_PORT:-80}
else GW_HTTPS=${GATEWAY_HTTPS_PORT:-8443} GW_HTTP=${GATEWAY_HTTP_PORT:-8080}; fi
export GANTRY_GATEWAY_HTTPS_PORT=$GW_HTTPS
# Deployments' TCP ports: the plane allocates from this range and the gateway listens on all of it.
GW_TCP_PORTS=${GANTRY_GATEWAY_TCP_PORTS:-20000-20999}
GW_TCP_PORTS=${GW_TCP_PORTS// /}
export GANTRY_GATEWAY_TCP_PORTS=$GW_TCP_PORTS GANTRY_GATEWAY_TCP_HOST=127.0.0.1
gateway_ok=1
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  echo "gateway: haproxy is missing (scripts/ensure-debs.sh installs it as root); continuing without it" >&2
  gateway_ok=0
elif ! $BIN/python -m gateway ca --dir "$GW_DIR" --domain "$GANTRY_ENDPOINT_DOMAIN" >/dev/null; then
  echo "gateway: could not make its certificate in $GW_DIR; continuing without it" >&2
  gateway_ok=0
else
  [ -s "$GW_DIR/control-token" ] || (umask 077; $BIN/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$GW_DIR/control-token")
  $BIN/python manage.py gateway_register local --url "http://$GW_CONTROL" --token-file "$GW_DIR/control-token" >/dev/null
  # The local nodes' published ports then answer only the gateway: on this machine it reaches
  # them from the host's end of each node's veth pair (scripts/local-node.sh, "host").
  export LOCAL_NODE_GATEWAY_ADDRESSES=${LOCAL_NODE_GATEWAY_ADDRESSES:-host}
fi

pids=() names=()
cleanup() { trap - EXIT INT TERM; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
for log in web worker beat agent gateway; do : >"$STATE_DIR/log/$log.log"; done  # each run's logs start empty
start() { local name=$1; shift; "$@" >>"$STATE_DIR/log/$name.log" 2>&1 & pids+=($!) names+=("$name"); }

start worker $BIN/celery -A cloud worker --loglevel=INFO --concurrency=2
start beat $BIN/celery -A cloud beat --loglevel=INFO --schedule "$STATE_DIR/celerybeat-schedule"
start web $BIN/daphne -b "$HOST" -p "$PORT" cloud.asgi:application
gateway_line="none (see above)"
if [ "$gateway_ok" = 1 ]; then
  start gateway $BIN/python -m gateway run --state-dir "$GW_DIR/run" --cert "$GW_DIR/gateway.pem" \
    --https-bind "127.0.0.1:$GW_HTTPS" --http-bind "127.0.0.1:$GW_HTTP" --public-https-port "$GW_HTTPS" \
    --control-bind "$GW_CONTROL" --token-file "$GW_DIR/control-token" \
    --tcp-bind 127.0.0.1 --tcp-ports "$GW_TCP_PORTS"
  gateway_line="https://<label>.$GANTRY_ENDPOINT_DOMAIN$([ "$GW_HTTPS" = 443 ] || echo ":$GW_HTTPS") on 127.0.0.1 (CA: $GW_DIR/ca.crt), TCP ports $GW_TCP_PORTS"
fi

# What the agent and the printed examples call: the address daphne listens on, or loopback.
case "$HOST" in 0.0.0.0|::|"") API_HOST=127.0.0.1 ;; *) API_HOST=$HOST ;; esac
API=http://$API_HOST:$PORT
for _ in $(seq 60); do curl -fsS "$API/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fsS "$API/healthz" >/dev/null 2>&1 || { echo "daphne does not answer on $API; see $STATE_DIR/log/web.log" >&2; exit 1; }

# The local node: namespace and NAT, join (or reuse its credential), then the daemon.
LOCAL_NODE=${LOCAL_NODE:-local-cpu-1}
export LOCAL_NODE PLANE_URL=$API REGISTRY_ADDR STATE_DIR
node_line="none (LOCAL_NODE=none)"
if [ "$LOCAL_NODE" != none ]; then
  if [ "$(id -u)" -ne 0 ]; then
    node_line="none: the local node needs root (network namespace, TAP devices, nftables); run \`sudo make up\`"
    echo "local node: skipped, it needs root (network namespace, TAP devices, nftables); run \`sudo make up\` for one" >&2
  elif [ "$registry_ok" = 0 ]; then
    node_line="none: the registry or the node's Debian packages are missing (see above)"
  elif ! scripts/local-node.sh net 2>&1 | tee -a "$STATE_DIR/log/agent.log"; then
    node_line="none: its network namespace could not be set up (see above and $STATE_DIR/log/agent.log)"
  elif ! scripts/local-node.sh join 2>&1 | tee -a "$STATE_DIR/log/agent.log"; then
    node_line="none: it could not join (see $STATE_DIR/log/agent.log)"
  else
    since=$(date +%s)
    start agent scripts/local-node.sh run
    echo "local node: agent started (log $STATE_DIR/log/agent.log); waiting for $LOCAL_NODE to come online"
    status=unknown address=-
    for _ in $(seq 120); do
      # Online as this agent reported it: a status left by the previous run's agent (not yet
      # declared offline) has a heartbeat older than this start.
      read -r status address < <($BIN/python manage.py shell -v 0 -c "
import datetime
from nodes.models import Node
n = Node.objects.filter(hostname='$LOCAL_NODE').first()
since = datetime.datetime.fromtimestamp($since - 1, datetime.timezone.utc)
fresh = n is not None and n.last_heartbeat is not None and n.last_heartbeat >= since
print('online' if n and n.status == 'online' and fresh else (n.status if n else 'absent'), n.public_address if n else '-')
" 2>/dev/null | tail -1) || true
      [ "$status" = online ] && break
      kill -0 "${pids[-1]}" 2>/dev/null || break
      sleep 1
    done
    node_line="$LOCAL_NODE (online), endpoints on $address; its VMs' network is in namespace ${LOCAL_NODE_NETNS:-gantry-local}"
    [ "$status" = online ] || node_line="$LOCAL_NODE is ${status:-unknown}, not online yet: see $STATE_DIR/log/agent.log"
  fi
fi
# SIMULATE_GPUS=8xH100 (or 8xH200, 4xL40S): one more local node presenting that GPU board from a
# fake sysfs tree. Its inventory, preflight and VFIO binding are the real code; its VMs boot
# without passthrough and say so. The GPU templates can then be tried on a machine without GPUs.
sim_msg=""
if [ -n "${SIMULATE_GPUS:-}" ]; then
  case "$SIMULATE_GPUS" in
    8xH100) sim_hw=h100-80gb-sxm-8x ;; 8xH200) sim_hw=h200-141gb-sxm-8x ;; 4xL40S) sim_hw=l40s-48gb-4x ;;
    *) echo "SIMULATE_GPUS=$SIMULATE_GPUS: choose 8xH100, 8xH200 or 4xL40S" >&2; exit 2 ;;
  esac
  sim_node=local-sim-$(echo "$SIMULATE_GPUS" | tr 'A-Z' 'a-z')
  sim_env=(LOCAL_NODE="$sim_node" LOCAL_NODE_HARDWARE="$sim_hw" LOCAL_NODE_SIMULATE_GPUS="$SIMULATE_GPUS"
           LOCAL_NODE_NETNS=gantry-sim LOCAL_NODE_HOST_IF=gantry-sim LOCAL_NODE_LINK=198.51.100.4/30)
  sim_log=$STATE_DIR/log/agent-sim.log
  : >"$sim_log"
  if [ "$(id -u)" -ne 0 ] || [ "$registry_ok" = 0 ]; then
    sim_line="none: like the local node, it needs root and the registry (see above)"
  elif env "${sim_env[@]}" scripts/local-node.sh net 2>&1 | tee -a "$sim_log" &&
       env "${sim_env[@]}" scripts/local-node.sh join 2>&1 | tee -a "$sim_log"; then
    start agent-sim env "${sim_env[@]}" scripts/local-node.sh run
    sim_line="$sim_node ($SIMULATE_GPUS simulated, hardware $sim_hw), endpoints on 198.51.100.6; log $sim_log"
  else
    sim_line="none: it could not be set up (see $sim_log)"
  fi
  sim_msg=$'\n'"  GPU node:            $sim_line"
fi
CPU_SMALL_ID=$($BIN/python manage.py shell -v 0 -c "
from nodes.models import HardwareType
print(HardwareType.objects.get(slug='cpu-small').pk)" | tail -1)

cat <<MSG

Gantry is up on $API
  admin (operators):   $API/admin/   user: $ADMIN_EMAIL   password: $(cat "$pwfile")
  dashboard:           $API/   sign up: $API/accounts/signup/
                       (the confirmation link that brings the trial credit prints in web.log)
  API docs:            $API/api/v1/docs/   (schema: /api/v1/schema/)
  health:              $API/healthz  $API/readyz   fleet (staff): $API/api/v1/system/status
  gateway:             $gateway_line
  registry:            $REGISTRY_ADDR (gantry/hello)
  local node:          $node_line$sim_msg
  logs:                $STATE_DIR/log/{web,worker,beat,gateway,agent}.log

Deploy \`hello\` on the local node (README.md, "First API calls"):
  $BIN/python manage.py create_tenant acme --owner you@example.com --password 'a long password'
  $BIN/python manage.py create_api_client acme      # prints client_id and client_secret
  TOKEN=\$(curl -s -u "\$CLIENT_ID:\$CLIENT_SECRET" -d grant_type=client_credentials $API/o/token/ \\
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"name": "hi", "template_id": "hello", "hardware_id": $CPU_SMALL_ID, "replica_count": 1}' $API/api/v1/deployments
  curl -s -H "Authorization: Bearer \$TOKEN" $API/api/v1/deployments/<id>   # until "status": "running"
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"name": "laptop"}' \
       $API/api/v1/deployments/<id>/endpoint-keys                              # → "secret": "gk_…" (shown once)
  curl -s --cacert $GW_DIR/ca.crt -H 'Gantry-Key: gk_…' <endpoints[0].url>     # → Hello from Gantry
Ctrl-C stops the plane and the agent (VMs keep running; the next \`make up\` adopts them).
MSG
wait -n "${pids[@]}" || true
for i in "${!pids[@]}"; do
  kill -0 "${pids[$i]}" 2>/dev/null || { echo "${names[$i]} exited; see $STATE_DIR/log/${names[$i]}.log" >&2; break; }
done
exit 1
