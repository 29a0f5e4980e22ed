from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "cloud.deployments"
    label = "deployments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The agent consumer (nodes app) reaches replicas through this sink: nodes never
        # imports the deployments app.
        from billing import link as billing_link
        from cloud.deployments.services.agents import AgentSink
        from cloud.deployments.services.metering import ReplicaSource
        from cloud.deployments.services.volumes import VolumeSide
        from nodes import link
        from volumes import link as volumes_link

        link.register_sink(AgentSink())
        # Billing's metering pass reaches replicas it has no meter for through this source.
        billing_link.register_source(ReplicaSource())
        # The volumes app asks whether a VM still holds a volume, and writes events, through this.
        volumes_link.register_side(VolumeSide())
