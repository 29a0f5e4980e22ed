"""WebSocket routes: the node agents' link (/ws/v1/agent/) and a deployment's live log
(/ws/v1/deployments/{id}/logs). The log route carries the session middleware, for the
dashboard; an agent never has a session, so its route does without."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from cloud.deployments.consumers import LogTailConsumer
from nodes.consumers import AgentConsumer

websocket_urlpatterns: list = [
    path("ws/v1/agent/", AgentConsumer.as_asgi()),
    path("ws/v1/deployments/<str:deployment_id>/logs", AuthMiddlewareStack(LogTailConsumer.as_asgi())),
]
