"""A deployment really runs: the customer's API call becomes a microVM on a node, its endpoint
answers, it stops when asked; and what happens to it when its agent dies, its node goes
silent and comes back, or its node is drained."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from tests.e2e.conftest import LIVENESS_S, REPO, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


class Api:
    def __init__(self, plane, headers):
        self.http = httpx.Client(base_url=f"{plane.url}/api/v1", headers=headers, timeout=30)

    def deploy(self, **extra) -> str:
        from nodes.models import HardwareType

        body = {"name": extra.pop("name", "hi"), "template_id": "hello", "gpus_per_container": 0,
                "hardware_id": HardwareType.objects.get(slug="cpu-small").pk, "replica_count": 1, **extra}
        response = self.http.post("/deployments", json=body)
        assert response.status_code == 201, response.text
        return response.json()["deployment"]["id"]

    def get(self, deployment_id: str) -> dict:
        return self.http.get(f"/deployments/{deployment_id}").json()["deployment"]

    def replicas(self, deployment_id: str, **params) -> list[dict]:
        return self.http.get(f"/deployments/{deployment_id}/replicas", params=params).json()["replicas"]

    def wait_status(self, deployment_id: str, status: str, timeout: float = 240) -> dict:
        return wait_for(lambda: (d := self.get(deployment_id))["status"] == status and d,
                        timeout=timeout, what=f"deployment {status}")


def answer(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError as exc:
        return f"<{type(exc).__name__}>"


def direct_endpoint(api: Api, deployment_id: str) -> str:
    """The running replica's own address on its node (`replicas[].endpoint`): these tests run no
    gateway, so they call the workload there, as the deployment's https name would reach it."""
    (url,) = [r["endpoint"] for r in api.replicas(deployment_id, live="true") if r["endpoint"]]
    return url


def test_deploy_hello_runs_its_endpoint_answers_and_it_stops(plane, make_node, customer):
    from nodes.models import CpuSlot, Node

    node = make_node("local-cpu-1")
    wait_for(lambda: Node.objects.get(pk=node.node_id).status == "online", timeout=120, what="node online")
    api = Api(plane, customer)
    deployment_id = api.deploy()
    api.wait_status(deployment_id, "running")
    url = direct_endpoint(api, deployment_id)
    assert url.startswith(f"http://{node.public_address}:")
    assert "Hello from Gantry" in wait_for(lambda: "Hello" in (a := answer(url)) and a, timeout=30, what="endpoint")
    (replica,) = api.replicas(deployment_id)
    assert (replica["state"], replica["generation"], replica["node"]["hostname"]) == ("running", 1, "local-cpu-1")
    assert replica["started_at"] and not replica["stopped_at"]
    # Billed from its VM's start (issue 23), not from `running`; open while it runs.
    assert replica["booted_at"] and replica["booted_at"] <= replica["started_at"]
    assert replica["billed_from"] and replica["billed_to"] is None
    assert CpuSlot.objects.filter(node_id=node.node_id, replica__isnull=False).count() == 1
    # The operator's read-only view beside the running daemon: the VM, named after the replica.
    listed = node.cli("vm", "ls", "--netns", node.netns.name)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (vm,) = json.loads(listed.stdout)
    assert (vm["name"], vm["state"], vm["host_port"]) == (replica["id"], "running", int(url.rsplit(":", 1)[1]))
    assert "Hello" in answer(url)  # looking changed nothing

    assert api.http.post(f"/deployments/{deployment_id}/stop").status_code == 200
    api.wait_status(deployment_id, "stopped", timeout=60)
    (replica,) = api.replicas(deployment_id)
    assert replica["state"] == "stopped" and replica["stopped_at"]
    assert CpuSlot.objects.filter(node_id=node.node_id, replica__isnull=False).count() == 0
    # Its usage records cover exactly the interval the API says it was billed for. The metering
    # pass runs as the plane runs it, in a process of the plane's (in this one it would bind the
    # channel layer to a loop of its own, which later tests of the session then trip over).
    import subprocess
    import sys
    from datetime import datetime

    from billing.models import UsageRecord

    metered = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                              "from billing.services import usage_close_intervals; usage_close_intervals()"],
                             env=plane.env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert metered.returncode == 0, metered.stderr
    (replica,) = api.replicas(deployment_id)
    spans = list(UsageRecord.objects.filter(replica__uid=replica["id"]).order_by("period_start")
                 .values_list("period_start", "period_end", "seconds"))
    billed = [datetime.fromisoformat(replica[k]) for k in ("billed_from", "billed_to")]
    assert spans and [spans[0][0], spans[-1][1]] == billed, (replica, spans)
    assert sum(s for _, _, s in spans) == (billed[1] - billed[0]).total_seconds()
    wait_for(lambda: "<" in answer(url), timeout=30, what="the endpoint to go away")
    status = httpx.get(f"{plane.url}/api/v1/system/status", headers=customer).status_code
    assert status == 403  # operators only


def test_a_killed_agent_leaves_its_vm_running_and_the_next_one_adopts_it(plane, make_node, customer):
    from cloud.deployments.models import Replica

    node = make_node("local-cpu-1")
    api = Api(plane, customer)
    deployment_id = api.deploy()
    api.wait_status(deployment_id, "running")
    url = direct_endpoint(api, deployment_id)
    (before,) = api.replicas(deployment_id)
    node.kill(signal.SIGKILL)
    assert "Hello" in answer(url)  # the VM does not depend on its agent
    node.start()
    wait_for(lambda: Replica.objects.get(uid=before["id"]).last_report_at is not None
             and "hello" in node.agent_log().lower(), timeout=60, what="the new agent to report")
    wait_for(lambda: api.get(deployment_id)["status"] == "running", timeout=30, what="still running")
    after = api.replicas(deployment_id)
    assert [(r["id"], r["generation"], r["state"], r["started_at"]) for r in after] == [
        (before["id"], 1, "running", before["started_at"])]  # same incarnation, no restart
    assert "Hello" in answer(url)


def test_a_silent_node_is_replaced_and_fenced_when_it_comes_back(plane, make_node, customer):
    from cloud.deployments.models import Replica
    from nodes.models import CpuSlot, Node

    first = make_node("node-a")
    api = Api(plane, customer)
    deployment_id = api.deploy()
    api.wait_status(deployment_id, "running")
    first_url = direct_endpoint(api, deployment_id)
    second = make_node("node-b")
    wait_for(lambda: Node.objects.get(pk=second.node_id).status == "online", timeout=120, what="node-b online")

    first.kill(signal.SIGSTOP)  # a partition: the agent is silent, its VM still runs
    wait_for(lambda: Node.objects.get(pk=first.node_id).status == "offline", timeout=LIVENESS_S + 30,
             what="node-a offline")
    api.wait_status(deployment_id, "running", timeout=240)
    old, new = api.replicas(deployment_id)
    assert (old["state"], old["node"]["hostname"]) == ("lost", "node-a")
    assert (new["state"], new["generation"], new["node"]["hostname"]) == ("running", 2, "node-b")
    assert "Hello" in wait_for(lambda: "Hello" in (a := answer(direct_endpoint(api, deployment_id))) and a, timeout=30,
                                 what="node-b")
    assert CpuSlot.objects.filter(node_id=first.node_id, replica__isnull=False).count() == 1  # not confirmed yet

    first.kill(signal.SIGCONT)  # the partition heals: hello, the desired set fences the old VM
    wait_for(lambda: CpuSlot.objects.filter(node_id=first.node_id, replica__isnull=False).count() == 0,
             timeout=90, what="node-a to stop the lost replica and free its slot")
    wait_for(lambda: "<" in answer(first_url), timeout=30, what="the old VM to be gone")
    assert Replica.objects.get(uid=old["id"]).state == "lost"
    assert Node.objects.get(pk=first.node_id).status == "online"


def test_drain_moves_the_replica_then_stops_the_old_one(plane, make_node, customer):
    from nodes.models import Node

    first = make_node("node-a")
    api = Api(plane, customer)
    deployment_id = api.deploy()
    api.wait_status(deployment_id, "running")
    second = make_node("node-b")
    wait_for(lambda: Node.objects.get(pk=second.node_id).status == "online", timeout=120, what="node-b online")
    from nodes import services

    services.node_drain(node_id=first.node_id)
    wait_for(lambda: Node.objects.get(pk=first.node_id).status == "cordoned", timeout=240, what="drained")
    replicas = api.replicas(deployment_id)
    seen = [(r["generation"], r["state"], r["node"] and r["node"]["hostname"], r["reason"]) for r in replicas]
    old, *successors = sorted(replicas, key=lambda r: r["generation"])
    assert (old["state"], old["node"]["hostname"]) == ("stopped", "node-a"), seen
    # One successor runs on node-b. On a loaded machine a successor can fail to come up in time;
    # then the old one is kept and another successor placed: more incarnations, each ended.
    (live,) = [r for r in successors if r["state"] not in ("stopped", "failed", "lost")] or [None]
    assert live and (live["state"], live["node"]["hostname"]) == ("running", "node-b"), seen
    assert api.get(deployment_id)["status"] == "running"


def test_scale_down_then_up_and_expiry(plane, make_node, customer):
    from datetime import timedelta

    from django.utils import timezone

    from cloud.deployments.models import Deployment

    make_node("node-a")
    api = Api(plane, customer)
    deployment_id = api.deploy(replica_count=2, duration_hours=1)
    api.wait_status(deployment_id, "running")
    assert api.http.patch(f"/deployments/{deployment_id}", json={"replica_count": 1}).status_code == 200
    wait_for(lambda: len(api.replicas(deployment_id, live="true")) == 1, timeout=60, what="scale down")
    assert api.http.patch(f"/deployments/{deployment_id}", json={"replica_count": 2}).status_code == 200
    # `running` already while one of two runs ("1 of 2 replicas running"): wait for both.
    running = wait_for(lambda: (d := api.get(deployment_id))["ready_replicas"] == 2 and d, timeout=240,
                       what="two replicas running")
    assert running["status"] == "running" and running["status_reason"] == ""
    live = api.replicas(deployment_id, live="true")
    assert sorted((r["ordinal"], r["generation"]) for r in live) == [(0, 1), (1, 2)]

    Deployment.objects.filter(pk=deployment_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    api.wait_status(deployment_id, "expired", timeout=60)
    wait_for(lambda: not api.replicas(deployment_id, live="true"), timeout=60, what="replicas stopped on expiry")


def test_join_refuses_a_wrong_or_used_token_and_an_unreachable_plane(plane, make_node):
    node = make_node("node-a", start=False)
    used = node.cli("join", "--url", plane.url, "--token", node.join_token)
    wrong = node.cli("join", "--url", plane.url, "--token", "gjoin_wrong")
    away = node.cli("join", "--url", "http://127.0.0.1:9", "--token", node.join_token)
    for out, words in ((used, "already used"), (wrong, "not recognised"), (away, "127.0.0.1:9")):
        assert out.returncode != 0
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], out.stdout + out.stderr
        assert "Traceback" not in out.stderr
