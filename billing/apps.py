from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from accounts import signals
        from billing import trial

        # Strong references with fixed uids: a reload of this module never registers twice.
        signals.tenant_created.connect(trial.on_tenant_created, dispatch_uid="billing.trial.tenant_created")
        signals.email_confirmed.connect(trial.on_email_confirmed, dispatch_uid="billing.trial.email_confirmed")
