"""The deployments side of metering: what billing's metering pass asks of replicas (the
`billing.link.ReplicaSource`, registered in DeploymentsConfig.ready())."""

from __future__ import annotations

from cloud.deployments.models import Replica

R = Replica.State
# States an incarnation can be in once its VM process started and before it ends.
BOOTED = (R.BOOTING, R.STARTING, R.RUNNING, R.RESTARTING, R.STOPPING)


class ReplicaSource:
    def running_without_meter(self) -> list[dict]:
        rows = (Replica.objects.filter(state__in=BOOTED, booted_at__isnull=False, stopped_at__isnull=True,
                                       meter__isnull=True)
                .values_list("pk", "deployment_id", "deployment__tenant_id", "booted_at"))
        return [{"replica_id": pk, "deployment_id": d, "tenant_id": t, "booted_at": b} for pk, d, t, b in rows]
