"""WebSocket routes: the node agents' link (/ws/v1/agent/) and a deployment's live log
(/ws/v1/deployments/{id}/logs). The log route carries the session middleware, for the
dashboard; an agent never has a session, so its route does without.

Each route caps what a client may send (sockets.MessageLimit: close 1009 above the limit), and
a path no route serves is refused before it opens (sockets.unknown_socket), never a 500."""

from channels.auth import AuthMiddlewareStack
from django.conf import settings
from django.urls import path, re_path

from cloud.deployments.consumers import LogTailConsumer
from cloud.sockets import MessageLimit, unknown_socket
from nodes.consumers import AgentConsumer


def _customer_limit() -> int:
    return settings.WS_MAX_MESSAGE_BYTES


def _agent_limit() -> int:
    return settings.WS_AGENT_MAX_MESSAGE_BYTES


websocket_urlpatterns: list = [
    path("ws/v1/agent/", MessageLimit(AgentConsumer.as_asgi(), _agent_limit)),
    path("ws/v1/deployments/<str:deployment_id>/logs",
         MessageLimit(AuthMiddlewareStack(LogTailConsumer.as_asgi()), _customer_limit)),
    re_path(r"", unknown_socket),  # last: whatever the routes above do not serve
]
