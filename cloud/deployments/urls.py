from rest_framework.routers import SimpleRouter

from cloud.deployments.api import DeploymentViewSet

router = SimpleRouter(trailing_slash=False)
router.register("deployments", DeploymentViewSet, basename="deployment")

urlpatterns = router.urls
