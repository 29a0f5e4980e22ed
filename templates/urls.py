from rest_framework.routers import SimpleRouter

from templates.api import TemplateViewSet

# No trailing slash, like /api/v1/deployments; SimpleRouter (not DefaultRouter) so the three
# app routers included at /api/v1/ do not each add an API root view at "".
router = SimpleRouter(trailing_slash=False)
router.register("templates", TemplateViewSet, basename="template")

urlpatterns = router.urls
