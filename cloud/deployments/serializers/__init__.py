"""Request and response shapes of the deployments API (inputs validate, outputs render)."""

from cloud.deployments.serializers.inputs import (
    DeploymentCreateInput,
    DeploymentUpdateInput,
    EventsQuery,
    EventStreamQuery,
    LogsQuery,
    LogTailQuery,
    ReplicasQuery,
)
from cloud.deployments.serializers.outputs import (
    DeleteResultOutput,
    DeploymentCreatedOutput,
    DeploymentEnvelopeOutput,
    DeploymentOutput,
    EventListOutput,
    EventOutput,
    LogLineOutput,
    LogListOutput,
    LogTicketOutput,
    ReplicaListOutput,
    ReplicaOutput,
)

__all__ = [
    "DeleteResultOutput",
    "DeploymentCreateInput",
    "DeploymentCreatedOutput",
    "DeploymentEnvelopeOutput",
    "DeploymentOutput",
    "DeploymentUpdateInput",
    "EventListOutput",
    "EventOutput",
    "EventsQuery",
    "EventStreamQuery",
    "LogLineOutput",
    "LogListOutput",
    "LogsQuery",
    "LogTailQuery",
    "LogTicketOutput",
    "ReplicaListOutput",
    "ReplicaOutput",
    "ReplicasQuery",
]
