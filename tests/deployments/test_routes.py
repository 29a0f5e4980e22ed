"""Issue 25, the gateway's route table: built whole from the database, across tenants, with
only the replicas that may take a request now, each route's access and live key hashes, why it
has no backend, and its limits, in a fixed number of queries."""

from __future__ import annotations

import hashlib
import json

import pytest

from cloud.deployments.models import Deployment, Replica
from cloud.deployments.routes import Backend, RouteTable, TcpRoute, route_table
from cloud.deployments.services import (
    deployment_delete,
    deployment_start,
    deployment_stop,
    deployment_update,
    endpoint_key_create,
    endpoint_key_revoke,
    schedule_pending,
)
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
    assert (route.unavailable, route.timeout_s, route.max_body_bytes, route.key_hashes) == ("", 600, 2**30, ())
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
    assert json.loads(json.dumps(route_table().as_dict())) == {"domain": "gantry.localhost", "routes": []}


def test_the_query_count_does_not_grow_with_the_deployments_or_keys(acme, evil, django_assert_num_queries):
    for tenant in (acme, evil):
        for i in range(6):
            deployment = deployment_for(tenant, name=f"app-{i}", traffic_port=8080, replica_count=2)
            place_running(deployment)
            for k in range(i):
                endpoint_key_create(tenant=tenant, actor=None, deployment_id=deployment.pk, name=f"key-{k}")
    deployment_for(acme, name="waiting", traffic_port=8080)
    with django_assert_num_queries(3):
        table = route_table()
    assert len(table.routes) == 13 and sum(len(route.backends) == 2 for route in table.routes) == 12
    assert sorted(len(route.key_hashes) for route in table.routes) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_the_query_count_does_not_grow_with_the_ports_either(acme, django_assert_num_queries):
    for i in range(5):
        deployment = deployment_for(acme, name=f"multi-{i}", traffic_port=8080, endpoint_access="public", replica_count=2,
                                    expose=[WEB, {**SSH, "port": 2200 + i}, {**SSH, "name": "db", "port": 5432}])
        for replica in place_running(deployment):
            report(replica, "running", host_port=replica.host_port,
                   host_ports=_published(replica, 8080, 8081, 2200 + i, 5432))
    with django_assert_num_queries(3):
        table = route_table()
    assert (len(table.routes), len(table.tcp_routes)) == (10, 10)
    assert all(len(route.backends) == 2 for route in (*table.routes, *table.tcp_routes))


# -- access, keys, limits ---------------------------------------------------------------------------


def test_access_timeout_and_body_limit_come_from_the_deployment(acme):
    deployment = deployment_for(acme, name="open", traffic_port=8080, endpoint_access="public",
                                request_timeout_s=86400, max_request_body_mb=1048576)
    route = _route(deployment.endpoint_label)
    assert (route.access, route.timeout_s, route.max_body_bytes) == ("public", 86400, 2**40)

    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={
        "endpoint_access": "private", "request_timeout_s": 1, "max_request_body_mb": 1})
    route = _route(deployment.endpoint_label)
    assert (route.access, route.timeout_s, route.max_body_bytes) == ("private", 1, 2**20)


def test_a_route_carries_the_sorted_hashes_of_its_live_keys_only(acme):
    deployment = deployment_for(acme, name="keyed", traffic_port=8080)
    other = deployment_for(acme, name="other", traffic_port=8080)
    made = [endpoint_key_create(tenant=acme, actor=None, deployment_id=deployment.pk, name=f"k{i}") for i in range(4)]
    endpoint_key_create(tenant=acme, actor=None, deployment_id=other.pk, name="theirs")
    endpoint_key_revoke(tenant=acme, actor=None, deployment_id=deployment.pk, key_id=made[1].key.pk)

    hashes = _route(deployment.endpoint_label).key_hashes
    expected = sorted(hashlib.sha256(m.secret.encode()).hexdigest() for i, m in enumerate(made) if i != 1)
    assert list(hashes) == expected
    assert all(len(h) == 64 and h == h.lower() for h in hashes)
    assert len(_route(other.endpoint_label).key_hashes) == 1


# -- why a route has no backend ---------------------------------------------------------------------


def test_a_new_deployment_is_starting(acme):
    deployment = deployment_for(acme, name="new", traffic_port=8080)
    assert _route(deployment.endpoint_label).unavailable == "starting"


def test_a_deployment_waiting_for_room_says_no_capacity(acme):
    deployment = deployment_for(acme, name="big", traffic_port=8080)  # no node of its hardware type exists
    schedule_pending()
    replica = deployment.replicas.get()
    assert replica.reason.startswith("no capacity")
    assert _route(deployment.endpoint_label).unavailable == "no capacity"


def test_a_deployment_pinned_to_a_full_node_says_no_capacity(acme):
    node = NodeFactory(status="cordoned")
    deployment = deployment_for(acme, name="pinned", traffic_port=8080, node_id=node.pk)
    schedule_pending()
    assert deployment.replicas.get().reason.startswith("pinned to node")
    assert _route(deployment.endpoint_label).unavailable == "no capacity"


def test_a_stopping_or_stopped_deployment_says_stopped_and_a_started_one_starting(acme):
    deployment = deployment_for(acme, name="halt", traffic_port=8080)
    (replica,) = place_running(deployment)
    assert _route(deployment.endpoint_label).unavailable == ""
    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == "stopping"
    assert _route(deployment.endpoint_label).unavailable == "stopped"
    report(replica, "stopped")
    deployment.refresh_from_db()
    assert deployment.status == "stopped" and _route(deployment.endpoint_label).unavailable == "stopped"
    deployment_start(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert _route(deployment.endpoint_label).unavailable == "starting"


def test_a_running_deployment_whose_replicas_all_fail_their_check_has_no_backend(acme):
    deployment = deployment_for(acme, name="sick", traffic_port=8080)
    (replica,) = place_running(deployment)
    report(replica, "running", host_port=replica.host_port, health="failing", reason="GET / failed 3 times")
    route = _route(deployment.endpoint_label)
    assert route.backends == () and route.unavailable == "starting"


# -- several ports (expose) -------------------------------------------------------------------------

WEB = {"name": "web", "port": 8081, "protocol": "http"}
SSH = {"name": "ssh", "port": 22, "protocol": "tcp"}


def _published(replica, *guest_ports) -> dict[str, int]:
    """What a node reports of a replica publishing these ports: host ports 40000 + ordinal * 10 + i."""
    return {str(port): 40000 + replica.ordinal * 10 + i for i, port in enumerate(guest_ports)}


def test_each_extra_http_port_is_a_route_of_its_own_served_by_the_replicas_that_publish_it(acme):
    deployment = deployment_for(acme, name="multi", traffic_port=8080, replica_count=2, request_timeout_s=30,
                                expose=[WEB, {**WEB, "name": "admin", "port": 9000}])
    endpoint_key_create(tenant=acme, actor=None, deployment_id=deployment.pk, name="k")
    node = NodeFactory(hardware_type=deployment.hardware_type, public_address="198.51.100.9")
    new, old = place_running(deployment, node=node)
    report(new, "running", host_port=new.host_port, host_ports=_published(new, 8080, 8081, 9000))
    # Started before the PATCH that added the ports: its node published the traffic port alone.
    report(old, "running", host_port=old.host_port, host_ports=_published(old, 8080))

    label = deployment.endpoint_label
    routes = {route.label: route for route in route_table().routes}
    assert set(routes) == {label, f"{label}-web", f"{label}-admin"}
    main, web, admin = routes[label], routes[f"{label}-web"], routes[f"{label}-admin"]
    assert (web.host, admin.host) == (f"{label}-web.gantry.localhost", f"{label}-admin.gantry.localhost")
    for route in (web, admin):  # the deployment's settings and keys, its own backends
        assert (route.access, route.key_hashes, route.timeout_s, route.unavailable) == (
            main.access, main.key_hashes, 30, "")
    assert {b.replica for b in main.backends} == {str(new.uid), str(old.uid)}
    assert web.backends == (Backend(replica=str(new.uid), address="198.51.100.9", port=40001),)
    assert admin.backends == (Backend(replica=str(new.uid), address="198.51.100.9", port=40002),)

    report(new, "running", host_port=new.host_port, host_ports=_published(new, 8080, 8081, 9000), health="failing")
    assert _route(f"{label}-web").backends == () and _route(f"{label}-web").unavailable == "starting"


def test_tcp_ports_are_tcp_routes_on_their_gateway_ports_sorted_by_port(acme):
    first = deployment_for(acme, name="first", endpoint_access="public", stop_grace_seconds=40,
                           expose=[SSH, {**SSH, "name": "db", "port": 5432}])
    second = deployment_for(acme, name="second", traffic_port=8080, allow_public_tcp=True, request_timeout_s=90,
                            expose=[{**SSH, "port": 2222}])
    deployment_update(tenant=acme, actor=None, deployment_id=first.pk, changes={"expose": [
        {**SSH, "name": "db", "port": 5432}, SSH]})  # reordered: the ports stay
    node = NodeFactory(hardware_type=first.hardware_type, public_address="198.51.100.10")
    (replica,) = place_running(first, node=node)
    report(replica, "running", host_port=None, host_ports=_published(replica, 22, 5432))

    table = route_table()
    assert [route.label for route in table.routes] == [second.endpoint_label]  # no traffic port, no https name
    assert table.tcp_routes == (
        TcpRoute(name=f"{first.endpoint_label}-ssh", listen_port=20000, timeout_s=600, stop_grace_seconds=40,
                 backends=(Backend(replica=str(replica.uid), address="198.51.100.10", port=40000),)),
        TcpRoute(name=f"{first.endpoint_label}-db", listen_port=20001, timeout_s=600, stop_grace_seconds=40,
                 backends=(Backend(replica=str(replica.uid), address="198.51.100.10", port=40001),)),
        TcpRoute(name=f"{second.endpoint_label}-ssh", listen_port=20002, timeout_s=90, stop_grace_seconds=10,
                 backends=()),
    )
    shown = json.loads(json.dumps(table.as_dict()))["tcp_routes"]  # as it is pushed
    assert shown[0] == {"name": f"{first.endpoint_label}-ssh", "listen_port": 20000, "timeout_s": 600,
                        "stop_grace_seconds": 40,
                        "backends": [{"replica": str(replica.uid), "address": "198.51.100.10", "port": 40000}]}


def test_tcp_routes_are_left_out_of_the_table_until_there_is_one(acme):
    deployment = deployment_for(acme, name="web", traffic_port=8080, endpoint_access="public", expose=[WEB])
    before = route_table()
    assert set(before.as_dict()) == {"domain", "routes"}  # what a gateway that predates TCP ports takes
    deployment_update(tenant=acme, actor=None, deployment_id=deployment.pk, changes={"expose": [WEB, SSH]})
    assert len(route_table().as_dict()["tcp_routes"]) == 1
    deployment_delete(tenant=acme, actor=None, deployment_id=deployment.pk)
    assert route_table().as_dict() == {"domain": "gantry.localhost", "routes": ()}


def test_a_label_is_never_sent_twice_and_a_deployments_own_name_wins(acme):
    shop = deployment_for(acme, name="shop", traffic_port=8080, endpoint_access="public", expose=[WEB])
    other = deployment_for(acme, name="other", traffic_port=8080, endpoint_access="public")
    # The 30-bit coincidence, forced: another deployment's label spells shop's web port's.
    Deployment.objects.filter(pk=other.pk).update(endpoint_label=f"{shop.endpoint_label}-web")
    other.refresh_from_db()
    place_running(other)
    routes = route_table().routes
    assert [route.label for route in routes] == [shop.endpoint_label, f"{shop.endpoint_label}-web"]
    assert {b.replica for b in routes[1].backends} == {str(r.uid) for r in other.replicas.all()}
