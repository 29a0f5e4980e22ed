"""Tenants on one node cannot touch each other (issue 15), with real microVMs under TCG.

Two VMs, A and B, run a hostile image: a root shell on their published port 8080 (busybox
`nc -e sh`, the test's way in) and an unpublished web server on 9090. The test drives A's shell
from the "internet" and has it attack B, the node, the metadata address and the control plane's
network, and spoof B's IP and MAC. Every attack must fail, while A's published port answers from
outside and from B, A's egress goes out through NAT, and its DNS works.

Each attack test guards one rule or kernel flag and proves it: it removes exactly that rule,
shows the attack then succeeds, puts the rule back the way the agent does (its own idempotent
passes), and shows the attack fails. A test that passed without its rule would fail there.

Everything happens in namespaces this module makes:

    outside ns (the internet) 192.0.2.2 ═veth═ node ns uplink0 192.0.2.1 ── gantry0 198.51.100.1 ── TAPs ── A, B
      lo: 169.254.169.254 (metadata stand-in), 203.0.113.10 (control plane), 203.0.113.53 (DNS)

The node's default route leads to the outside namespace, which routes nowhere else; the
link-local metadata address exists only on that namespace's loopback, so no packet of these
tests can leave them. TEST-NET addresses otherwise (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes.agent.net.nft import HOST_OWNER, vm_owner
from nodes.agent.net.rules import blocked_set, host_rules, port_rules
from nodes.agent.network import LinuxNetwork, NetworkConfig, tap_name, vm_mac
from tests.agent.conftest_images import LOCAL_REGISTRY, layer, push_image
from tests.agent.conftest_vmm import KIT_CACHE
from tests.agent.netns import Netns, configure, create_netns, ip, link_veth

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NODE_IP, OUTSIDE_IP = "192.0.2.1", "192.0.2.2"
METADATA_IP, PLANE_IP, DNS_IP = "169.254.169.254", "203.0.113.10", "203.0.113.53"
PLANE_NET = ipaddress.IPv4Network("203.0.113.0/24")
CONFIG = NetworkConfig(subnet=ipaddress.IPv4Network("198.51.100.0/24"), nameservers=(DNS_IP,),
                       blocked_networks=(PLANE_NET,))
BR = f'"{CONFIG.bridge}"'
ATTACK_S = 4  # how long an attack may try before it counts as failed
# Whether bridged IPv4 goes through the IP hooks (br_netfilter). It is built into this build
# host's kernel; the module tests a node without it (most) and one test turns it on (Docker's).
BRNF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"
MARK = "0x01000000"

START = b"""#!/bin/sh
mkdir -p /www && echo "unpublished-$(hostname)" > /www/index.html
httpd -p 9090 -h /www
exec nc -ll -p 8080 -e /bin/sh
"""
APPLETS = ("sh", "nc", "httpd", "wget", "ip", "arp", "arping", "nslookup", "timeout", "echo", "cat", "mkdir",
           "hostname", "ping", "sleep", "printf")

# Answers every A query with 192.0.2.99 (other types: no data) and logs each name, one per line.
DNS_SERVER = r"""
import socket, sys
log = open(sys.argv[1], "a", buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 53))  # bound to the one address: a reply must come from where the query went
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode(errors="replace")); i += 1 + data[i]
    log.write(".".join(labels) + "\n")
    is_a = data[i + 1:i + 3] == b"\x00\x01"
    answer = data[:2] + b"\x81\x80\x00\x01" + (b"\x00\x01" if is_a else b"\x00\x00") + b"\x00\x00\x00\x00"
    answer += data[12:i + 5]
    if is_a:
        answer += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 99])
    s.sendto(answer, peer)
"""

# Sends a script to a VM's shell port, prints what the shell wrote back.
SHELL_CLIENT = r"""
import socket, sys
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
script = sys.stdin.buffer.read()
with socket.create_connection((host, port), timeout=10) as c:
    c.settimeout(wait)
    c.sendall(script)
    c.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := c.recv(65536):
        out += chunk
sys.stdout.buffer.write(out)
"""


@dataclasses.dataclass
class Vm:
    name: str
    address: str
    host_port: int
    mac: str
    tap: str


@dataclasses.dataclass
class Island:
    node: Netns
    outside: Netns
    a: Vm
    b: Vm
    network: LinuxNetwork
    dns_log: Path

    def shell(self, vm: Vm, script: str, *, wait: float = 60) -> str:
        """Run `script` in `vm`'s root shell, reached from outside through its published port."""
        argv = self.outside.argv(sys.executable, "-c", SHELL_CLIENT, NODE_IP, str(vm.host_port), str(wait))
        done = subprocess.run(argv,
                              input=f"exec 2>&1\n{script}\n".encode(), capture_output=True, timeout=wait + 30)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode(errors="replace")

    def restore(self) -> None:
        """What the agent does on its next pass over these VMs: every rule and flag back."""
        async def converge() -> None:
            await self.network.ensure_host()
            for vm in (self.a, self.b):
                await self.network.ensure_tap(vm.name)
                await self.network.publish_port(vm.name, 8080)
        asyncio.run(converge())

    def drop_rule(self, family: str, owner: str, body: str) -> None:
        """Delete our one rule whose text is `body` (found by the comment the agent gave it)."""
        if family == "bridge":
            vm = self.a if owner == vm_owner(self.a.name) else self.b
            candidates = port_rules(tap=vm.tap, mac=vm.mac, address=ipaddress.IPv4Address(vm.address))
        else:
            candidates = host_rules(bridge=CONFIG.bridge, subnet=CONFIG.subnet, gateway=CONFIG.gateway, uplink=None,
                                    nameservers=CONFIG.nameservers, blocked=blocked_set(CONFIG.blocked_networks))
        [rule] = [r for r in candidates if r.body == body]
        listing = json.loads(self.node.run("nft", "-j", "list", "table", family, "gantry"))["nftables"]
        [handle] = [item["rule"]["handle"] for item in listing
                    if "rule" in item and item["rule"].get("comment") == rule.comment(owner)]
        self.node.run("nft", "delete", "rule", family, "gantry", rule.chain, "handle", str(handle))

    def hostname_at(self, vm: Vm, host: str, port: int) -> str:
        """From `vm`'s shell, ask whatever shell answers at host:port for its hostname."""
        # nc keeps the connection until the far shell ends; `exit` ends it.
        return self.shell(vm, f"printf 'hostname; exit\\n' | timeout {ATTACK_S} nc {host} {port}").strip()

    def br_netfilter(self, on: bool) -> None:
        self.node.run("sh", "-c", f"echo {int(on)} > {BRNF_SYSCTL}")


def _cli(data: Path, netns: str, *args: str) -> dict:
    argv = [sys.executable, "-m", "nodes.agent", *args, "--data-dir", str(data), "--kit-cache", str(KIT_CACHE),
            "--netns", netns, "--subnet", str(CONFIG.subnet), "--nameserver", DNS_IP, "--block-net", str(PLANE_NET),
            "--trusted-registry", LOCAL_REGISTRY]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout} {done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])


def _attacker_layer() -> bytes:
    entries = [("bin", "dir", None, 0o755), ("bin/busybox", "file", Path("/bin/busybox").read_bytes(), 0o755),
               *((f"bin/{name}", "symlink", "busybox", 0o777) for name in APPLETS),
               ("etc", "dir", None, 0o755), ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
               ("tmp", "dir", None, 0o1777), ("start.sh", "file", START, 0o755)]
    return layer(*entries)


@pytest.fixture(scope="module")
def island(local_registry, vmm_kit, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tmp = tmp_path_factory.mktemp("island")
    image = f"{LOCAL_REGISTRY}/gantry-test/attacker:1"
    asyncio.run(push_image(LOCAL_REGISTRY, "gantry-test/attacker", "1", [_attacker_layer()],
                           config={"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "/start.sh"],
                                   "ExposedPorts": {"8080/tcp": {}}}))
    node, outside = create_netns("giso"), create_netns("giso")
    try:
        if os.path.exists(BRNF_SYSCTL):
            node.run("sh", "-c", f"echo 0 > {BRNF_SYSCTL}")
        link_veth(node, "uplink0", outside, "eth0")
        configure(node, "uplink0", f"{NODE_IP}/24", gateway=OUTSIDE_IP)
        configure(outside, "eth0", f"{OUTSIDE_IP}/24")
        for address in (METADATA_IP, PLANE_IP, DNS_IP):
            ip("-n", outside.name, "addr", "add", f"{address}/32", "dev", "lo")
        # Someone on the node's uplink network who routes to the VM subnet directly.
        ip("-n", outside.name, "route", "add", str(CONFIG.subnet), "via", NODE_IP)
        site = tmp / "site"
        site.mkdir()
        (site / "marker").write_text("outside-http")
        outside.serve_http(80, site)
        outside.serve_whoami(9000)
        dns_log = tmp / "dns.log"
        dns_log.touch()
        outside.spawn(sys.executable, "-c", DNS_SERVER, str(dns_log), DNS_IP, ready_line="ready")
        node.serve_whoami(9100)  # a service of the node's own, on every address
        node.serve_whoami(22)  # ... and its SSH

        data = tmp / "data"
        vms = []
        for name in ("vm-a", "vm-b"):
            info = _cli(data, node.name, "vm", "run", name, "--image", image, "--port", "8080")
            assert info["state"] == "running", info
            vms.append(Vm(name, info["address"], info["host_port"], vm_mac(name), tap_name(name)))
        yield Island(node, outside, *vms, LinuxNetwork(CONFIG, data / "network", netns=node.name), dns_log)
    finally:
        outside.close()
        node.close()


@pytest.fixture(autouse=True)
def _converged(island):
    """Whatever a test removed, the next one starts from the agent's own rules."""
    yield
    island.restore()


# -- what must work -------------------------------------------------------------------------------

def test_a_published_port_answers_from_outside_and_from_another_vm(island):
    assert island.shell(island.a, "hostname").strip() == "vm-a"
    # B calls A's published port at the node's address: "from anywhere" includes other VMs.
    assert island.hostname_at(island.b, NODE_IP, island.a.host_port) == "vm-a"


def test_egress_goes_out_through_nat(island):
    assert island.shell(island.a, f"timeout {ATTACK_S} nc {OUTSIDE_IP} 9000").strip() == NODE_IP
    assert "outside-http" in island.shell(island.a, f"timeout {ATTACK_S} wget -q -O - http://{OUTSIDE_IP}/marker")


def test_dns_works_and_only_dns_reaches_the_nameserver(island):
    """The resolver sits in a blocked network (as a cloud's 10.x or 169.254.x resolver does):
    port 53 there is let through, its other ports are not."""
    out = island.shell(island.a, "cat /etc/resolv.conf; nslookup service.example.test")
    assert f"nameserver {DNS_IP}" in out and "192.0.2.99" in out
    assert "service.example.test" in island.dns_log.read_text()
    assert "outside-http" not in island.shell(island.a, f"timeout {ATTACK_S} wget -q -O - http://{DNS_IP}/marker")


# -- attacks, each with the one rule that stops it ---------------------------------------------------

def _reaches_b(island, port: int) -> bool:
    if port == 8080:
        return island.hostname_at(island.a, island.b.address, 8080) == "vm-b"
    out = island.shell(island.a, f"timeout {ATTACK_S} wget -q -O - http://{island.b.address}:{port}/")
    return "unpublished-vm-b" in out


def _port(vm: Vm) -> str:
    return f'iifname "{vm.tap}"'


def _isolation_rule(vm: Vm) -> str:
    return f"{_port(vm)} meta mark & {MARK} != {MARK} drop"


@pytest.mark.parametrize("port", [8080, 9090], ids=["published", "unpublished"])
def test_a_cannot_reach_b_by_its_vm_address(island, port):
    # Guards: bridge forward `iifname <TAP> meta mark & HAIRPIN != HAIRPIN drop` (nothing a
    # TAP sends, ARP included, reaches another port of the bridge). Every TAP has it, and either
    # end's alone stops a conversation: the control removes A's and B's.
    island.drop_rule("bridge", vm_owner(island.a.name), _isolation_rule(island.a))
    island.drop_rule("bridge", vm_owner(island.b.name), _isolation_rule(island.b))
    assert _reaches_b(island, port)
    island.restore()
    assert not _reaches_b(island, port)


def test_with_br_netfilter_vms_stay_apart_and_published_ports_still_cross(island):
    """br_netfilter (any Docker host) DNATs B's call to A's published port inside the bridge and
    forwards it port to port: the mark from the IPv4 filter lets exactly that through."""
    island.br_netfilter(True)
    try:
        assert island.hostname_at(island.b, NODE_IP, island.a.host_port) == "vm-a"
        assert not _reaches_b(island, 9090)
    finally:
        island.br_netfilter(False)


def test_a_cannot_route_to_b_through_the_gateway(island):
    """A sends B's traffic to the gateway instead; B (cooperating, as a VM configured /32 would)
    answers the same way, so only the node's forward filter stands between them."""
    # Guards: forward `iifname gantry0 oifname gantry0 drop`.
    gateway = CONFIG.gateway
    island.shell(island.a, f"ip route add {island.b.address}/32 via {gateway}")
    island.shell(island.b, f"ip route add {island.a.address}/32 via {gateway}")
    try:
        island.drop_rule("ip", HOST_OWNER, f"iifname {BR} oifname {BR} drop")
        assert _reaches_b(island, 9090)
        island.restore()
        assert not _reaches_b(island, 9090)
    finally:
        island.shell(island.a, f"ip route del {island.b.address}/32")
        island.shell(island.b, f"ip route del {island.a.address}/32")


@pytest.mark.parametrize(("target", "port"),
                         [(NODE_IP, 9100), (str(CONFIG.gateway), 9100), (str(CONFIG.gateway), 22)],
                         ids=["node-address", "gateway-service", "gateway-ssh"])
def test_a_cannot_reach_the_nodes_addresses_and_services(island, target, port):
    # Guards: input `iifname gantry0 drop` (after replies and DNS).
    def attack() -> bool:
        return island.shell(island.a, f"timeout {ATTACK_S} nc {target} {port}").strip() == island.a.address

    island.drop_rule("ip", HOST_OWNER, f"iifname {BR} drop")
    assert attack()
    island.restore()
    assert not attack()


def test_a_cannot_reach_the_nodes_loopback(island):
    """route_localnet on the bridge (for published ports on 127.0.0.1) must not hand the node's
    loopback to a guest that routes 127.0.0.2 to its gateway. Two rules hold, each alone: the
    guard chain and the input drop; removing both opens it."""
    script = (f"ip route del local 127.0.0.0/8 dev lo table local; ip route add 127.0.0.2/32 via {CONFIG.gateway}; "
              f"echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; timeout {ATTACK_S} nc 127.0.0.2 9100; "
              "ip route del 127.0.0.2/32; ip route add local 127.0.0.0/8 dev lo table local")

    island.node.run("nft", "flush", "chain", "ip", "gantry", "guard")
    island.drop_rule("ip", HOST_OWNER, f"iifname {BR} drop")
    assert island.a.address in island.shell(island.a, script)
    island.restore()
    island.node.run("nft", "flush", "chain", "ip", "gantry", "guard")
    assert island.a.address not in island.shell(island.a, script)  # the input drop alone
    island.restore()
    island.drop_rule("ip", HOST_OWNER, f"iifname {BR} drop")
    assert island.a.address not in island.shell(island.a, script)  # the guard alone


def _blocked_rule() -> str:
    return f"iifname {BR} ip daddr {{ {', '.join(map(str, blocked_set(CONFIG.blocked_networks)))} }} drop"


@pytest.mark.parametrize("target", [METADATA_IP, PLANE_IP], ids=["metadata", "control-plane-network"])
def test_a_cannot_reach_metadata_or_the_control_planes_network(island, target):
    # Guards: forward `iifname gantry0 ip daddr { <special ranges>, <--block-net> } drop`.
    def attack() -> bool:
        return "outside-http" in island.shell(island.a, f"timeout {ATTACK_S} wget -q -O - http://{target}/marker")

    island.drop_rule("ip", HOST_OWNER, _blocked_rule())
    assert attack()
    island.restore()
    assert not attack()


def test_outside_reaches_a_only_through_its_published_port(island):
    """Someone on the uplink network who routes the VM subnet to the node reaches neither A's
    unpublished port nor its guest port directly."""
    # Guards: forward `iifname != gantry0 oifname gantry0 drop` (after replies and DNATed flows).
    def attack() -> bool:
        return "unpublished-vm-a" in island.outside.fetch("http", island.a.address, 9090, check=False)

    island.drop_rule("ip", HOST_OWNER, f"iifname != {BR} oifname {BR} drop")
    assert attack()
    island.restore()
    assert not attack()


def _spoof_marker(island, setup: str, undo: str, marker: str) -> bool:
    """A sends one DNS query named `marker` from a spoofed identity, output held back until it
    is itself again; True when the query reached the server. A query A then sends as itself is
    answered only once the server (one socket, read in order) has logged everything before it."""
    island.shell(island.a, f"( {setup}; timeout 3 nslookup {marker} {DNS_IP}; {undo} ) >/tmp/out 2>&1; cat /tmp/out; "
                           f"nslookup after-{marker} {DNS_IP}")
    log = island.dns_log.read_text()
    assert f"after-{marker}" in log, "A's own query after the spoofed one never reached the server"
    return marker in log.replace(f"after-{marker}", "")


def test_a_cannot_send_with_bs_ip(island):
    # Guards: bridge `iifname <A's TAP> ip saddr != <A's address> drop`.
    b = island.b.address
    setup = f"ip addr add {b}/32 dev eth0; ip route replace default via {CONFIG.gateway} src {b}"
    undo = f"ip route replace default via {CONFIG.gateway}; ip addr del {b}/32 dev eth0"
    island.drop_rule("bridge", vm_owner(island.a.name), f'{_port(island.a)} ip saddr != {island.a.address} drop')
    assert _spoof_marker(island, setup, undo, "spoofed-ip-open.test")
    island.restore()
    assert not _spoof_marker(island, setup, undo, "spoofed-ip-closed.test")


def test_a_cannot_send_with_bs_mac(island):
    # Guards: bridge `iifname <A's TAP> ether saddr != <A's MAC> drop` (which also keeps the
    # bridge from learning B's MAC on A's port).
    # A new MAC empties the guest's neighbour table, and an ARP request would carry B's MAC
    # too (another rule's business): A knows the gateway's MAC (a fixed one) and pins it.
    gateway_mac = vm_mac(f"bridge:{CONFIG.bridge}")
    setup = f"ip link set eth0 address {island.b.mac}; arp -s {CONFIG.gateway} {gateway_mac}"
    undo = f"ip link set eth0 address {island.a.mac}"
    island.drop_rule("bridge", vm_owner(island.a.name), f'{_port(island.a)} ether saddr != {island.a.mac} drop')
    try:
        assert _spoof_marker(island, setup, undo, "spoofed-mac-open.test")
    finally:
        # Without the rule the bridge learnt B's MAC on A's port: forget it, or B is cut off.
        island.node.run("bridge", "fdb", "del", island.b.mac, "dev", island.a.tap, "master", check=False)
    island.restore()
    assert not _spoof_marker(island, setup, undo, "spoofed-mac-closed.test")
    assert "vm-b" in island.shell(island.b, "hostname")  # B is still reachable


def test_a_cannot_answer_arp_for_bs_address(island):
    """A claims B's address by gratuitous ARP: the node's neighbour entry for B must keep B's MAC."""
    # Guards: bridge `iifname <A's TAP> arp saddr ip != <A's address> drop`.
    b = island.b.address

    def node_thinks_b_is_at() -> str:
        # The node knows B (as after any packet to it): an entry ARP may update.
        island.node.run("ip", "neigh", "replace", b, "lladdr", island.b.mac, "dev", CONFIG.bridge, "nud", "stale")
        time.sleep(1.2)  # past the neighbour table's locktime
        island.shell(island.a, f"ip addr add {b}/32 dev eth0; arping -U -c 2 -I eth0 -s {b} {b}; "
                               f"ip addr del {b}/32 dev eth0")
        entries = json.loads(island.node.run("ip", "-j", "neigh", "show", b, "dev", CONFIG.bridge))
        island.node.run("ip", "neigh", "flush", b, "dev", CONFIG.bridge, check=False)
        return entries[0].get("lladdr", "") if entries else ""

    island.drop_rule("bridge", vm_owner(island.a.name), f'{_port(island.a)} arp saddr ip != {island.a.address} drop')
    assert node_thinks_b_is_at() == island.a.mac
    island.restore()
    assert node_thinks_b_is_at() == island.b.mac
