from django.apps import AppConfig


class CatalogConfig(AppConfig):
    # The folder is `templates/` (DESIGN.md layout); the label is `catalog` so it never reads
    # as Django's own template machinery in migrations, the admin or permissions.
    name = "templates"
    label = "catalog"
    verbose_name = "Template catalog"
    default_auto_field = "django.db.models.BigAutoField"
