"""Issue 25, several ports (Volant's `expose`): the list a create or PATCH takes, the endpoints it
makes (an https name per HTTP port, a gateway port per TCP port), the gateway ports' allocation
(stable, freed, never shared, a 409 when none is left), allow_public_tcp, what goes to the node
and what comes back from it. The route table's side is in test_routes.py."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cloud.deployments.models import Deployment, Event, GatewayPort
from cloud.deployments.services import deployment_delete, deployment_restart, deployment_stop, deployment_update
from cloud.deployments.services.agents import AgentSink
from cloud.exceptions import Conflict
from cloud.settings import env_host, env_port_range
from tests.conftest import client_for
from tests.deployments.conftest import URL
from tests.deployments.factories import NodeFactory, deployment_for, place_running, report

pytestmark = pytest.mark.django_db

WEB = {"name": "web", "port": 8081, "protocol": "http"}
SSH = {"name": "ssh", "port": 22, "protocol": "tcp"}


@pytest.fixture
def pushes(monkeypatch):
    """The route pushes asked for (routes_changed), counted where they are asked."""
    asked = []
    for module in ("create", "change", "agents"):
        monkeypatch.setattr(f"cloud.deployments.services.{module}.routes_changed", lambda: asked.append(1))
    return asked


def shown(response) -> dict:
    assert response.status_code in (200, 201), response.content
    return response.json()["deployment"]


def held(deployment) -> dict[str, int]:
    return dict(GatewayPort.objects.filter(deployment=deployment).values_list("name", "port"))


def fields_of(response) -> list[str]:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    return [error["field"] for error in response.json()["errors"]]


# -- create ----------------------------------------------------------------------------------------


def test_each_port_gets_an_endpoint_with_its_own_name_or_gateway_port(as_alice, body, settings):
    settings.GANTRY_GATEWAY_HTTPS_PORT, settings.GANTRY_GATEWAY_TCP_HOST = 8443, "tcp.example.net"
    made = shown(as_alice.post(URL, body(traffic_port=8080, endpoint_access="public", expose=[WEB, SSH]),
                               format="json"))
    label = made["endpoint_label"]
    assert made["expose"] == [WEB, SSH] and made["allow_public_tcp"] is False
    assert made["endpoints"] == [
        {"type": "https", "name": "http", "url": f"https://{label}.gantry.localhost:8443", "port": 8443,
         "internal_port": 8080, "access": "public", "ready": False},
        {"type": "https", "name": "web", "url": f"https://{label}-web.gantry.localhost:8443", "port": 8443,
         "internal_port": 8081, "access": "public", "ready": False},
        {"type": "tcp", "name": "ssh", "url": "tcp://tcp.example.net:20000", "port": 20000, "internal_port": 22,
         "access": "public", "ready": False},
    ]
    assert held(Deployment.objects.get(pk=made["id"])) == {"ssh": 20000}


def test_a_deployment_without_a_traffic_port_lists_its_extra_ports_only(as_alice, body):
    made = shown(as_alice.post(URL, body(expose=[WEB]), format="json"))
    assert [(e["name"], e["type"], e["access"]) for e in made["endpoints"]] == [("web", "https", "private")]


def test_a_private_deployment_gets_a_tcp_port_only_with_allow_public_tcp(as_alice, body):
    response = as_alice.post(URL, body(traffic_port=8080, expose=[WEB, SSH]), format="json")
    assert fields_of(response) == ["allow_public_tcp"]
    assert "endpoint key" in response.json()["errors"][0]["message"]
    assert not Deployment.objects.exists() and not GatewayPort.objects.exists()

    made = shown(as_alice.post(URL, body(traffic_port=8080, expose=[WEB, SSH], allow_public_tcp=True), format="json"))
    assert {e["name"]: e["access"] for e in made["endpoints"]} == {"http": "private", "web": "private", "ssh": "public"}
    assert made["allow_public_tcp"] is True


@pytest.mark.parametrize(("expose", "field"), [
    ("web:8081", "expose"),
    ({"web": 8081}, "expose"),
    ([{"name": f"p{i}", "port": 9000 + i, "protocol": "http"} for i in range(9)], "expose"),
    (["web"], "expose.0"),
    ([{**WEB, "name": "http"}], "expose.0.name"),
    ([{**WEB, "name": "Web"}], "expose.0.name"),
    ([{**WEB, "name": "-web"}], "expose.0.name"),
    ([{**WEB, "name": "web-"}], "expose.0.name"),
    ([{**WEB, "name": "a" * 16}], "expose.0.name"),
    ([{**WEB, "name": ""}], "expose.0.name"),
    ([{**WEB, "name": "wé"}], "expose.0.name"),
    ([{**WEB, "name": 7}], "expose.0.name"),
    ([{**WEB, "port": 0}], "expose.0.port"),
    ([{**WEB, "port": 65536}], "expose.0.port"),
    ([{**WEB, "port": "8081"}], "expose.0.port"),
    ([{**WEB, "port": True}], "expose.0.port"),
    ([{**WEB, "port": 8081.5}], "expose.0.port"),
    ([{**WEB, "protocol": "udp"}], "expose.0.protocol"),
    ([{**WEB, "protocol": "HTTP"}], "expose.0.protocol"),
    ([{"name": "web", "port": 8081}], "expose.0.protocol"),
    ([{**WEB, "host": "evil.example.com"}], "expose.0.host"),
    ([WEB, {**SSH, "name": "web"}], "expose.1.name"),
    ([WEB, {**SSH, "port": 8081}], "expose.1.port"),
    ([{**WEB, "port": 8080}], "expose.0.port"),  # the traffic port
])
def test_a_bad_list_is_a_400_naming_where(as_alice, body, expose, field):
    response = as_alice.post(URL, body(traffic_port=8080, endpoint_access="public", expose=expose), format="json")
    assert fields_of(response) == [field]
    assert not Deployment.objects.exists()


def test_the_templates_traffic_port_cannot_be_exposed_again(as_alice, body, ollama):
    response = as_alice.post(URL, body(image_url=None, template_id="ollama", expose=[{**WEB, "port": 11434}]),
                             format="json")
    assert fields_of(response) == ["expose.0.port"] and "traffic_port" in response.json()["errors"][0]["message"]


def test_a_name_too_long_for_the_deployments_label_is_a_400_saying_how_long_it_may_be(as_alice, body):
    # A 54-character name makes a 61-character label (name, '-', six random characters).
    response = as_alice.post(URL, body(name="n" * 54, expose=[{**WEB, "name": "ab"}]), format="json")
    assert fields_of(response) == ["expose.0.name"]
    message = response.json()["errors"][0]["message"]
    assert "63 characters" in message and "leaves 1 characters" in message
    made = shown(as_alice.post(URL, body(name="n" * 54, expose=[{**WEB, "name": "a"}]), format="json"))
    label = made["endpoint_label"]
    assert len(label) == 61 and made["endpoints"][0]["url"] == f"https://{label}-a.gantry.localhost"


# -- gateway ports: allocated, stable, freed --------------------------------------------------------


def test_gateway_ports_are_the_lowest_free_stable_through_restarts_and_other_patches(acme):
    first = deployment_for(acme, name="first", endpoint_access="public", expose=[SSH, {**SSH, "name": "db", "port": 5432}])
    second = deployment_for(acme, name="second", endpoint_access="public", expose=[SSH])
    assert (held(first), held(second)) == ({"ssh": 20000, "db": 20001}, {"ssh": 20002})

    deployment_update(tenant=acme, actor=None, deployment_id=first.pk, changes={
        "replica_count": 2, "request_timeout_s": 30, "expose": [WEB, {**SSH, "port": 2222}, {**SSH, "name": "db", "port": 5432}]})
    deployment_stop(tenant=acme, actor=None, deployment_id=first.pk)
    assert held(first) == {"ssh": 20000, "db": 20001}  # a name keeps its port, whatever its guest port


def test_a_dropped_or_renamed_tcp_port_frees_its_gateway_port_for_the_next(acme):
    first = deployment_for(acme, name="first", endpoint_access="public", expose=[SSH, {**SSH, "name": "db", "port": 5432}])
    deployment_update(tenant=acme, actor=None, deployment_id=first.pk, changes={"expose": [{**SSH, "name": "db", "port": 5432}]})
    assert held(first) == {"db": 20001}
    second = deployment_for(acme, name="second", endpoint_access="public", expose=[SSH])
    assert held(second) == {"ssh": 20000}
    deployment_update(tenant=acme, actor=None, deployment_id=first.pk,
                      changes={"expose": [{**SSH, "name": "pg", "port": 5432}]})
    assert held(first) == {"pg": 20001}  # the rename freed 20001 and took it again, the lowest free


def test_delete_frees_every_gateway_port(acme):
    gone = deployment_for(acme, name="gone", endpoint_access="public", expose=[SSH])
    place_running(gone)
    deployment_restart(tenant=acme, actor=None, deployment_id=gone.pk)
    assert held(gone) == {"ssh": 20000}
    deployment_delete(tenant=acme, actor=None, deployment_id=gone.pk)
    assert not GatewayPort.objects.exists()
    assert held(deployment_for(acme, name="next", endpoint_access="public", expose=[SSH])) == {"ssh": 20000}


def test_no_free_gateway_port_is_a_409_that_says_so_and_writes_nothing(as_alice, acme, body, settings):
    settings.GANTRY_GATEWAY_TCP_PORTS = (20000, 20001)
    deployment_for(acme, name="first", endpoint_access="public", expose=[SSH])
    second = deployment_for(acme, name="second", endpoint_access="public", expose=[WEB])

    response = as_alice.post(URL, body(name="third", endpoint_access="public",
                                       expose=[SSH, {**SSH, "name": "db", "port": 5432}]), format="json")
    assert response.status_code == 409, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert "No gateway TCP port is free" in response.json()["detail"] and "20000-20001" in response.json()["detail"]
    assert not Deployment.objects.filter(name="third").exists() and GatewayPort.objects.count() == 1

    response = as_alice.patch(f"{URL}/{second.pk}", {"expose": [SSH, {**SSH, "name": "db", "port": 5432}]},
                              format="json")
    assert response.status_code == 409
    second.refresh_from_db()
    assert second.expose == [WEB] and held(second) == {}
    with pytest.raises(Conflict):
        deployment_update(tenant=acme, actor=None, deployment_id=second.pk,
                          changes={"expose": [SSH, {**SSH, "name": "db", "port": 5432}]})
    assert shown(as_alice.patch(f"{URL}/{second.pk}", {"expose": [SSH]}, format="json"))["endpoints"][0]["port"] == 20001


@pytest.mark.django_db(transaction=True)
def test_concurrent_patches_never_share_a_gateway_port(alice, acme, settings):
    """Each PATCH locks only its own deployment: without the allocation lock two of them would
    pick the same free port (and one would fail on the constraint, a 500)."""
    import threading

    from django.db import connection

    settings.GANTRY_GATEWAY_TCP_PORTS = (20000, 20002)
    deployments = [deployment_for(acme, name=f"d{i}", endpoint_access="public") for i in range(4)]
    barrier = threading.Barrier(len(deployments))
    codes = []

    def patch(deployment):
        client = client_for(alice, tenant="acme")
        barrier.wait()
        try:
            codes.append(client.patch(f"{URL}/{deployment.pk}", {"expose": [SSH]}, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=patch, args=(d,)) for d in deployments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200, 200, 200, 409]
    assert sorted(GatewayPort.objects.values_list("port", flat=True)) == [20000, 20001, 20002]


# -- PATCH -----------------------------------------------------------------------------------------


def test_patch_replaces_the_list_records_it_and_asks_for_a_push(as_alice, acme, pushes):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public")
    pushes.clear()
    made = shown(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [WEB, SSH]}, format="json"))
    assert [e["name"] for e in made["endpoints"]] == ["http", "web", "ssh"] and pushes == [1]
    event = Event.objects.filter(deployment=deployment, type="deployment.updated").latest("id")
    assert event.payload["fields"] == ["expose"]

    shown(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [WEB, SSH]}, format="json"))
    assert pushes == [1]  # the same list: nothing to push
    made = shown(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": []}, format="json"))
    assert [e["name"] for e in made["endpoints"]] == ["http"] and pushes == [1, 1] and held(deployment) == {}


def test_a_patch_cannot_leave_a_private_deployment_with_a_tcp_port_it_did_not_allow(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public", expose=[SSH])
    response = as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "private"}, format="json")
    assert fields_of(response) == ["allow_public_tcp"]
    shown(as_alice.patch(f"{URL}/{deployment.pk}", {"endpoint_access": "private", "allow_public_tcp": True},
                         format="json"))
    assert fields_of(as_alice.patch(f"{URL}/{deployment.pk}", {"allow_public_tcp": False}, format="json")) == [
        "allow_public_tcp"]
    deployment.refresh_from_db()
    assert (deployment.endpoint_access, deployment.allow_public_tcp, held(deployment)) == ("private", True, {"ssh": 20000})
    made = shown(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [WEB], "allow_public_tcp": False}, format="json"))
    assert [e["name"] for e in made["endpoints"]] == ["http", "web"] and held(deployment) == {}


def test_patch_checks_the_list_against_the_deployment(as_alice, acme):
    deployment = deployment_for(acme, name="n" * 50, traffic_port=8080, endpoint_access="public")
    assert fields_of(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [{**WEB, "port": 8080}]},
                                    format="json")) == ["expose.0.port"]
    assert fields_of(as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [{**WEB, "name": "abcdefg"}]},
                                    format="json")) == ["expose.0.name"]
    deployment.refresh_from_db()
    assert deployment.expose == []


def test_another_tenants_deployment_cannot_be_given_ports(as_mallory, acme):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public")
    response = as_mallory.patch(f"{URL}/{deployment.pk}", {"expose": [SSH]}, format="json")
    assert response.status_code == 404
    deployment.refresh_from_db()
    assert deployment.expose == [] and not GatewayPort.objects.exists()


# -- the node: what it is told, what it says -------------------------------------------------------


def test_the_node_is_told_every_extra_port_and_the_plane_keeps_where_each_is(acme, pushes):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public", expose=[WEB, SSH])
    (replica,) = place_running(deployment)
    (desired,) = AgentSink().desired(node_id=replica.node_id)
    assert (desired.spec.traffic_port, desired.spec.ports) == (8080, [8081, 22])

    pushes.clear()
    report(replica, "running", host_port=30000, host_ports={"8080": 30000, "8081": 30001, "22": 30002})
    replica.refresh_from_db()
    assert replica.host_ports == {"22": 30002, "8080": 30000, "8081": 30001} and pushes == [1]
    report(replica, "running", host_port=30000, host_ports={"8080": 30000, "8081": 30001, "22": 30002})
    assert pushes == [1]  # nothing the route table sees changed


def test_only_the_deployments_own_ports_on_real_host_ports_are_kept_from_a_report(acme):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public", expose=[WEB, SSH])
    (replica,) = place_running(deployment)
    report(replica, "running", host_port=30000, host_ports={
        "8080": 30000, "8081": 0, "22": 65536, "0": 30001, "65536": 30002, "080": 30003, "٣": 30004, "x": 30005,
        "9" * 5000: 30006, " 22": 30007, **{str(9000 + i): 31000 + i for i in range(50)}})
    replica.refresh_from_db()
    assert replica.host_ports == {"8080": 30000}


def test_each_endpoint_is_ready_once_a_serving_replica_publishes_its_port(as_alice, acme):
    deployment = deployment_for(acme, traffic_port=8080, endpoint_access="public", expose=[WEB, SSH])
    node = NodeFactory(hardware_type=deployment.hardware_type)
    (replica,) = place_running(deployment, node=node)
    # Started before the PATCH that added ssh: its node published the others only.
    report(replica, "running", host_port=30000, host_ports={"8080": 30000, "8081": 30001})

    def ready() -> dict:
        return {e["name"]: e["ready"] for e in shown(as_alice.get(f"{URL}/{deployment.pk}"))["endpoints"]}

    assert ready() == {"http": True, "web": True, "ssh": False}
    listed = {e["name"]: e["ready"] for e in as_alice.get(URL).json()["deployments"][0]["endpoints"]}
    assert listed == ready()
    report(replica, "running", host_port=30000, host_ports={"8080": 30000, "8081": 30001, "22": 30002},
           health="failing")
    assert ready() == {"http": False, "web": False, "ssh": False}


def test_listing_costs_the_same_queries_however_many_ports(as_alice, acme, django_assert_max_num_queries):
    for i in range(4):
        deployment = deployment_for(acme, name=f"d{i}", traffic_port=8080, endpoint_access="public",
                                    expose=[WEB, {**SSH, "port": 2200 + i}])
        place_running(deployment)
    as_alice.get(URL)
    with django_assert_max_num_queries(5):  # token, membership, count, page ids, page rows
        listed = as_alice.get(URL)
    assert [len(d["endpoints"]) for d in listed.json()["deployments"]] == [3, 3, 3, 3]


def test_the_admin_shows_the_ports_and_the_gateway_ports_they_hold(admin_client, acme):
    deployment = deployment_for(acme, name="shown", endpoint_access="public", expose=[SSH])
    page = admin_client.get(f"/admin/deployments/deployment/{deployment.pk}/change/")
    assert page.status_code == 200
    assert "20000" in page.content.decode() and "ssh" in page.content.decode()


# -- hostile bodies ----------------------------------------------------------------------------------

_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.text(max_size=20)
                         | st.floats(allow_nan=False, allow_infinity=False),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                         max_leaves=10)
_ENTRY = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["web", "ssh", "http", "a", "a-b", "web-", "x" * 15, "x" * 16]),
                      st.text(max_size=20), _ANY_JSON),
    "port": st.one_of(st.integers(min_value=-1, max_value=70000), st.sampled_from([8080, 22, 8081]), _ANY_JSON),
    "protocol": st.one_of(st.sampled_from(["http", "tcp"]), _ANY_JSON),
    "extra": _ANY_JSON,
})
_EXPOSE = st.one_of(st.lists(st.one_of(_ENTRY, _ANY_JSON), max_size=10), _ANY_JSON)


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expose=_EXPOSE, allow=st.one_of(st.booleans(), _ANY_JSON), access=st.sampled_from(["private", "public"]))
def test_any_expose_in_a_create_body_is_201_or_a_400_never_a_500(as_alice, body, acme, expose, allow, access):
    response = as_alice.post(URL, {**body(traffic_port=8080), "endpoint_access": access, "expose": expose,
                                   "allow_public_tcp": allow}, format="json")
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert response.json()["errors"], response.content
        return
    made = response.json()["deployment"]
    assert len(made["endpoints"]) == 1 + len(made["expose"])
    deployment_delete(tenant=acme, actor=None, deployment_id=made["id"])  # quota, funds and ports stay free


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expose=_EXPOSE, allow=st.one_of(st.booleans(), _ANY_JSON))
def test_any_expose_in_a_patch_body_is_200_or_a_400_never_a_500(as_alice, acme, expose, allow):
    deployment = Deployment.objects.filter(tenant=acme, name="patched").first() or deployment_for(
        acme, name="patched", traffic_port=8080)
    response = as_alice.patch(f"{URL}/{deployment.pk}", {"expose": expose, "allow_public_tcp": allow}, format="json")
    assert response.status_code in (200, 400), response.content
    deployment.refresh_from_db()
    wanted = {e["name"] for e in deployment.expose if e["protocol"] == "tcp"}
    assert set(held(deployment)) == wanted


# -- settings ----------------------------------------------------------------------------------------


def test_the_tcp_port_range_and_host_settings_are_checked(monkeypatch):
    monkeypatch.delenv("GANTRY_GATEWAY_TCP_PORTS", raising=False)
    assert env_port_range("GANTRY_GATEWAY_TCP_PORTS", "20000-20999") == (20000, 20999)
    for good, expected in (("30000-30000", (30000, 30000)), (" 1 - 65535 ", (1, 65535))):
        monkeypatch.setenv("GANTRY_GATEWAY_TCP_PORTS", good)
        assert env_port_range("GANTRY_GATEWAY_TCP_PORTS", "20000-20999") == expected
    for bad in ("20999-20000", "0-10", "1-65536", "20000", "a-b", "-5-10", "20000-20999-3"):
        monkeypatch.setenv("GANTRY_GATEWAY_TCP_PORTS", bad)
        with pytest.raises(ImproperlyConfigured, match="GANTRY_GATEWAY_TCP_PORTS"):
            env_port_range("GANTRY_GATEWAY_TCP_PORTS", "20000-20999")

    for value, expected in (("", "127.0.0.1"), ("GW.Example.com.", "gw.example.com"), ("2001:db8::1", "[2001:db8::1]"),
                            ("[2001:db8::2]", "[2001:db8::2]"), ("198.51.100.7", "198.51.100.7")):
        monkeypatch.setenv("GANTRY_GATEWAY_TCP_HOST", value)
        assert env_host("GANTRY_GATEWAY_TCP_HOST", "127.0.0.1") == expected
    for bad in ("gw.example.com:20000", "tcp://gw", "a b", "-gw.example.com"):
        monkeypatch.setenv("GANTRY_GATEWAY_TCP_HOST", bad)
        with pytest.raises(ImproperlyConfigured, match="GANTRY_GATEWAY_TCP_HOST"):
            env_host("GANTRY_GATEWAY_TCP_HOST", "127.0.0.1")
