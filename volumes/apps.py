from django.apps import AppConfig


class VolumesConfig(AppConfig):
    name = "volumes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The agent consumer (nodes app) reaches volumes through this sink: nodes never imports
        # the volumes app.
        from nodes import link
        from volumes.sink import NodeVolumeSink

        link.register_volume_sink(NodeVolumeSink())

        from billing import link as billing_link
        from volumes.keeper import VolumeKeeper

        billing_link.register_volume_keeper(VolumeKeeper())
