"""The fleet and catalog admin pages render for an operator and never show a credential."""

import pytest

from nodes import services
from nodes.models import Node
from tests.factories import UserFactory
from tests.nodes.factories import NodeFactory
from tests.templates.factories import TemplateFactory


@pytest.fixture
def operator_client(client, db):
    operator = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(operator)
    return client


@pytest.fixture
def node(db):
    node = NodeFactory(hostname="gpu-1.example.net", gpus=2, simulated=True)
    Node.objects.filter(pk=node.pk).update(credential_hash="pbkdf2_sha256$1$salt$SECRETHASHVALUE")
    return node


@pytest.mark.parametrize("url", [
    "/admin/nodes/location/", "/admin/nodes/hardwaretype/", "/admin/nodes/node/", "/admin/nodes/gpu/",
    "/admin/nodes/nodeevent/", "/admin/nodes/nodeevent/?kind__exact=inventory_refused&q=gpu-1",
    "/admin/catalog/template/",
    "/admin/nodes/node/?status__exact=online&simulated__exact=1", "/admin/nodes/node/?q=gpu-1",
    "/admin/nodes/gpu/?allocation=free", "/admin/catalog/template/?visibility=global&q=olla",
])
def test_changelists_render(operator_client, node, url):
    TemplateFactory(slug="ollama")
    assert operator_client.get(url).status_code == 200


def test_the_node_page_shows_gpus_but_never_the_credential_hash(operator_client, node):
    response = operator_client.get(f"/admin/nodes/node/{node.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "SECRETHASHVALUE" not in page
    assert "issued" in page
    assert "0000:18:00.0" in page  # the GPU inline


def test_the_node_list_marks_simulated_nodes(operator_client, node):
    assert "gpu-1.example.net (simulated)" in operator_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()


def test_a_gpu_cannot_be_added_by_hand(operator_client, db):
    assert operator_client.get("/admin/nodes/gpu/add/").status_code == 403


def test_customers_cannot_reach_the_admin(client, alice):
    client.force_login(alice)
    assert client.get("/admin/nodes/node/").status_code == 302


def test_the_node_page_shows_its_refused_reports(operator_client, node):
    """Issue 23: a hello naming another node's GPU is refused; the operator reads why here."""
    services.node_event_record(node_id=node.pk, kind="inventory_refused",
                               message="inventory refused, nothing applied: GPU(s) registered to another node: GPU-1")
    page = operator_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert "GPU(s) registered to another node: GPU-1" in page
    listed = operator_client.get("/admin/nodes/nodeevent/").content.decode()
    assert "gpu-1.example.net" in listed and "inventory refused" in listed


def _change(operator_client, node, **fields):
    """POSTs the node's change page; the inlines are read-only, so they send no rows."""
    data = {"new_public_address": "", **fields}
    for prefix in ("gpus", "slots", "events"):
        data |= {f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"}
    return operator_client.post(f"/admin/nodes/node/{node.pk}/change/", data)


def test_the_public_address_changes_through_its_service(operator_client, node, monkeypatch):
    """Issue 24: the admin form writes no node field itself; the service checks and normalises."""
    calls = []
    real = services.node_set_public_address
    monkeypatch.setattr(services, "node_set_public_address", lambda **kw: calls.append(kw) or real(**kw))
    response = _change(operator_client, node, new_public_address=" 2001:0db8:0000::0001 ")
    assert response.status_code == 302, response.content.decode()[:2000]
    assert calls == [{"node_id": node.pk, "public_address": "2001:db8::1"}]
    node.refresh_from_db()
    assert node.public_address == "2001:db8::1"

    _change(operator_client, node)  # emptied: no address
    node.refresh_from_db()
    assert node.public_address is None


def test_an_address_that_is_not_an_ip_is_refused_and_nothing_changes(operator_client, node):
    Node.objects.filter(pk=node.pk).update(public_address="198.51.100.7")
    response = _change(operator_client, node, new_public_address="gpu-1.example.net", hostname="renamed")
    assert response.status_code == 200
    assert "is not an IP address" in response.content.decode()
    node.refresh_from_db()
    assert (node.public_address, node.hostname) == ("198.51.100.7", "gpu-1.example.net")


def test_the_service_refuses_what_is_not_an_ip(node):
    from cloud.exceptions import InvalidInput

    with pytest.raises(InvalidInput):
        services.node_set_public_address(node_id=node.pk, public_address="not-an-ip")
    assert services.node_set_public_address(node_id=node.pk, public_address="192.0.2.9").public_address == "192.0.2.9"
