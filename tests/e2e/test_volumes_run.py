"""Volumes end to end (issue 26): the real plane (daphne, a Celery worker with beat), a real agent
and real TCG microVMs in a namespace the test made, driven only through the customer's API.

One stack for the whole module (booting VMs under TCG costs seconds each): the tests run in order
and share the plane, the node and the tenant. The workload is the hello image with its entrypoint
overridden: a shell that increments a counter file on its volume, prints it, then execs the
image's own server, so each incarnation prints its count once and stays `running` (healthy).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Node, Plane
from tests.e2e.stack import wait_for
from tests.e2e.test_deployments_run import Api

# Not transactional: the module's rows are committed by `stack` (and by the plane's processes),
# outside any test's transaction; the mark is what has pytest-django set up the test database.
pytestmark = [pytest.mark.django_db, pytest.mark.timeout(900)]

# The first writer's hostname (its VM's name: the incarnation's id) is kept beside the count, so a
# per-replica volume shows whose it is, not just how often it was mounted.
COUNTER = ('n=$(cat /data/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/count; '
           '[ -s /data/first ] || hostname > /data/first; sync; echo "count $n first $(cat /data/first)"; '
           'exec /hello.sh serve')
# Reads the counter on a read-only mount and tries to bump it; stays up like COUNTER.
READER = ('n=$(cat /data/count); w="write accepted"; echo 99 > /data/count 2>/dev/null || w="write refused"; '
          '[ "$(cat /data/count)" = "$n" ] && u=unchanged || u=changed; echo "count $n $u, $w"; exec /hello.sh serve')
WORKLOAD = {"entrypoint": ["/bin/sh", "-c", COUNTER, "sh"], "args": []}
# Far from tests/e2e's usual indexes (1, 2, ...): another run's veth pair on this machine keeps its
# addresses (tests/e2e/conftest.py: the node's pair is 198.51.100.64 + 4 * index).
NODE_INDEX = 13


@dataclass
class Stack:
    plane: Plane
    node: Node
    api: Api
    stranger: Api
    location_id: int
    state: dict  # what one test leaves the next (the counter volume, the deployment holding it)


def _customer(slug: str, username: str) -> dict:
    from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

    # A quota above any test machine's free disk: the node's own room is what a test meets first.
    tenant = TenantFactory(slug=slug, max_volume_gib=1_000_000)
    user = UserFactory(username=username)
    MembershipFactory(user=user, tenant=tenant, role="owner")
    token = issue_token(user=user, scopes="deployments:read deployments:write volumes:read volumes:write "
                                          "templates:read")
    return {"Authorization": f"Bearer {token.token}", "X-Tenant": slug}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, django_db_setup, django_db_blocker, local_registry, vmm_kit):  # noqa: F811
    """The plane and one node for the module. The database is the session's test database,
    written outside pytest-django's per-test flush; teardown flushes it, so the modules after
    this one start as clean as after a transactional test."""
    from django.core.management import call_command

    from nodes.models import Location
    from nodes.models import Node as NodeRow

    tmp = tmp_path_factory.mktemp("e2e-volumes")
    with django_db_blocker.unblock():
        call_command("load_catalog", verbosity=0)
        plane = Plane(tmp)
        node = None
        try:
            node = Node(plane, tmp, "vol-node-1", index=NODE_INDEX)
            node.join()
            node.start()
            # Online, and its heartbeat says how much room it has for volumes (placement needs it).
            wait_for(lambda: (row := NodeRow.objects.get(pk=node.node_id)).status == "online"
                     and (row.free_volume_gib or 0) > 1, timeout=120, what="node online with volume room")
            yield Stack(plane=plane, node=node, api=Api(plane, _customer("acme", "alice@example.com")),
                        stranger=Api(plane, _customer("evil", "mallory@example.com")),
                        location_id=Location.objects.get(slug="us-east").pk, state={})
        finally:
            if node is not None:
                print(f"--- agent (tail)\n{node.agent_log()}")
                node.close()
            plane.stop()
            for name in plane.procs:
                print(f"--- {name}.log (tail)\n{plane.log(name)}")
            call_command("flush", interactive=False, verbosity=0)


def counts(api: Api, deployment_id: str, **params) -> list[str]:
    """The workload's `count N first HOST` lines in the deployment's log, oldest first."""
    page = api.http.get(f"/deployments/{deployment_id}/logs", params={"stream": "stdout", "tail": 1000, **params})
    assert page.status_code == 200, page.text
    return [line["message"] for line in page.json()["logs"] if line["message"].startswith("count ")]


def printed(api: Api, deployment_id: str, replica_id: str, timeout: float = 120) -> str:
    """What one incarnation printed: its one count line, once its log has it."""
    (line,) = wait_for(lambda: counts(api, deployment_id, replica=replica_id), timeout=timeout,
                       what=f"replica {replica_id} to print its count")
    return line


def live_running(api: Api, deployment_id: str, *, generation: int | None = None, timeout: float = 240) -> list[dict]:
    """The live replicas, once each runs (and, given `generation`, one of them is that new)."""
    def check():
        live = api.replicas(deployment_id, live="true")
        if not live or any(r["state"] != "running" for r in live):
            return None
        if generation is not None and not any(r["generation"] == generation for r in live):
            return None
        return live
    return wait_for(check, timeout=timeout, what=f"live replicas running (generation {generation})")


def n_of(line: str) -> int:
    return int(line.split()[1])


def deploy(stack: Stack, name: str, volumes: list[dict], **extra) -> str:
    return stack.api.deploy(name=name, volumes=volumes, **WORKLOAD, **extra)


def volume_file(stack: Stack, volume_id: str) -> Path:
    return stack.node.data_dir / "volumes" / volume_id


def test_a_counter_on_a_volume_outlives_every_incarnation(stack):
    from django.utils import timezone

    from cloud.deployments.models import Replica
    from nodes.models import HardwareType
    from nodes.models import Node as NodeRow
    from volumes.models import Volume

    api, node = stack.api, stack.node
    made = api.http.post("/volumes", json={"name": "counter", "size_gib": 1, "location_id": stack.location_id})
    assert made.status_code == 201, made.text
    volume = made.json()["volume"]
    assert (volume["state"], volume["node"]) == ("pending", None)
    volume_id = volume["id"]
    mount = [{"volume_id": volume_id, "mount_path": "/data", "mode": "rw"}]

    first = deploy(stack, "counter-a", mount)
    (replica,) = live_running(api, first)
    assert n_of(printed(api, first, replica["id"])) == 1
    got = api.http.get(f"/volumes/{volume_id}").json()["volume"]
    assert got["state"] == "ready" and got["node"] and [a["name"] for a in got["attached_to"]] == ["counter-a"], got
    assert volume_file(stack, volume_id).is_file()  # the agent made it on the first start
    # Another tenant neither sees it nor can attach it.
    assert stack.stranger.http.get(f"/volumes/{volume_id}").status_code == 404
    stolen = stack.stranger.http.post("/deployments", json={
        "name": "thief", "template_id": "hello", "gpus_per_container": 0, "replica_count": 1,
        "hardware_id": HardwareType.objects.get(slug="cpu-small").pk, "volumes": mount})
    assert stolen.status_code == 400 and "unknown_volume" in stolen.text, stolen.text

    # Stop, then start: a new incarnation (a new VM, a fresh root disk) on the same volume.
    assert api.http.post(f"/deployments/{first}/stop").status_code == 200
    api.wait_status(first, "stopped", timeout=120)
    assert api.http.post(f"/deployments/{first}/start").status_code == 200
    (replica,) = live_running(api, first, generation=2)
    assert n_of(printed(api, first, replica["id"])) == 2

    # Restart: with a read-write volume the ordinal never surges (the old VM is gone first).
    assert api.http.post(f"/deployments/{first}/restart").status_code == 200
    (replica,) = live_running(api, first, generation=3)
    assert n_of(printed(api, first, replica["id"])) == 3

    # The agent dies (SIGKILL) with the VM running; the next agent adopts the VM, same incarnation.
    # That VM printed its count already; a restart then stops the adopted VM (which only the new
    # agent can do) and boots the next incarnation, which finds the count the adopted one wrote:
    # the volume kept its file and attachment across the crash, and nothing reformatted it.
    adopted = replica
    node.kill(signal.SIGKILL)
    killed_at = timezone.now()
    node.start()
    wait_for(lambda: (NodeRow.objects.get(pk=node.node_id).last_heartbeat or killed_at) > killed_at
             and (Replica.objects.get(uid=adopted["id"]).last_report_at or killed_at) > killed_at,
             timeout=60, what="the new agent to report the VM it adopted")
    (still,) = api.replicas(first, live="true")
    assert (still["id"], still["generation"], still["state"], still["started_at"]) == (
        adopted["id"], 3, "running", adopted["started_at"])
    assert api.http.post(f"/deployments/{first}/restart").status_code == 200
    (replica,) = live_running(api, first, generation=4)
    assert n_of(printed(api, first, replica["id"])) == 4
    assert [n_of(x) for x in counts(api, first)] == [1, 2, 3, 4]  # each incarnation once, in order

    # While attached, the volume cannot be deleted.
    refused = api.http.delete(f"/volumes/{volume_id}")
    assert refused.status_code == 409 and "counter-a" in refused.text, refused.text

    # The deployment goes; a new one attaches the same volume and finds what the first left.
    assert api.http.delete(f"/deployments/{first}").status_code in (200, 202, 204)
    second = deploy(stack, "counter-b", mount)
    (replica,) = live_running(api, second)
    assert n_of(printed(api, second, replica["id"])) == 5
    assert Volume.objects.get(pk=volume_id).node_id == node.node_id
    stack.state.update(volume_id=volume_id, deployment=second)


def test_each_ordinal_keeps_its_own_volume_across_scale_down_and_up(stack):
    from volumes.models import Volume

    api = stack.api
    per_replica = deploy(stack, "shards", [{"size_gib": 1, "mount_path": "/data"}], replica_count=2)
    live = live_running(api, per_replica)
    first = {r["ordinal"]: printed(api, per_replica, r["id"]) for r in live}
    # Each ordinal its own fresh volume: both count 1, each first written by its own VM.
    assert {o: n_of(x) for o, x in first.items()} == {0: 1, 1: 1}, first
    writer = {o: x.split()[-1] for o, x in first.items()}  # the hostname: its VM's name, the replica id
    assert all(r["id"].startswith(writer[r["ordinal"]]) for r in live) and writer[0] != writer[1], (writer, live)
    owned = {v.ordinal: v for v in Volume.objects.filter(owner_deployment_id=per_replica)}
    assert sorted(owned) == [0, 1] and all(v.node_id == stack.node.node_id for v in owned.values())
    listed = {v["name"] for v in api.http.get("/volumes").json()["volumes"]}
    assert {v.name for v in owned.values()} <= listed  # listed as the tenant's volumes

    assert api.http.patch(f"/deployments/{per_replica}", json={"replica_count": 1}).status_code == 200
    wait_for(lambda: [r["ordinal"] for r in api.replicas(per_replica, live="true")] == [0], timeout=120,
             what="scale down to ordinal 0")
    assert Volume.objects.get(pk=owned[1].pk).state == "ready"  # kept for the ordinal
    assert api.http.patch(f"/deployments/{per_replica}", json={"replica_count": 2}).status_code == 200
    live = wait_for(lambda: (rs := live_running(api, per_replica)) and len(rs) == 2 and rs, timeout=240,
                    what="two replicas again")
    (back,) = [r for r in live if r["ordinal"] == 1]
    assert back["generation"] == 2
    # Ordinal 1's own counter, first written by ordinal 1's first VM: not ordinal 0's volume.
    assert printed(api, per_replica, back["id"]) == f"count 2 first {writer[1]}"
    assert [x for x in counts(api, per_replica, replica=0)] == [first[0]]  # ordinal 0 ran on, untouched
    stack.state.update(per_replica=per_replica, owned=[str(v.pk) for v in owned.values()])


def test_delete_waits_for_detach_then_the_node_erases_the_file(stack):
    from cloud.deployments.models import Event
    from volumes.models import Volume

    api, volume_id, holder = stack.api, stack.state["volume_id"], stack.state["deployment"]
    assert api.http.delete(f"/volumes/{volume_id}").status_code == 409
    path = volume_file(stack, volume_id)
    assert path.is_file() and path.stat().st_blocks > 0

    assert api.http.delete(f"/deployments/{holder}").status_code in (200, 202, 204)
    # Mounted "ro" through the plane, the guest reads the count and its write is refused.
    reader = stack.api.deploy(name="reader", volumes=[{"volume_id": volume_id, "mount_path": "/data", "mode": "ro"}],
                              entrypoint=["/bin/sh", "-c", READER, "sh"], args=[])
    (replica,) = live_running(api, reader)
    assert printed(api, reader, replica["id"]) == "count 5 unchanged, write refused"
    assert api.http.delete(f"/deployments/{reader}").status_code in (200, 202, 204)
    # Deleting the deployment detaches at once; its VM may still be stopping (a 409 that says so).
    answer = wait_for(lambda: (r := api.http.delete(f"/volumes/{volume_id}")).status_code == 202 and r,
                      timeout=120, what="the volume delete to be accepted")
    assert answer.json()["volume"]["state"] in ("deleting", "deleted")
    wait_for(lambda: Volume.objects.get(pk=volume_id).state == "deleted", timeout=120, what="volume deleted")
    assert not path.exists()  # erased on the node: the plane marks it deleted on the node's word
    assert api.http.get(f"/volumes/{volume_id}").status_code == 404
    # Its whole life, as the tenant's event feed tells it (three deployments held it in turn).
    events = list(Event.objects.filter(payload__volume_id=volume_id).order_by("ts", "id").values_list("type", flat=True))
    assert events == ["volume.created"] + ["volume.attached", "volume.detached"] * 3 + [
        "volume.deleting", "volume.deleted"], events

    # A deployment's per-replica volumes go with it (they were not `keep`).
    owned = stack.state["owned"]
    assert api.http.delete(f"/deployments/{stack.state['per_replica']}").status_code in (200, 202, 204)
    wait_for(lambda: set(Volume.objects.filter(pk__in=owned).values_list("state", flat=True)) == {"deleted"},
             timeout=180, what="per-replica volumes deleted")
    assert not any(volume_file(stack, v).exists() for v in owned)


def test_a_replica_waits_for_room_on_a_node_and_for_its_volumes_node_to_come_back(stack):
    from nodes.models import Node as NodeRow

    api, node = stack.api, stack.node
    # Larger than what the node says it has for volumes: pending with that reason, nothing made.
    free = NodeRow.objects.get(pk=node.node_id).free_volume_gib
    huge = stack.api.deploy(name="huge", volumes=[{"size_gib": int(free) + 10, "mount_path": "/data"}], **WORKLOAD)
    (waiting,) = wait_for(lambda: [r for r in api.replicas(huge) if "free for its new volumes" in r["reason"]],
                          timeout=60, what="the replica to wait for volume room")
    assert waiting["state"] == "pending" and waiting["node"] is None, waiting
    assert api.http.delete(f"/deployments/{huge}").status_code in (200, 202, 204)

    # A volume on a node that goes silent: its replica is lost, and the next incarnation waits
    # for that node (no other node could have its data), then runs there once it is back.
    made = api.http.post("/volumes", json={"name": "pinned", "size_gib": 1, "location_id": stack.location_id})
    volume_id = made.json()["volume"]["id"]
    pinned = deploy(stack, "pinned", [{"volume_id": volume_id, "mount_path": "/data", "mode": "rw"}])
    (first,) = live_running(api, pinned)
    assert n_of(printed(api, pinned, first["id"])) == 1
    node.kill(signal.SIGSTOP)  # a partition: the agent is silent, its VM still runs
    try:
        wait_for(lambda: NodeRow.objects.get(pk=node.node_id).status == "offline", timeout=60, what="node offline")
        waiting = wait_for(lambda: [r for r in api.replicas(pinned, live="true")
                                    if r["state"] == "pending" and "pinned" in r["reason"] and "offline" in r["reason"]],
                           timeout=60, what="the next incarnation to wait for the volume's node")
        assert waiting[0]["node"] is None, waiting
    finally:
        node.kill(signal.SIGCONT)  # the partition heals: the old VM is fenced, the new one placed there
    (second,) = live_running(api, pinned, generation=2)
    assert second["node"]["hostname"] == "vol-node-1"
    assert n_of(printed(api, pinned, second["id"])) == 2  # the same volume, its data intact
    assert api.http.delete(f"/deployments/{pinned}").status_code in (200, 202, 204)
