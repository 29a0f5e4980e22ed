#!/usr/bin/env bash
# The local CPU node `make up` runs beside the control plane: one `gantry-agent` on this
# machine, joined to the plane automatically, whose VMs' network lives in a namespace of its own.
#
#   local-node.sh net    the namespace, its veth pair to the host and the host's NAT for it
#   local-node.sh join   make sure the node exists on the plane and holds a credential it accepts
#   local-node.sh run    exec the agent daemon (up.sh runs it in the background, logging to a file)
#   local-node.sh down   remove the namespace, the veth pair and the NAT table (refused while VMs run)
#
# The picture, with the defaults:
#
#   host ── gantry-local (198.51.100.1/30) ══veth══ uplink0 (198.51.100.2/30) ── netns gantry-local
#                                                                                  └ gantry0 bridge (VM subnet), TAPs, VMs
#
# The node's public address is the namespace's end of the pair, so an endpoint
# http://198.51.100.2:<host port> answers from the host (the agent DNATs it to the VM inside
# the namespace). The namespace's default route is the host's end; the agent masquerades VM
# traffic leaving its bridge, and the host masquerades what leaves the pair for any other
# interface (nftables table `inet gantry-local`, ip_forward on), so VMs reach the internet
# through the host's NAT and reach the host only through the pair. The image pulls and the
# control-plane connection stay in the host namespace (`--netns` moves only the VMs' network).
#
# Everything is idempotent: a second run finds the namespace, the pair, the table and the
# credential in place and changes nothing. Needs root (namespaces, TAP devices, nftables).
#
# Settings (environment): LOCAL_NODE (hostname, default local-cpu-1), LOCAL_NODE_HARDWARE
# (cpu-small), LOCAL_NODE_LOCATION (us-east), LOCAL_NODE_NETNS (gantry-local),
# LOCAL_NODE_LINK (the pair's /30, 198.51.100.0/30), LOCAL_NODE_SUBNET (the VMs' subnet;
# default: the first of 198.51.100.128/25, 192.0.2.0/24, 203.0.113.0/24 that no host route,
# address or nameserver overlaps, chosen once and remembered), PLANE_URL (http://127.0.0.1:8000),
# KIT_CACHE (the agent's host-wide default), REGISTRY_ADDR (127.0.0.1:5000), STATE_DIR,
# LOCAL_NODE_SIMULATE_GPUS (a GPU board the node presents from a fake sysfs tree: 8xH100,
# 8xH200 or 4xL40S; its VMs boot without passthrough), LOCAL_NODE_GATEWAY_ADDRESSES (the endpoint
# gateways' addresses or prefixes, comma- or space-separated, `host` for the pair's host end, where
# a gateway on this machine connects from: the node's published ports then refuse every other
# source; unset, they stay open to all). A second node needs its own LOCAL_NODE,
# LOCAL_NODE_NETNS, LOCAL_NODE_HOST_IF and LOCAL_NODE_LINK; its NAT table is named after its
# namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE_DIR=${STATE_DIR:-$PWD/.state}
NODE=${LOCAL_NODE:-local-cpu-1}
HARDWARE=${LOCAL_NODE_HARDWARE:-cpu-small}
LOCATION=${LOCAL_NODE_LOCATION:-us-east}
NETNS=${LOCAL_NODE_NETNS:-gantry-local}
HOST_IF=${LOCAL_NODE_HOST_IF:-gantry-local}  # the pair's host end (15 characters at most)
NS_IF=uplink0                                # its namespace end
BRIDGE=gantry0                               # the agent's bridge, inside the namespace
LINK=${LOCAL_NODE_LINK:-198.51.100.0/30}
PLANE_URL=${PLANE_URL:-http://127.0.0.1:8000}
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
NFT_TABLE=$NETNS  # gantry-local for the default node, as before
DATA_DIR=$STATE_DIR/node/$NODE
SUBNET_FILE=$STATE_DIR/node/$NODE.subnet
KIT_ARGS=()
[ -n "${KIT_CACHE:-}" ] && KIT_ARGS=(--kit-cache "$KIT_CACHE")
SIM_ARGS=()
[ -n "${LOCAL_NODE_SIMULATE_GPUS:-}" ] && SIM_ARGS=(--simulate-gpus "$LOCAL_NODE_SIMULATE_GPUS")

read -r HOST_ADDR NS_ADDR PREFIX < <(python3 - "$LINK" <<'PY'
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1])
hosts = list(net.hosts())
print(hosts[0], hosts[1], net.prefixlen)
PY
)
PUBLIC_ADDRESS=$NS_ADDR
GATEWAY_ARGS=()
IFS=', ' read -ra GATEWAYS <<< "${LOCAL_NODE_GATEWAY_ADDRESSES:-}"
for gateway in "${GATEWAYS[@]}"; do
  [ "$gateway" = host ] && gateway=$HOST_ADDR
  GATEWAY_ARGS+=(--gateway-address "$gateway")
done

say() { echo "local node: $*"; }
die() { echo "local node: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "needs root (network namespace, TAP devices, nftables)"; }

# The VMs' subnet: chosen once (the first candidate that no host route, address or nameserver
# overlaps, our own pair excepted) and remembered, so the leases of VMs that outlive the agent
# stay valid. TEST-NET-2's upper half comes first: the other TEST-NETs are the ones hosts and
# sandboxes borrow (one puts its own uplink on 192.0.2.0/24, another its proxy in 203.0.113.0/24,
# which a VM could then no longer reach: inside the namespace that address would be on the bridge).
vm_subnet() {
  if [ -n "${LOCAL_NODE_SUBNET:-}" ]; then echo "$LOCAL_NODE_SUBNET"; return; fi
  if [ -s "$SUBNET_FILE" ]; then cat "$SUBNET_FILE"; return; fi
  mkdir -p "$(dirname "$SUBNET_FILE")"
  python3 - "$LINK" "$HOST_IF" "$(ip -4 -o route show table all)" "$(ip -4 -o addr show)" <<'PY' > "$SUBNET_FILE.tmp"
import ipaddress, re, sys
link, host_if, routes, addrs = ipaddress.ip_network(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
used = []
try:
    for m in re.finditer(r"^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)", open("/etc/resolv.conf").read(), re.M):
        used.append(ipaddress.ip_network(m.group(1)))
except OSError:
    pass
for line in routes.splitlines():
    if f" dev {host_if} " in f"{line} ":
        continue
    dest = line.split()[0] if line.split() else ""
    if dest in ("local", "broadcast", "unicast") and len(line.split()) > 1:
        dest = line.split()[1]
    if dest and dest != "default":
        try:
            used.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            pass
for m in re.finditer(r"^\d+: (\S+)\s+inet (\S+)", addrs, re.M):
    if m.group(1) != host_if:
        used.append(ipaddress.ip_interface(m.group(2)).network)
for cand in ("198.51.100.128/25", "192.0.2.0/24", "203.0.113.0/24"):
    net = ipaddress.ip_network(cand)
    if not net.overlaps(link) and not any(net.overlaps(u) for u in used):
        print(net)
        break
else:
    sys.exit("no free TEST-NET subnet for the VMs: set LOCAL_NODE_SUBNET")
PY
  [ -s "$SUBNET_FILE.tmp" ] || { rm -f "$SUBNET_FILE.tmp"; return 1; }
  mv "$SUBNET_FILE.tmp" "$SUBNET_FILE"
  cat "$SUBNET_FILE"
}

cmd_net() {
  need_root
  local subnet
  subnet=$(vm_subnet) || die "cannot choose the VMs' subnet"
  # The pair's /30 must not be in use on the host by anything but our own pair.
  if ip -4 -o addr show | grep -v " $HOST_IF " | python3 -c '
import ipaddress, re, sys
link = ipaddress.ip_network(sys.argv[1])
sys.exit(0 if any(ipaddress.ip_interface(m).network.overlaps(link) for m in re.findall(r"inet (\S+)", sys.stdin.read())) else 1)
' "$LINK"; then
    die "$LINK is already used on this host; set LOCAL_NODE_LINK to a free /30"
  fi
  [ -e "/run/netns/$NETNS" ] || ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    # Made with its peer directly inside the namespace: the peer never sits in the host's.
    ip -n "$NETNS" link del "$NS_IF" 2>/dev/null || true  # half of a pair whose host end went
    ip link add "$HOST_IF" type veth peer name "$NS_IF" netns "$NETNS"
  fi
  ip addr replace "$HOST_ADDR/$PREFIX" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NETNS" addr replace "$NS_ADDR/$PREFIX" dev "$NS_IF"
  ip -n "$NETNS" link set "$NS_IF" up
  ip -n "$NETNS" route replace default via "$HOST_ADDR" dev "$NS_IF"
  # The agent adds its bridge's address but removes none: one left from another VM subnet
  # (LOCAL_NODE_SUBNET changed) would keep routing that subnet to the bridge.
  local stale
  stale=$(ip -n "$NETNS" -4 -o addr show dev "$BRIDGE" 2>/dev/null | python3 -c '
import ipaddress, re, sys
net = ipaddress.ip_network(sys.argv[1])
print(" ".join(a for a in re.findall(r"inet (\S+)", sys.stdin.read()) if ipaddress.ip_interface(a).network != net))
' "$subnet") || true
  if [ -n "$stale" ]; then
    if [ -n "$(ip netns pids "$NETNS")" ]; then
      say "warning: $BRIDGE in $NETNS still has $stale (another VM subnet) while VMs run; stop them and run make local-node-down" >&2
    else
      for a in $stale; do ip -n "$NETNS" addr del "$a" dev "$BRIDGE"; done
      say "removed $stale (another VM subnet) from $BRIDGE"
    fi
  fi
  sysctl -qw net.ipv4.ip_forward=1
  # Our own table, rewritten whole in one transaction (create, delete, define: idempotent).
  # Policy accept everywhere: we add NAT and accepts, never override another table's drop.
  nft -f - <<NFT
table inet $NFT_TABLE {}
delete table inet $NFT_TABLE
table inet $NFT_TABLE {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr { $LINK, $subnet } oifname != "$HOST_IF" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$HOST_IF" oifname != "$HOST_IF" accept
    oifname "$HOST_IF" ct state established,related accept
  }
}
NFT
  say "namespace $NETNS: $NS_IF $NS_ADDR/$PREFIX, default via $HOST_ADDR ($HOST_IF); VM subnet $subnet"
}

# ok | missing | rejected | other-url, and whether the node exists: "<credential> <node>".
credential_state() {
  $BIN/python manage.py shell -v 0 -c "
import json, pathlib
from nodes import services
from nodes.models import Node
path = pathlib.Path('$DATA_DIR') / 'credential.json'
node = Node.objects.filter(hostname='$NODE').first()
state = 'missing'
if path.exists():
    try:
        cred = json.loads(path.read_text())
        found = services.node_authenticate(cred['credential'])
        if found is None or found.hostname != '$NODE':
            state = 'rejected'
        elif cred['url'].rstrip('/') != '$PLANE_URL'.rstrip('/'):
            state = 'other-url'
        else:
            state = 'ok'
    except (ValueError, KeyError, TypeError):
        state = 'rejected'
print(state, 'exists' if node else 'absent', (node.public_address or '-') if node else '-')
" | tail -1
}

cmd_join() {
  need_root
  local cred node address made token
  read -r cred node address < <(credential_state)
  if [ "$node" = exists ] && [ "$address" != "$PUBLIC_ADDRESS" ]; then
    say "warning: node $NODE's public address is $address, not $PUBLIC_ADDRESS; its endpoints will not answer from here" >&2
  fi
  if [ "$cred" = ok ]; then
    say "$NODE already joined (credential $DATA_DIR/credential.json)"
    return 0
  fi
  if [ "$node" = exists ]; then
    say "$NODE exists but its credential is $cred: re-joining with a new token"
    made=$($BIN/python manage.py create_node "$NODE" --reissue)
  else
    say "registering $NODE ($HARDWARE in $LOCATION, public address $PUBLIC_ADDRESS)"
    made=$($BIN/python manage.py create_node "$NODE" --hardware-type "$HARDWARE" --location "$LOCATION" \
             --public-address "$PUBLIC_ADDRESS")
  fi
  token=$(printf '%s' "$made" | python3 -c 'import json,sys; print(json.load(sys.stdin)["join_token"])')
  mkdir -p "$DATA_DIR"
  chmod 700 "$DATA_DIR"
  # join readies the host-wide guest kit first (the first time: a kernel download and an
  # initramfs build, a minute or two), so the daemon's first hello is never kept waiting.
  say "joining $NODE to $PLANE_URL (the first time also builds the guest kit: a minute or two)"
  $BIN/gantry-agent join --url "$PLANE_URL" --token "$token" --data-dir "$DATA_DIR" "${KIT_ARGS[@]}" "${SIM_ARGS[@]}" \
    --netns "$NETNS" --bridge "$BRIDGE" --subnet "$(vm_subnet)" --insecure-registry "$REGISTRY_ADDR"
}

cmd_run() {
  need_root
  # The local registry is on loopback: the agent pulls from it only if it is trusted. The pair's
  # /30 is TEST-NET, not blocked by default, and its host end is this machine: VMs keep off it.
  GANTRY_TRUSTED_REGISTRIES=${GANTRY_TRUSTED_REGISTRIES:-$REGISTRY_ADDR} \
    exec $BIN/gantry-agent run --data-dir "$DATA_DIR" "${KIT_ARGS[@]}" "${SIM_ARGS[@]}" --netns "$NETNS" --bridge "$BRIDGE" \
    --subnet "$(vm_subnet)" --insecure-registry "$REGISTRY_ADDR" --block-net "$LINK" "${GATEWAY_ARGS[@]}"
}

cmd_down() {
  need_root
  if [ -e "/run/netns/$NETNS" ] && [ -n "$(ip netns pids "$NETNS")" ]; then
    die "processes still run in $NETNS (VMs?): stop them first (gantry-agent vm ls --data-dir $DATA_DIR --netns $NETNS)"
  fi
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  [ -e "/run/netns/$NETNS" ] && ip netns del "$NETNS"
  say "removed namespace $NETNS, $HOST_IF and table inet $NFT_TABLE (the node and its data dir stay)"
}

case "${1:-}" in
  net) cmd_net ;;
  join) cmd_join ;;
  run) cmd_run ;;
  down) cmd_down ;;
  *) echo "usage: $0 net|join|run|down" >&2; exit 2 ;;
esac
