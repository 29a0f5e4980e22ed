"""Issue 25, restarts without downtime: a restart, a change of env and a node drain replace
replicas while the old ones serve; without spare capacity, ordinal by ordinal. Driven by
simulated agents (tests/deployments/fleet_sim.py) through the real sink, with the route table
checked after every report the agents make."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, Replica
from cloud.deployments.services import deployment_restart, deployment_stop, fleet_sweep, schedule_pending
from nodes import services as node_services
from nodes.models import CpuSlot, Node
from protocol.vocabulary import TERMINAL_STATES
from tests.deployments.conftest import URL
from tests.deployments.factories import deployment_for, online_node, report
from tests.deployments.fleet_sim import Fleet, desired_on, serving, sink
from tests.factories import HardwareTypeFactory

pytestmark = pytest.mark.django_db


def hardware(slots: int):
    return HardwareTypeFactory(slug=f"cpu-{slots}", cpu_only=True, gpus_per_node=slots, allowed_gpu_counts=[0])


def node_of(hw, name: str) -> Node:
    node = online_node(hw, name)
    Node.objects.filter(pk=node.pk).update(public_address="198.51.100.20")
    return node


def web(acme, hw, **spec) -> Deployment:
    return deployment_for(acme, **{"hardware_id": hw.pk, "gpus_per_container": 0, "traffic_port": 8080, **spec})


def restart(deployment) -> Deployment:
    return deployment_restart(tenant=deployment.tenant, actor=None, deployment_id=deployment.pk)


def fresh(deployment) -> Deployment:
    return Deployment.objects.get(pk=deployment.pk)


def live(deployment) -> list[Replica]:
    return list(deployment.replicas.filter(desired="run", replaced_by__isnull=True)
                .exclude(state__in=TERMINAL_STATES).order_by("ordinal"))


def successors_up_before_olds_left(deployment) -> None:
    """With room for successors, an old incarnation is stopped only once its successor is up."""
    for old in deployment.replicas.filter(desired="stop", replaced_by__isnull=False).select_related("replaced_by"):
        assert (old.replaced_by.state, old.replaced_by.health) == ("running", ""), (old, old.replaced_by)


def assert_serving_at_least(deployment, count: int) -> None:
    assert len(serving(deployment)) >= count


def assert_done(deployment, *, generation: int, history=frozenset({"stopped"})) -> None:
    """Every live replica is the new incarnation and serving; everything else has ended and
    holds no unit (nothing leaked)."""
    deployment = fresh(deployment)
    assert (deployment.status, deployment.status_reason, deployment.rolling_restart_at) == ("running", "", None)
    current = live(deployment)
    assert [r.ordinal for r in current] == list(range(deployment.replica_count))
    assert {r.generation for r in current} == {generation}
    assert serving(deployment) == {str(r.uid) for r in current}
    assert set(deployment.replicas.exclude(pk__in=[r.pk for r in current]).values_list("state", flat=True)) <= history
    assert CpuSlot.objects.filter(replica__deployment=deployment).count() == deployment.replica_count


@pytest.mark.parametrize("count", [1, 2, 3])
def test_with_spare_capacity_a_restart_never_serves_fewer_replicas(acme, count):
    hw = hardware(slots=2 * count)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=count)
    fleet = Fleet([node])
    fleet.settle()
    assert len(serving(deployment)) == count

    statuses = []

    def check():
        assert len(serving(deployment)) >= count
        successors_up_before_olds_left(deployment)
        d = fresh(deployment)
        statuses.append((d.status, d.status_reason.split(";")[0]))

    fleet.after_each = check
    restart(deployment)
    assert fresh(deployment).status_reason.startswith(f"rolling restart: 0 of {count} replaced")
    fleet.settle()
    assert_done(deployment, generation=2)
    # Starting while it rolls, saying how far it got; running once every replica is new.
    assert ("starting", f"rolling restart: {count - 1} of {count} replaced") in statuses
    assert statuses[-1] == ("running", "")
    assert Event.objects.filter(deployment=deployment, type="replica.draining").count() == count


@pytest.mark.parametrize("count", [2, 3])
def test_without_spare_capacity_a_restart_goes_ordinal_by_ordinal(acme, count):
    hw = hardware(slots=count)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=count)
    fleet = Fleet([node])
    fleet.settle()
    olds = live(deployment)

    def check():
        # One ordinal down at a time: all but one serve at every step (so with two, one).
        assert len(serving(deployment)) >= count - 1

    fleet.after_each = check
    restart(deployment)
    fleet.schedule()  # no room: the first old incarnation drains to make some
    drained = deployment.replicas.filter(pk__in=[r.pk for r in olds], desired="stop")
    assert drained.count() == 1 and drained.get().drain_until is not None
    assert "rolling restart without spare capacity" in drained.get().reason
    fleet.settle()
    assert_done(deployment, generation=2)


def test_a_single_replica_without_room_stops_then_starts_as_before(acme):
    hw = hardware(slots=1)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw)
    fleet = Fleet([node])
    fleet.settle()
    restart(deployment)
    fleet.settle()
    assert_done(deployment, generation=2)


def test_a_successor_failing_its_health_check_keeps_the_old_one_serving(acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([node], healthy=lambda replica: replica.generation == 1)
    fleet.settle()
    olds = {str(r.uid) for r in live(deployment)}
    restart(deployment)
    fleet.settle()
    assert serving(deployment) == olds  # the new ones run but fail their check: no request for them
    deployment = fresh(deployment)
    assert deployment.status == "starting" and deployment.status_reason.startswith("rolling restart: 0 of 2 replaced")

    fleet.healthy = lambda replica: True
    for successor in live(deployment):
        report(successor, "running", address="192.0.2.2", host_port=successor.host_port)  # its check passes now
    fleet.settle()
    assert_done(deployment, generation=2)


def test_a_replica_not_serving_at_the_restart_is_replaced_at_once(acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    schedule_pending()
    up, starting = live(deployment)
    report(up, "running", address="192.0.2.2", host_port=30000)
    report(starting, "starting")
    restart(deployment)
    up.refresh_from_db()
    starting.refresh_from_db()
    assert (up.desired, up.replaced_by.generation) == ("run", 2)  # serves until its successor is up
    assert (starting.desired, starting.state, starting.replaced_by, starting.drain_until) == (
        "stop", "stopping", None, None)
    assert str(starting.uid) not in desired_on(node)
    assert [(r.ordinal, r.generation) for r in live(deployment)] == [(0, 2), (1, 2)]


def test_a_second_restart_mid_roll_starts_from_where_the_first_got(acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([node])
    fleet.settle()
    old0, old1 = live(deployment)
    fleet.after_each = lambda: assert_serving_at_least(deployment, 2)

    restart(deployment)
    fleet.schedule()
    new0, new1 = live(deployment)
    for state in ("pulling", "booting", "starting", "running"):
        report(new0, state, address="192.0.2.2", host_port=31000)
    report(new1, "booting")
    old0.refresh_from_db()
    assert old0.drain_until is not None  # its successor is up: it drains
    assert serving(deployment) == {str(new0.uid), str(old1.uid)}

    restart(deployment)
    for replica in (old0, old1, new0, new1):
        replica.refresh_from_db()
    # new0 serves now: it is the old incarnation of this restart. new1 did not serve: stopped at
    # once, and old1, still serving, waits for a newer successor instead.
    assert (new0.desired, new0.replaced_by.generation) == ("run", 3)
    assert (new1.desired, new1.state, str(new1.uid) in desired_on(node)) == ("stop", "stopping", False)
    assert (old1.desired, old1.replaced_by.generation) == ("run", 3)
    assert [(r.ordinal, r.generation) for r in live(deployment)] == [(0, 3), (1, 3)]
    assert serving(deployment) == {str(new0.uid), str(old1.uid)}

    fleet.settle()
    assert_done(deployment, generation=3)
    assert Replica.objects.filter(deployment=deployment).count() == 6  # three incarnations of each ordinal


def test_stop_mid_roll_stops_old_and_new_draining_what_serves(acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([node])
    fleet.settle()
    old0, old1 = live(deployment)
    restart(deployment)
    fleet.schedule()
    new0, new1 = live(deployment)
    for state in ("pulling", "booting", "starting", "running"):
        report(new0, state, address="192.0.2.2", host_port=31000)
    report(new1, "booting")

    deployment_stop(tenant=acme, actor=None, deployment_id=deployment.pk)
    deployment = fresh(deployment)
    assert (deployment.status, deployment.rolling_restart_at) == ("stopping", None)
    assert serving(deployment) == set()
    for replica in (old0, old1, new0, new1):
        replica.refresh_from_db()
        assert replica.desired == "stop"
    assert old0.drain_until is not None and new0.drain_until is not None and old1.drain_until is not None
    assert new1.drain_until is None  # it was not serving: nothing to drain
    assert desired_on(node) == {str(old0.uid), str(old1.uid), str(new0.uid)}

    fleet.settle()
    deployment = fresh(deployment)
    assert deployment.status == "stopped"
    assert set(deployment.replicas.values_list("state", flat=True)) == {"stopped"}
    assert CpuSlot.objects.filter(replica__isnull=False).count() == 0


def test_a_node_drain_re_places_with_surge(acme):
    hw = hardware(slots=2)
    first = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([first])
    fleet.settle()
    second = node_of(hw, "node-b")
    fleet.nodes.append(second)
    statuses = set()

    def check():
        assert len(serving(deployment)) >= 2
        successors_up_before_olds_left(deployment)
        statuses.add(fresh(deployment).status)

    fleet.after_each = check
    node_services.node_drain(node_id=first.pk)
    fleet_sweep()  # successors for what runs on the draining node
    fleet.settle()
    fleet_sweep()
    assert Node.objects.get(pk=first.pk).status == "cordoned"
    assert {r.node_id for r in live(deployment)} == {second.pk}
    assert statuses == {"running"}  # moving replicas is no restart: the deployment runs throughout
    assert fresh(deployment).rolling_restart_at is None


def test_a_change_of_env_rolls_and_an_unchanged_env_does_not(as_alice, acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2, env={"A": "1"})
    fleet = Fleet([node])
    fleet.settle()
    olds = {str(r.uid) for r in live(deployment)}

    same = as_alice.patch(f"{URL}/{deployment.pk}", {"env_variables": {"A": "1"}}, format="json")
    assert same.status_code == 200 and {str(r.uid) for r in live(deployment)} == olds

    response = as_alice.patch(f"{URL}/{deployment.pk}", {"env_variables": {"A": "2"}}, format="json")
    assert response.status_code == 200
    assert response.json()["deployment"]["status"] == "starting"
    assert serving(deployment) == olds  # the old ones serve until the new ones are up
    restarted = Event.objects.get(deployment=deployment, type="deployment.restarted")
    assert restarted.payload["cause"] == "env changed"
    fleet.after_each = lambda: assert_serving_at_least(deployment, 2)
    fleet.settle()
    assert_done(deployment, generation=2)
    assert {d.spec.env["A"] for d in sink.desired(node_id=node.pk)} == {"2"}


def test_a_new_port_rolls_and_a_renamed_one_does_not(as_alice, acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2, endpoint_access="public")
    fleet = Fleet([node])
    fleet.settle()
    olds = {str(r.uid) for r in live(deployment)}

    added = as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [{"name": "admin", "port": 9000, "protocol": "http"}]},
                           format="json")
    assert added.status_code == 200, added.json()
    assert Event.objects.get(deployment=deployment, type="deployment.restarted").payload["cause"] == "ports changed"
    fleet.after_each = lambda: assert_serving_at_least(deployment, 2)
    fleet.settle()
    assert_done(deployment, generation=2)
    assert {tuple(d.spec.ports) for d in sink.desired(node_id=node.pk)} == {(9000,)}  # the new VMs publish it
    news = {str(r.uid) for r in live(deployment)}
    assert not news & olds

    renamed = as_alice.patch(f"{URL}/{deployment.pk}", {"expose": [{"name": "ops", "port": 9000, "protocol": "http"}]},
                             format="json")
    assert renamed.status_code == 200 and {str(r.uid) for r in live(deployment)} == news  # a name is the gateway's


def test_a_successor_that_fails_leaves_the_old_one_serving_as_its_ordinals_replica(acme):
    hw = hardware(slots=4)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([node])
    fleet.settle()
    olds = live(deployment)
    fleet.crashes = lambda replica: replica.generation == 2 and replica.ordinal == 1  # a new spec that breaks one
    fleet.after_each = lambda: assert_serving_at_least(deployment, 2)
    restart(deployment)
    fleet.settle()
    kept = Replica.objects.get(pk=olds[1].pk)
    assert (kept.desired, kept.state, kept.replaced_by) == ("run", "running", None)  # live again
    assert "kept: its successor (generation 2) failed" in kept.reason
    assert [(r.ordinal, r.generation) for r in live(deployment)] == [(0, 2), (1, 1)]
    deployment = fresh(deployment)
    # The restart is over (nothing more will happen); the deployment runs, on the old ordinal 1.
    assert (deployment.status, deployment.rolling_restart_at) == ("running", None)


def test_without_spare_capacity_a_new_spec_that_fails_costs_one_ordinal_not_all(acme):
    hw = hardware(slots=3)
    node = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=3)
    fleet = Fleet([node])
    fleet.settle()
    fleet.crashes = lambda replica: replica.generation == 2  # the new env is broken
    fleet.after_each = lambda: assert_serving_at_least(deployment, 2)
    restart(deployment)
    fleet.settle()
    # Ordinal 0 made room and its new incarnation failed; the others' new incarnations took the
    # failed ones' units in turn, failed too, and left their old ones serving.
    assert len(serving(deployment)) == 2
    assert [(r.ordinal, r.generation) for r in live(deployment)] == [(1, 1), (2, 1)]
    deployment = fresh(deployment)
    assert (deployment.status, deployment.rolling_restart_at) == ("running", None)
    assert deployment.status_reason == "2 of 3 replicas running; replica 0: failed (exited with code 1 after 3 restarts)"

    # The customer fixes it and restarts: the failed ordinal starts again, the others roll.
    fleet.crashes = lambda replica: False
    restart(deployment)
    fleet.settle()
    assert_done(deployment, generation=3, history={"stopped", "failed"})


def test_a_successor_lost_with_its_node_is_placed_again_and_the_old_one_waits_for_that(acme, settings):
    settings.NODE_LIVENESS_WINDOW_S = 30
    hw = hardware(slots=2)
    first = node_of(hw, "node-a")
    deployment = web(acme, hw, replica_count=2)
    fleet = Fleet([first])
    fleet.settle()
    olds = live(deployment)
    second = node_of(hw, "node-b")
    restart(deployment)
    fleet.schedule()
    assert {r.node_id for r in live(deployment)} == {second.pk}
    fleet.nodes.append(second)
    fleet.step()  # they start pulling there; then node-b goes silent
    fleet.nodes.remove(second)
    Node.objects.filter(pk=second.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    fleet.after_each = lambda: assert_serving_at_least(deployment, 1)
    assert fleet_sweep()["lost"] == 2
    for old in olds:
        old.refresh_from_db()
        assert old.replaced_by.generation == 3 and old.replaced_by.state != "lost"
    fleet.settle()  # no room elsewhere: ordinal by ordinal on node-a
    deployment = fresh(deployment)
    assert (deployment.status, deployment.rolling_restart_at) == ("running", None)
    assert [(r.ordinal, r.generation, r.node_id) for r in live(deployment)] == [(0, 3, first.pk), (1, 3, first.pk)]
    assert serving(deployment) == {str(r.uid) for r in live(deployment)}
