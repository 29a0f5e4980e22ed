"""Metering starts when a replica's VM process starts (`booting`), not at `running` (issue 23):
a workload that never opens its port is charged for the seconds it held its GPUs, a start→fail
loop costs what each incarnation used, and each replica in the API shows the interval it is
billed for (`billed_from`, `billed_to`), which its usage records cover to the second.

The reports go through the agent sink the node's WebSocket consumer calls (the real path, on
the real database); the plane's clock is the test's (django.utils.timezone.now), since the
plane bills on its own clock, never the node's or the guest's.
"""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.models import Meter, UsageRecord
from billing.selectors import tenant_balance
from billing.services import usage_close_intervals
from cloud.deployments.models import Deployment, Replica
from cloud.deployments.services import deployment_start
from cloud.deployments.services.agents import AgentSink
from protocol.wire import ReplicaReport
from tests.billing.factories import heartbeat
from tests.billing.test_metering import exact
from tests.deployments.factories import deployment_for

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 10, 8, 0, 0, 250_000, tzinfo=dt_timezone.utc)  # a quarter past a second


class Clock:
    def __init__(self, monkeypatch, at: datetime):
        self.at = at
        monkeypatch.setattr(timezone, "now", lambda: self.at)

    def tick(self, **delta) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def report(node, replica, state, **fields) -> None:
    AgentSink().report(node_id=node.pk, report=ReplicaReport(replica_id=str(replica.uid), state=state, **fields))


def placed(deployment: Deployment, node) -> Replica:
    """The deployment's newest incarnation, placed on `node` (what the scheduler does)."""
    replica = deployment.replicas.order_by("-generation").first()
    Replica.objects.filter(pk=replica.pk).update(node=node, placed_at=timezone.now())
    return Replica.objects.get(pk=replica.pk)


def records_of(replica) -> list[tuple]:
    return list(UsageRecord.objects.filter(replica=replica).order_by("period_start")
                .values_list("period_start", "period_end", "seconds"))


def api_replicas(client, deployment) -> dict[int, dict]:
    answer = client.get(f"/api/v1/deployments/{deployment.pk}/replicas")
    assert answer.status_code == 200, answer.content
    return {r["generation"]: r for r in answer.json()["replicas"]}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assert_api_matches_records(client, deployment) -> None:
    """Every replica's billed interval is exactly what its usage records cover."""
    for generation, shown in api_replicas(client, deployment).items():
        replica = deployment.replicas.get(generation=generation)
        spans = records_of(replica)
        if not spans:
            assert shown["billed_from"] == shown["billed_to"] or shown["billed_from"] is None, shown
            continue
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "gaps or overlaps between records"
        assert shown["billed_from"] == iso(spans[0][0]), (shown, spans)
        assert shown["billed_to"] == iso(spans[-1][1]), (shown, spans)
        seconds = (datetime.fromisoformat(shown["billed_to"]) - datetime.fromisoformat(shown["billed_from"])).total_seconds()
        assert seconds == sum(s for _, _, s in spans)


def test_a_replica_that_fails_while_booting_is_charged_for_its_booting_seconds(monkeypatch, acme, h100, node, as_alice):
    clock = Clock(monkeypatch, T0)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=8)
    replica = placed(deployment, node)
    report(node, replica, "pulling", reason="pulling 12/870 MB")
    clock.tick(seconds=40)
    report(node, replica, "pulling", reason="pulling 870/870 MB")
    assert not Meter.objects.filter(replica=replica).exists()  # a pull holds no VM: nothing billed yet
    shown = api_replicas(as_alice, deployment)[1]
    assert (shown["billed_from"], shown["billed_to"]) == (None, None)

    clock.tick(seconds=2)
    booted = clock.at
    report(node, replica, "booting")
    shown = api_replicas(as_alice, deployment)[1]
    # Rounded up to the second (a partial second is never charged), and open.
    assert (shown["billed_from"], shown["billed_to"]) == (iso(booted.replace(microsecond=0) + timedelta(seconds=1)), None)
    assert shown["booted_at"] == iso(booted) and shown["started_at"] is None

    heartbeat(node, clock.tick(seconds=30))
    usage_close_intervals(now=clock.at)  # a pass while it boots charges what it held so far
    clock.tick(seconds=95, microseconds=500_000)
    report(node, replica, "failed", reason="health check failing: connection refused", exit_code=1)
    heartbeat(node, clock.at)
    usage_close_intervals(now=clock.tick(seconds=20))

    replica.refresh_from_db()
    assert replica.state == Replica.State.FAILED and replica.started_at is None  # it never ran
    billed = int((replica.stopped_at.replace(microsecond=0) - (booted.replace(microsecond=0) + timedelta(seconds=1)))
                 .total_seconds())
    assert billed == 124
    assert sum(s for _, _, s in records_of(replica)) == billed
    meter = Meter.objects.get(replica=replica)
    assert meter.closed and meter.seconds == billed
    assert UsageRecord.objects.filter(replica=replica).aggregate(s=Sum("amount"))["s"] == exact(seconds=billed, units=8)
    assert tenant_balance(tenant=acme) == Decimal("1000") - exact(seconds=billed, units=8)
    assert_api_matches_records(as_alice, deployment)
    shown = api_replicas(as_alice, deployment)[1]
    assert shown["billed_to"] == iso(replica.stopped_at.replace(microsecond=0))


def test_a_start_fail_loop_charges_every_incarnation_for_what_it_used(monkeypatch, acme, h100, node, as_alice):
    clock = Clock(monkeypatch, T0)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    used = []
    for attempt in range(3):
        if attempt:
            deployment_start(tenant=acme, actor=None, deployment_id=deployment.pk)
        replica = placed(deployment, node)
        assert replica.generation == attempt + 1
        report(node, replica, "pulling")
        clock.tick(seconds=3)
        report(node, replica, "booting")
        booted = clock.at
        clock.tick(seconds=7 + attempt)
        report(node, replica, "starting")
        clock.tick(seconds=10 * (attempt + 1))
        report(node, replica, "failed", reason="exited with code 1 after 0 restarts", exit_code=1)
        ended = clock.at
        used.append(int((ended.replace(microsecond=0) - booted.replace(microsecond=0)).total_seconds()) - 1)
        heartbeat(node, clock.tick(seconds=1))
        deployment.refresh_from_db()
        assert deployment.status == Deployment.Status.FAILED
        # The pass restarts: run it twice at the same clock and once later; nothing more is charged.
        usage_close_intervals(now=clock.at)
        usage_close_intervals(now=clock.at)
    usage_close_intervals(now=clock.tick(minutes=5))

    assert used == [16, 27, 38]
    per_incarnation = dict(Meter.objects.filter(deployment=deployment).values_list("replica__generation", "seconds"))
    assert per_incarnation == {1: 16, 2: 27, 3: 38}
    for generation, seconds in per_incarnation.items():
        replica = deployment.replicas.get(generation=generation)
        assert sum(s for _, _, s in records_of(replica)) == seconds
        assert UsageRecord.objects.filter(replica=replica).aggregate(s=Sum("amount"))["s"] == exact(seconds=seconds, units=1)
    assert_api_matches_records(as_alice, deployment)


def test_metering_again_never_moves_or_doubles_what_was_billed(monkeypatch, acme, h100, node, as_alice):
    clock = Clock(monkeypatch, T0)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = placed(deployment, node)
    report(node, replica, "booting")
    booted = clock.at
    clock.tick(seconds=20)
    report(node, replica, "running", host_port=30001)
    heartbeat(node, clock.tick(seconds=40))
    usage_close_intervals(now=clock.at)
    first = records_of(replica)
    # The node reconnects and says `booting` and `running` again (a hello after an agent restart):
    # where billing started does not move, and the meter is not opened twice.
    AgentSink().hello(node_id=node.pk, reports=[ReplicaReport(replica_id=str(replica.uid), state="booting")])
    report(node, replica, "running", host_port=30001)
    replica.refresh_from_db()
    assert replica.booted_at == booted
    assert Meter.objects.filter(replica=replica).count() == 1
    # The metering sweep's net (a replica with a VM but no meter) finds nothing to open.
    from billing import link
    assert all(row["replica_id"] != replica.pk for row in link.source().running_without_meter())
    # A pass that runs again at the same clock, or a late one, adds only new seconds.
    usage_close_intervals(now=clock.at)
    assert records_of(replica) == first
    clock.tick(seconds=30)
    report(node, replica, "stopped", reason="exited with code 0", exit_code=0)
    end = clock.at
    for _ in range(3):
        heartbeat(node, clock.tick(seconds=10))
        usage_close_intervals(now=clock.at)
    spans = records_of(replica)
    assert spans[0][0] == booted.replace(microsecond=0) + timedelta(seconds=1)
    assert spans[-1][1] == end.replace(microsecond=0)
    assert sum(s for _, _, s in spans) == 89
    assert len({a for a, _, _ in spans}) == len(spans)
    assert tenant_balance(tenant=acme) == Decimal("1000") - exact(seconds=89, units=1)
    assert_api_matches_records(as_alice, deployment)


def test_a_failure_whose_reason_is_too_long_still_ends_the_replica_and_its_meter(monkeypatch, acme, h100, node):
    # The reason quotes the guest's last stderr lines; a node that sent them whole (an older agent)
    # made the report fail on the column's length, and the replica's end was never recorded.
    clock = Clock(monkeypatch, T0)
    deployment = deployment_for(acme, hardware_id=h100.pk, gpus_per_container=1)
    replica = placed(deployment, node)
    report(node, replica, "booting")
    clock.tick(seconds=30)
    report(node, replica, "failed", reason="exited with code 1 after 0 restarts; last stderr: " + "x" * 20_000,
           exit_code=1)
    replica.refresh_from_db()
    assert replica.state == Replica.State.FAILED and replica.vm_gone and len(replica.reason) == 500
    usage_close_intervals(now=clock.tick(seconds=5))
    meter = Meter.objects.get(replica=replica)
    assert meter.closed and meter.seconds == 29
