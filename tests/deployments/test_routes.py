"""Issue 25, the gateway's route table: built whole from the database, across tenants, with
only the replicas that may take a request now, in a fixed number of queries."""

from __future__ import annotations

import pytest

from cloud.deployments.models import Replica
from cloud.deployments.routes import Backend, RouteTable, route_table
from cloud.deployments.services import deployment_delete, deployment_stop, deployment_update
from tests.deployments.factories import NodeFactory, deployment_for, place_running, report

pytestmark = pytest.mark.django_db


def _route(label):
    return next(route for route in route_table().routes if route.label == label)


def test_a_running_deployment_is_served_by_its_running_replicas(acme, settings):
    settings.GANTRY_ENDPOINT_DOMAIN = "apps.example.com"
    deployment = deployment_for(acme, name="web", traffic_port=8080, replica_count=2, stop_grace_seconds=25)
    node = NodeFactory(hardware_type=deployment.hardware_type, public_address="198.51.100.7")
    first, second = place_running(deployment, node=node)

    table = route_table()
    assert table.domain == "apps.example.com"
    (route,) = table.routes
    assert (route.label, route.host, route.access, route.stop_grace_seconds) == (
        deployment.endpoint_label, f"{deployment.endpoint_label}.apps.example.com", "private", 25)
    assert route.backends == tuple(sorted([Backend(replica=str(first.uid), address="198.51.100.7", port=30000),
                                           Backend(replica=str(second.uid), address="198.51.100.7", port=30001)],
                                          key=lambda b: b.replica))


def test_only_replicas_that_may_take_a_request_are_backends(acme):
    deployment = deployment_for(acme, name="pool", traffic_port=8080, replica_count=4)
    healthy, failing, starting, stopping = place_running(deployment)
    report(failing, "running", host_port=failing.host_port, health="failing")
    Replica.objects.filter(pk=starting.pk).update(state=Replica.State.STARTING)
    Replica.objects.filter(pk=stopping.pk).update(desired=Replica.Desired.STOP)
    assert [b.replica for b in _route(deployment.endpoint_label).backends] == [str(healthy.uid)]

    report(failing, "running", host_port=failing.host_port)  # its check passes again
    assert {b.replica for b in _route(deployment.endpoint_label).backends} == {str(healthy.uid), str(failing.uid)}


def test_a_replica_on_a_node_without_a_public_address_is_no_backend(acme):
    deployment = deployment_for(acme, name="hidden", traffic_port=8080)
    place_running(deployment, node=NodeFactory(hardware_type=deployment.hardware_type, public_address=None))
    assert _route(deployment.endpoint_label).backends == ()


def test_a_stopped_deployment_keeps_its_name_with_no_backend(acme):
    deployment = deployment_for(acme, name="stopping", traffic_port=8080)
    place_running(deployment)
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert _route(deployment.endpoint_label).backends == ()


def test_deleted_deployments_and_those_without_a_traffic_port_have_no_route(acme):
    kept = deployment_for(acme, name="kept", traffic_port=8080)
    deleted = deployment_for(acme, name="deleted", traffic_port=8080)
    deployment_for(acme, name="batch-job")  # no traffic port: nothing to serve
    deployment_delete(tenant=acme, actor=None, deployment_id=deleted.pk)
    assert [route.label for route in route_table().routes] == [kept.endpoint_label]


def test_every_tenants_deployments_are_in_the_one_table(acme, evil):
    ours = deployment_for(acme, name="app", traffic_port=8080)
    theirs = deployment_for(evil, name="app", traffic_port=8080)
    place_running(ours)
    place_running(theirs)
    routes = {route.label: route for route in route_table().routes}
    assert set(routes) == {ours.endpoint_label, theirs.endpoint_label} and ours.endpoint_label != theirs.endpoint_label
    assert {b.replica for b in routes[theirs.endpoint_label].backends} == {str(r.uid) for r in theirs.replicas.all()}


def test_equal_databases_give_equal_tables_and_digests(acme):
    deployment = deployment_for(acme, name="same", traffic_port=8080, replica_count=2)
    place_running(deployment)
    first, second = route_table(), route_table()
    assert first == second and first.digest() == second.digest()
    assert isinstance(first, RouteTable) and len(first.digest()) == 64

    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={"stop_grace_seconds": 60})
    changed = route_table()
    assert changed != first and changed.digest() != first.digest()


def test_the_table_is_plain_data():
    import json

    assert json.loads(json.dumps(route_table().as_dict())) == {"domain": "gantry.localhost", "routes": []}


def test_the_query_count_does_not_grow_with_the_deployments(acme, evil, django_assert_max_num_queries):
    for tenant in (acme, evil):
        for i in range(6):
            place_running(deployment_for(tenant, name=f"app-{i}", traffic_port=8080, replica_count=2))
    with django_assert_max_num_queries(3):
        table = route_table()
    assert len(table.routes) == 12 and all(len(route.backends) == 2 for route in table.routes)
