"""Operators' endpoints: cordon / drain / uncordon and the system status, staff only."""

import pytest
from rest_framework.test import APIClient

from nodes.models import Node
from tests.deployments.factories import deployment_for
from tests.factories import HardwareTypeFactory, UserFactory, issue_token
from tests.nodes.factories import NodeFactory

pytestmark = pytest.mark.django_db


def client_with(user, scopes="nodes:admin"):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user=user, scopes=scopes).token}")
    return client


@pytest.fixture
def operator():
    return client_with(UserFactory(username="ops@example.com", is_staff=True))


def test_cordon_drain_uncordon_go_through_the_node_services(operator):
    node = NodeFactory(hostname="gpu-1")
    response = operator.post(f"/api/v1/nodes/{node.pk}/cordon")
    assert response.status_code == 200 and response.json()["status"] == "cordoned"
    assert operator.post(f"/api/v1/nodes/{node.pk}/drain").json()["status"] == "draining"
    assert Node.objects.get(pk=node.pk).drain_deadline is not None
    assert operator.post(f"/api/v1/nodes/{node.pk}/uncordon").json()["status"] == "online"


def test_a_transition_that_makes_no_sense_is_a_409_and_a_missing_node_a_404(operator):
    node = NodeFactory(hostname="gpu-1", status=Node.Status.OFFLINE)
    response = operator.post(f"/api/v1/nodes/{node.pk}/cordon")
    assert response.status_code == 409 and "offline" in response.json()["detail"]
    assert operator.post("/api/v1/nodes/999999/drain").status_code == 404


def test_a_token_with_the_scope_but_no_staff_account_is_refused(acme):
    customer = client_with(UserFactory(username="eve@example.com"))
    node = NodeFactory()
    response = customer.post(f"/api/v1/nodes/{node.pk}/cordon")
    assert response.status_code == 403
    assert Node.objects.get(pk=node.pk).status == "online"


def test_system_status_counts_nodes_units_and_deployments_real_and_simulated_apart(operator, acme):
    gpu = HardwareTypeFactory()
    NodeFactory(hardware_type=gpu, gpus=8)
    NodeFactory(hardware_type=gpu, gpus=8, simulated=True, status=Node.Status.CORDONED)
    deployment_for(acme, hardware_id=gpu.pk, gpus_per_container=1)
    body = operator.get("/api/v1/system/status").json()
    assert body["nodes"] == {"real": {"online": 1}, "simulated": {"cordoned": 1}}
    assert body["gpus"]["real"] == {"total": 8, "free": 8, "allocated": 0}
    assert body["gpus"]["simulated"]["total"] == 8
    assert body["deployments"] == {"pending": 1}
