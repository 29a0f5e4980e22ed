"""Joining: create_node prints one JSON line with a one-time token; the join endpoint trades it
for a credential (stored hashed); wrong, reused and expired tokens are refused; revocation."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from nodes import services
from nodes.models import CpuSlot, JoinToken, Node
from tests.factories import HardwareTypeFactory, LocationFactory

pytestmark = pytest.mark.django_db

INVENTORY = {"hostname": "box", "agent_version": "0.1.0", "cpus": 4, "memory_mib": 8192, "disk_gib": 100,
             "accelerator": "tcg", "simulated": False, "gpus": []}


@pytest.fixture
def cpu_small():
    return HardwareTypeFactory(slug="cpu-small", cpu_only=True, gpus_per_node=4, allowed_gpu_counts=[0])


@pytest.fixture
def us_east():
    return LocationFactory(slug="us-east")


def create_node(*args) -> dict:
    out = StringIO()
    call_command("create_node", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1  # one JSON object on one line, for scripts
    return json.loads(lines[0])


def join(anonymous, token, inventory=INVENTORY):
    return anonymous.post("/api/v1/nodes/join", {"token": token, "inventory": inventory}, format="json")


def test_create_node_prints_one_json_line_and_keeps_only_a_hash(cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", str(us_east.pk),
                       "--public-address", "127.0.0.1")
    node = Node.objects.get(pk=made["node_id"])
    assert (node.status, node.public_address, node.hardware_type, node.location) == ("joining", "127.0.0.1", cpu_small, us_east)
    assert made["join_token"].startswith("gjoin_")
    assert not JoinToken.objects.filter(token_hash=made["join_token"]).exists()  # hashed, not stored
    assert JoinToken.objects.get(node=node).expires_at <= timezone.now() + timedelta(hours=1)


def test_several_nodes_may_share_a_public_address(cpu_small, us_east):
    create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east", "--public-address", "127.0.0.1")
    create_node("node-b", "--hardware-type", "cpu-small", "--location", "us-east", "--public-address", "127.0.0.1")
    assert Node.objects.filter(public_address="127.0.0.1").count() == 2


@pytest.mark.parametrize("args,message", [
    (["--hardware-type", "nope", "--location", "us-east"], "No hardware type 'nope'"),
    (["--hardware-type", "cpu-small", "--location", "mars"], "No location 'mars'"),
    (["--hardware-type", "cpu-small", "--location", "us-east", "--public-address", "not-an-ip"], "not an IP address"),
])
def test_create_node_refuses_bad_input_with_a_clear_line(cpu_small, us_east, args, message):
    with pytest.raises(CommandError, match=message):
        create_node("node-a", *args)


def test_join_trades_the_token_for_a_credential_and_records_the_inventory(anonymous, cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    response = join(anonymous, made["join_token"], {**INVENTORY, "simulated": True})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["node_id"] == made["node_id"] and body["credential"].startswith(f"gnode_{made['node_id']}_")
    node = Node.objects.get(pk=made["node_id"])
    assert body["credential"] not in node.credential_hash
    assert (node.cpus, node.memory_mib, node.accelerator, node.simulated) == (4, 8192, "tcg", True)
    assert CpuSlot.objects.filter(node=node).count() == 4  # one row per slot of cpu-small
    assert services.node_authenticate(body["credential"]) == node
    assert services.node_authenticate(body["credential"] + "x") is None


def test_a_token_joins_once(anonymous, cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    assert join(anonymous, made["join_token"]).status_code == 201
    again = join(anonymous, made["join_token"])
    assert again.status_code == 401 and "already used" in again.json()["detail"]


def test_wrong_and_expired_tokens_are_refused(anonymous, cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    wrong = join(anonymous, "gjoin_wrong")
    assert wrong.status_code == 401 and "not recognised" in wrong.json()["detail"]
    JoinToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = join(anonymous, made["join_token"])
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert Node.objects.get(pk=made["node_id"]).credential_hash == ""


def test_a_malformed_inventory_is_a_400_naming_the_field(anonymous, cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    response = join(anonymous, made["join_token"], {**INVENTORY, "cpus": "four"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "inventory"
    assert not JoinToken.objects.filter(used_at__isnull=False).exists()  # the token is still good


def test_revoking_a_credential_locks_the_agent_out(anonymous, cpu_small, us_east):
    made = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    credential = join(anonymous, made["join_token"]).json()["credential"]
    services.node_revoke_credential(node_id=made["node_id"])
    assert services.node_authenticate(credential) is None


def test_reissue_gives_a_fresh_token_and_voids_the_old_one(anonymous, cpu_small, us_east):
    first = create_node("node-a", "--hardware-type", "cpu-small", "--location", "us-east")
    second = create_node("node-a", "--reissue")
    assert join(anonymous, first["join_token"]).status_code == 401
    assert join(anonymous, second["join_token"]).status_code == 201
