from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from accounts import oauth, selectors
        from cloud import tenancy

        oauth.install()
        # The selectors module itself is the TenantResolver: its two functions of those names.
        tenancy.register(selectors)
