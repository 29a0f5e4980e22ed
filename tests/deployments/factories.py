"""Factories for deployments' tests. `deployment_for` goes through the real service, so a test
sees what a customer's POST would have produced; the factories below write rows directly for
states no API call can reach yet (running replicas on a node, log lines)."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.utils import timezone

from cloud.deployments.models import Deployment, Event, LogLine, Replica
from cloud.deployments.services import deployment_create
from nodes.models import Node
from tests.factories import HardwareTypeFactory, LocationFactory, TenantFactory
from tests.templates.factories import TemplateFactory as BaseTemplateFactory


class TemplateFactory(BaseTemplateFactory):
    """The templates suite's factory, with an ollama-like default the deployment tests expect."""

    image = "ollama/ollama:0.3.12"
    default_env = factory.LazyFunction(lambda: {"OLLAMA_HOST": "0.0.0.0"})
    min_gpus = 1


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    hostname = factory.Sequence(lambda n: f"gpu-{n}.example.net")
    location = factory.SubFactory(LocationFactory)
    hardware_type = factory.SubFactory(HardwareTypeFactory)
    public_address = factory.Sequence(lambda n: f"203.0.113.{n % 250 + 1}")
    status = Node.Status.ONLINE


class DeploymentFactory(factory.django.DjangoModelFactory):
    """A bare row (no replicas, no event): for lists and benchmarks, not for behaviour."""

    class Meta:
        model = Deployment

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"dep-{n}")
    image = "ollama/ollama:0.3.12"
    gpus_per_container = 1
    hardware_type = factory.SubFactory(HardwareTypeFactory)
    replica_count = 1
    price_per_gpu_hour = Decimal("2.4900")


class ReplicaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Replica

    deployment = factory.SubFactory(DeploymentFactory)
    ordinal = factory.Sequence(lambda n: n)


class LogLineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LogLine

    replica = factory.SubFactory(ReplicaFactory)
    deployment = factory.SelfAttribute("replica.deployment")
    seq = factory.Sequence(lambda n: n)
    ts = factory.LazyFunction(timezone.now)
    stream = LogLine.Stream.STDOUT
    message = factory.Sequence(lambda n: f"line {n}")


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    deployment = factory.SubFactory(DeploymentFactory)
    tenant = factory.SelfAttribute("deployment.tenant")
    type = "deployment.note"


def deployment_for(tenant, **spec) -> Deployment:
    """A deployment created through the service, as POST would, with defaults for a custom image
    on a fresh hardware type."""
    if "hardware_id" not in spec and "node_id" not in spec:
        spec["hardware_id"] = HardwareTypeFactory().id
    spec.setdefault("image", None if spec.get("template") else "ollama/ollama:0.3.12")
    spec.setdefault("replica_count", 1)
    return deployment_create(tenant=tenant, actor=None, spec=spec)


def place_running(deployment: Deployment, *, node: Node | None = None) -> list[Replica]:
    """Marks every replica running on `node` with a host port: what the agent will report."""
    node = node or NodeFactory(hardware_type=deployment.hardware_type)
    replicas = list(deployment.replicas.order_by("ordinal"))
    for replica in replicas:
        replica.node, replica.state, replica.reason = node, Replica.State.RUNNING, ""
        replica.host_port, replica.vm_address = 30000 + replica.ordinal, "10.88.0.2"
        replica.started_at = timezone.now()
        replica.save()
    deployment.status, deployment.started_at = Deployment.Status.RUNNING, timezone.now()
    deployment.save()
    return replicas


def online_node(hardware, hostname: str) -> Node:
    """A node that has just sent a heartbeat, with its CPU slots (a cpu_only hardware type)."""
    from nodes import services as node_services
    from tests.nodes.factories import NodeFactory as JoinedNodeFactory

    node = JoinedNodeFactory(hostname=hostname, hardware_type=hardware, last_heartbeat=timezone.now())
    node_services.slots_sync(node=node)
    return node


def report(replica: Replica, state: str, **fields) -> None:
    """What the replica's node says of it, through the sink the agent consumer calls."""
    from cloud.deployments.services.agents import AgentSink
    from protocol.wire import ReplicaReport

    AgentSink().report(node_id=replica.node_id,
                       report=ReplicaReport(replica_id=str(replica.uid), state=state, **fields))
