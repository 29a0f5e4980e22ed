from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "cloud.deployments"
    label = "deployments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The agent consumer (nodes app) reaches replicas through this sink: nodes never
        # imports the deployments app.
        from cloud.deployments.services.agents import AgentSink
        from nodes import link

        link.register_sink(AgentSink())
