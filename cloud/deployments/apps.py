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
        from nodes import link

        link.register_sink(AgentSink())
        # Billing's metering pass reaches replicas it has no meter for through this source.
        billing_link.register_source(ReplicaSource())
